"""The native CPU loops (XLA FFI, ``cpu_rnn.cc``) equal the plain driver and the
fused path's XLA loops: values and gradients, float32, every option."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.kernels import native
from tests.helpers import random_carry, random_params
from tests.test_fused import OPTIONS, _run

NATIVE_CELLS = [
    ("simple_rnn", jrnn.simple_rnn(5)),
    ("simple_rnn_relu", jrnn.simple_rnn(5, activation="relu")),
    ("lstm", jrnn.lstm(5)),
    ("gru", jrnn.gru(5)),
    ("gru_reset_after", jrnn.gru(5, reset_after=True)),
]

needs_native = pytest.mark.skipif(not native.available(), reason="native CPU loops not built (JRNN_NATIVE=0?)")


@pytest.mark.skipif(os.environ.get("JRNN_NATIVE") == "0", reason="switched off by JRNN_NATIVE=0")
def test_extension_is_built_and_loads():
    """The README's install compiles the extension; this fails if it did not."""
    assert native._library_path() is not None, "jrnn/kernels/_cpu_rnn*.so is missing: the C++ build failed"
    assert native.available()


@needs_native
def test_load_check_runs_when_first_used_inside_a_trace():
    """In a fresh process whose first ``jrnn.scan`` is traced (``jax.jit``,
    ``jax.export``), the one-step load check still runs on real arrays, and
    nothing of it is left in the user's function."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, jrnn
        from jrnn.kernels import native
        ran_on_arrays = []
        load_check_step = native._lstm_forward
        def spy(*args, **kwargs):
            out = load_check_step(*args, **kwargs)
            ran_on_arrays.append(not isinstance(out[0][1], jax.core.Tracer))
            return out
        native._lstm_forward = spy
        cell = jrnn.lstm(4)
        params = cell.init(jax.random.key(0), 3)
        jaxpr = jax.make_jaxpr(lambda p, xs: jrnn.scan(cell, p, xs)[1])(params, jnp.ones((2, 5, 3)))
        assert native.available() and ran_on_arrays[0], ran_on_arrays
        assert "ffi_call" not in str(jaxpr), jaxpr
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def _compiled_text(cell, params, xs, **options):
    return jax.jit(lambda p, x: jrnn.scan(cell, p, x, **options)[1]).lower(params, xs).compile().as_text()


@needs_native
def test_dispatch(key):
    """float32 LSTM, GRU and SimpleRNN on CPU run the native loops; other dtypes and paths do not."""
    xs32 = jnp.ones((2, 4, 3), jnp.float32)
    for _, cell in NATIVE_CELLS:
        params = cell.init(key, 3)
        assert "custom_call_target=\"jrnn_" in _compiled_text(cell, params, xs32)
        assert "jrnn_" not in _compiled_text(cell, params, xs32, implementation="plain")
        with native.disabled():
            assert "jrnn_" not in _compiled_text(cell, params, xs32)
        grad = jax.jit(jax.grad(lambda p, cell=cell: jrnn.scan(cell, p, xs32)[1].sum()))
        grad = grad.lower(params).compile().as_text()
        assert "_backward\"" in grad
    for cell, dtype in ((jrnn.lstm(5), jnp.float64), (jrnn.lstm(5), jnp.bfloat16), (jrnn.gru(5), jnp.float64)):
        params = cell.init(key, 3, dtype)
        assert "jrnn_" not in _compiled_text(cell, params, xs32.astype(dtype))


def _loss(cell, weights, options, impl="fused"):
    def loss(params, carry, xs):
        final, ys = _run(cell, params, carry, xs, impl, options)
        return jnp.sum(weights * ys) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _assert_close(got, want, tol=1e-5):
    """Within ``tol`` relative to each array's largest entry (sums of many float32
    terms leave small entries of a large gradient with only absolute accuracy)."""
    def close(a, b):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b), initial=0.0))))

    jax.tree.map(close, got, want)


def _check(cell, batch, steps, options, key):
    k_p, k_c, k_x, k_w = jax.random.split(key, 4)
    # Weights of scale 1/√H keep wide cells out of chaos, where float32 rounding
    # alone would make two correct loops diverge.
    params = random_params(cell, k_p, 3, jnp.float32, scale=min(0.6, 1 / np.sqrt(cell.hidden_size)))
    carry = random_carry(cell, k_c, batch, jnp.float32)
    shape = (steps, *batch, 3) if options.get("time_major") else (*batch, steps, 3)
    xs = jax.random.normal(k_x, shape, jnp.float32)
    weights = jax.random.normal(k_w, shape[:-1] + (cell.hidden_size,), jnp.float32)

    def all_three(*args):  # one program: compiling is most of these tests' time
        got = _loss(cell, weights, options)(*args)
        with native.disabled():
            xla_loops = _loss(cell, weights, options)(*args)
        return got, xla_loops, _loss(cell, weights, options, "plain")(*args)

    got, xla_loops, plain = jax.jit(all_three)(params, carry, xs)
    _assert_close(got, xla_loops)
    _assert_close(got, plain)


@needs_native
@pytest.mark.parametrize("name,cell", NATIVE_CELLS, ids=[c[0] for c in NATIVE_CELLS])
@pytest.mark.parametrize("options", OPTIONS, ids=["-".join(o) or "plain" for o in OPTIONS])
def test_native_equals_xla_loops_and_plain(name, cell, options, key):
    _check(cell, (2, 3), 6, options, key)


@needs_native
@pytest.mark.parametrize("name,cell", NATIVE_CELLS, ids=[c[0] for c in NATIVE_CELLS])
def test_batch_split_over_threads(name, cell, key):
    """Large enough work is split into row blocks, one thread each; lengths cross the split."""
    cell = _wide(cell)
    lengths = jnp.asarray(np.random.default_rng(0).integers(0, 41, size=40))
    _check(cell, (40,), 40, {"seq_lengths": lengths, "reverse": True}, key)
    _check(cell, (40,), 40, {"recurrent_dropout": 0.25, "dropout_key": 3}, key)


def _wide(cell):
    """Widths that are no multiple of the GEMM's 32-column panels, in any product."""
    if isinstance(cell, jrnn.SimpleRNNCell):
        return jrnn.simple_rnn(200, activation=cell.activation)
    return jrnn.lstm(90) if isinstance(cell, jrnn.LSTMCell) else jrnn.gru(90, reset_after=cell.reset_after)


