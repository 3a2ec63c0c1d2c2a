"""The fused CPU path equals the plain driver: values and gradients, every option."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.kernels import fused, native
from tests.helpers import (
    CELL_IDS,
    CELLS,
    assert_derivatives_equal,
    random_carry,
    random_params,
    scan_loss_problem,
)

OPTIONS = [
    {},
    {"seq_lengths": [[6, 0, 3], [2, 5, 1]]},
    {"seq_lengths": [[6, 0, 3], [2, 5, 1]], "reverse": True},
    {"reverse": True, "unroll": 3},
    {"recurrent_dropout": 0.3, "dropout": 0.2, "dropout_key": 5},
    {"time_major": True},
]


def _run(cell, params, carry, xs, impl, options):
    options = dict(options)
    if "seq_lengths" in options:
        options["seq_lengths"] = jnp.asarray(options["seq_lengths"])
    if "dropout_key" in options:
        options["dropout_key"] = jax.random.key(options["dropout_key"])
    return jrnn.scan(cell, params, xs, carry, implementation=impl, **options)


# float64 for every option (tight), float32 (the 1e-5 target) for the common ones.
PRECISIONS = [pytest.param(o, jnp.float64, 1e-12, id=f"f64-{'-'.join(o) or 'plain'}") for o in OPTIONS] + [
    pytest.param(o, jnp.float32, 1e-5, id=f"f32-{'-'.join(o) or 'plain'}") for o in OPTIONS[:3]]


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("options,dtype,tol", PRECISIONS)
def test_fused_equals_plain(name, cell, kind, opts, options, dtype, tol, key):
    _check_fused_equals_plain(cell, options, dtype, tol, key)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("options,dtype,tol", [PRECISIONS[2], PRECISIONS[-1]])
def test_fused_equals_plain_at_full_optimisation(name, cell, kind, opts, options, dtype, tol, key):
    """As above, compiled at XLA's default optimisation level (on CPU-only installs
    the rest of the suite compiles without LLVM's optimisations, ``tests/conftest.py``)."""
    _check_fused_equals_plain(cell, options, dtype, tol, key, {"xla_backend_optimization_level": "3"})


def _check_fused_equals_plain(cell, options, dtype, tol, key, compiler_options=None):
    """The fused path's loss and gradient equal the plain driver's for ``jrnn.scan(**options)``."""
    k_p, k_c, k_x, k_w = jax.random.split(key, 4)
    params = random_params(cell, k_p, 3, dtype)
    carry = random_carry(cell, k_c, (2, 3), dtype)
    shape = (6, 2, 3, 3) if options.get("time_major") else (2, 3, 6, 3)
    xs = jax.random.normal(k_x, shape, dtype)
    weights = jax.random.normal(k_w, shape[:-1] + (5,), dtype)

    def loss(params, carry, xs, impl):
        final, ys = _run(cell, params, carry, xs, impl, options)
        return jnp.sum(weights * ys) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    # the value of the forward alone (inference: no saved values) and the gradient, in one program
    value_and_grad = lambda *args: (loss(*args), jax.grad(loss, argnums=(0, 1, 2))(*args))
    fused, plain = (jax.jit(value_and_grad, static_argnums=3).lower(params, carry, xs, impl)
                    .compile(compiler_options)(params, carry, xs) for impl in ("fused", "plain"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), fused, plain)


def test_fused_under_vmap_and_layers(key):
    net = jrnn.stacked([jrnn.bidirectional(jrnn.lstm(4)), jrnn.gru(3, reset_after=True)])
    params = net.init(key, 2, jnp.float64)
    xs = jax.random.normal(key, (5, 3, 6, 2), jnp.float64)  # vmapped axis first
    lengths = jnp.array([6, 1, 4])

    def loss(params, xs, impl):
        layers = [jrnn.bidirectional(jrnn.lstm(4)), jrnn.gru(3, reset_after=True)]

        def one(x):
            h = x
            for layer, p in zip(layers, params):
                options = {"seq_lengths": lengths, "implementation": impl}
                if isinstance(layer, jrnn.Bidirectional):
                    _, f = jrnn.scan(layer.forward, p.forward, h, **options)
                    _, b = jrnn.scan(layer.backward, p.backward, h, reverse=True, **options)
                    h = jnp.concatenate([f, b], -1)
                else:
                    _, h = jrnn.scan(layer, p, h, **options)
            return jnp.sum(h**2)

        return jnp.sum(jax.vmap(one)(xs))

    each = sum(jnp.sum(net(params, xs[i], seq_lengths=lengths)[1] ** 2) for i in range(5))
    np.testing.assert_allclose(loss(params, xs, "fused"), each, rtol=1e-12)
    g_f = jax.grad(loss)(params, xs, "fused")
    g_p = jax.grad(loss)(params, xs, "plain")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), g_f, g_p)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
def test_fused_ensemble_under_vmap(name, cell, kind, opts, key):
    """An ensemble, ``jax.vmap`` over params and carry: the gradient and a
    forward-mode derivative of the fused path equal the plain path's."""
    keys = jax.random.split(key, 3)
    params = jax.vmap(lambda k: random_params(cell, k, 2, jnp.float32, scale=0.5))(keys)
    carry = jax.vmap(lambda k: random_carry(cell, k, (4,), jnp.float32))(keys)
    xs = jax.random.normal(key, (4, 6, 2), jnp.float32)

    def loss(params, carry, impl):
        run = lambda p, c: jrnn.scan(cell, p, xs, c, implementation=impl)
        final, ys = jax.vmap(run)(params, carry)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    tangents = jax.tree.map(jnp.ones_like, (params, carry))
    for derivative in (jax.grad(loss, argnums=(0, 1)),
                       lambda p, c, impl: jax.jvp(lambda p, c: loss(p, c, impl), (p, c), tangents)):
        got, want = (jax.jit(derivative, static_argnums=2)(params, carry, impl) for impl in ("fused", "plain"))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), got, want)


def test_auto_picks_fused_and_mixed_precision(key):
    cell = jrnn.lstm(4)
    params = cell.init(key, 3, jnp.bfloat16)
    xs = jnp.ones((2, 5, 3), jnp.bfloat16)
    carry = cell.initial_carry((2,), jnp.float32)
    final, ys = jrnn.scan(cell, params, xs, carry)
    assert final.c.dtype == jnp.float32 and ys.dtype == jnp.float32
    final_p, ys_p = jrnn.scan(cell, params, xs, carry, implementation="plain")
    np.testing.assert_allclose(ys, ys_p, rtol=1e-2, atol=1e-2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), final, final_p)
    with pytest.raises(ValueError, match="implementation: expected one of"):
        jrnn.scan(cell, params, xs, implementation="cuda")


DERIVATIVE_CASES = [  # (dtype, loops, tolerance, scan options)
    pytest.param(jnp.float32, contextlib.nullcontext, 2e-4, {}, id="f32-native"),  # native where built
    pytest.param(jnp.float32, contextlib.nullcontext, 2e-4, {"seq_lengths": [4, 0, 2], "reverse": True},
                 id="f32-native-lengths-reverse"),
    pytest.param(jnp.float64, native.disabled, 1e-10, {"seq_lengths": [4, 0, 2], "reverse": True},
                 id="f64-xla-lengths-reverse"),
]


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype,loops,tol,options", DERIVATIVE_CASES)
def test_fused_derivatives_equal_plain(name, cell, kind, opts, dtype, loops, tol, options, key):
    """The fused path's derivatives other than its gradient equal the plain
    driver's: forward mode (``jax.jvp``, ``jax.jacfwd`` of ``jax.jacfwd``) and
    derivatives of its VJP, reverse over reverse (a gradient penalty), forward
    over reverse (a Hessian-vector product) and ``jax.hessian``. The native loops
    differentiate as the XLA loops, which compute the same function."""
    scan = lambda params, carry, xs, impl: _run(cell, params, carry, xs, impl, options)
    loss, primals, k_v = scan_loss_problem(cell, key, dtype, scan=scan)
    with loops():
        assert_derivatives_equal(loss, primals, k_v, "fused", tol)


LSTM_CELL = [c for c in CELLS if c[0] == "lstm"]


@pytest.mark.parametrize("name,cell,kind,opts", LSTM_CELL, ids=["lstm"])
@pytest.mark.parametrize("options,dtype,tol", PRECISIONS)
def test_lstm_split_gates_equal_plain(name, cell, kind, opts, options, dtype, tol, key):
    """The LSTM's per-gate layout (what CUDA GPUs run) equals the plain driver,
    values and gradients, for every option; here it is forced on the CPU, in the
    XLA loops (the native ones compute float32 there otherwise)."""
    with fused.gate_layout(True), native.disabled():
        _check_fused_equals_plain(cell, options, dtype, tol, key)