@needs_native
def test_native_under_vmap(key):
    cell = jrnn.lstm(4)
    params = random_params(cell, key, 2, jnp.float32)
    xs = jax.random.normal(key, (3, 2, 5, 2), jnp.float32)

    def loss(params, xs, impl):
        return jnp.sum(jax.vmap(lambda x: jrnn.scan(cell, params, x, implementation=impl)[1])(xs) ** 2)

    got = jax.value_and_grad(loss)(params, xs, "fused")
    _assert_close(got, jax.value_and_grad(loss)(params, xs, "plain"))


@needs_native
def test_native_in_stacked_bidirectional_layers_under_jit_and_vmap(key):
    """float32 stacked and bidirectional layers with lengths: native loops == plain path."""
    net = jrnn.stacked([jrnn.bidirectional(jrnn.lstm(6)), jrnn.gru(5), jrnn.simple_rnn(4)])
    params = jax.tree.map(lambda a: 0.5 * a, net.init(key, 3))
    xs = jax.random.normal(key, (2, 3, 7, 3), jnp.float32)  # the vmapped axis first
    lengths = jnp.array([7, 1, 4])

    def loss(params, xs, impl):
        run = lambda x: net(params, x, seq_lengths=lengths, implementation=impl)[1]
        return jnp.sum(jnp.sin(jax.vmap(run)(xs)))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    assert "jrnn_lstm_backward" in grad.lower(params, xs, "auto").compile().as_text()
    _assert_close(grad(params, xs, "auto"), grad(params, xs, "plain"))