@pytest.mark.parametrize("platform,split", [("cuda", True), ("cpu", False), ("tpu", False)])
def test_lstm_gate_layout_follows_the_platform(platform, split):
    """Lowered for CUDA, the LSTM's fused loop takes one tanh per gate, each over a
    (B, H) slice; elsewhere one over the (B, 4, H) block (and one of the cell state
    in both); a forced layout wins over the platform."""
    cell = jrnn.lstm(5)
    params = cell.init(jax.random.key(0), 3)

    def tanh_shapes(force=None):
        layout = contextlib.nullcontext() if force is None else fused.gate_layout(force)
        forward = jax.jit(lambda p, x: jrnn.scan(cell, p, x, implementation="fused", unroll=1)[1])  # traced anew
        with native.disabled(), layout:  # the XLA loops, on CPU too
            traced = forward.trace(params, jnp.ones((2, 7, 3), jnp.float32))
            text = traced.lower(lowering_platforms=(platform,)).as_text()
        return sorted(re.findall(r"stablehlo.tanh %\S+ : tensor<([\dx]+)xf32>", text))

    per_gate, block = ["2x5"] * 5, ["2x4x5", "2x5"]
    assert tanh_shapes() == (per_gate if split else block)
    assert tanh_shapes(force=True) == per_gate and tanh_shapes(force=False) == block


GPU_LOOP_PRECISIONS = [PRECISIONS[i] for i in (2, 3, 4)] + [PRECISIONS[-1]]  # lengths, unroll, dropout


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("options,dtype,tol", GPU_LOOP_PRECISIONS)
def test_gpu_loops_equal_plain(name, cell, kind, opts, options, dtype, tol, key):
    """The XLA loops as CUDA GPUs run them (each forward step's carry behind an
    optimization barrier; the LSTM's gates one by one), forced on the CPU, equal
    the plain driver: values and gradients, with lengths, reversed, unrolled,
    with dropout."""
    with fused.step_barrier(True), fused.gate_layout(True), native.disabled():
        _check_fused_equals_plain(cell, options, dtype, tol, key)


@pytest.mark.parametrize("name,cell,kind,opts", [c for c in CELLS if c[0] in ("lstm", "gru")], ids=["lstm", "gru"])
def test_gpu_loops_derivatives_equal_plain(name, cell, kind, opts, key):
    """... and their forward-mode derivatives and derivatives of the gradient."""
    options = {"seq_lengths": [4, 0, 2], "reverse": True, "unroll": 3}
    scan = lambda params, carry, xs, impl: _run(cell, params, carry, xs, impl, options)
    loss, primals, k_v = scan_loss_problem(cell, key, jnp.float64, scan=scan)
    with fused.step_barrier(True), fused.gate_layout(True), native.disabled():
        assert_derivatives_equal(loss, primals, k_v, "fused", 1e-10)


@pytest.mark.parametrize("platform,barrier", [("cuda", True), ("cpu", False), ("tpu", False)])
@pytest.mark.parametrize("cell", [jrnn.lstm(5), jrnn.gru(5)], ids=["lstm", "gru"])
def test_step_barrier_follows_the_platform(platform, barrier, cell):
    """Lowered for CUDA, the fused forward loop puts each step's carry behind an
    optimization barrier (one in the lowered step function); the reverse loop and
    other platforms have none; a forced setting wins."""
    params = cell.init(jax.random.key(0), 3)

    def barriers(force=None):
        forced = contextlib.nullcontext() if force is None else fused.step_barrier(force)
        loss = lambda p, x: jnp.sum(jrnn.scan(cell, p, x, implementation="fused", unroll=2)[1])
        with native.disabled(), forced:  # the XLA loops, on CPU too
            traced = jax.jit(jax.grad(loss)).trace(params, jnp.ones((2, 8, 3), jnp.float32))
            text = traced.lower(lowering_platforms=(platform,)).as_text()
        return text.count("stablehlo.optimization_barrier")

    assert barriers() == (1 if barrier else 0)
    assert barriers(force=True) == 1 and barriers(force=False) == 0
