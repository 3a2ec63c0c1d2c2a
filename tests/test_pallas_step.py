"""The fused path's LSTM and reset-after GRU loops with one Pallas kernel per
time step (``jrnn.kernels.pallas_step``, interpreted on CPU) equal the plain
driver, values and gradients, with every option the fused path takes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.kernels import _pallas, fused, native, pallas_step

pytestmark = pytest.mark.skipif(not _pallas.available(), reason="this jax has no Pallas Triton backend")

CASES = [
    # (hidden size, batch, options)
    (32, 3, {}),
    (32, 3, {"seq_lengths": [7, 0, 3]}),
    (32, 3, {"seq_lengths": [7, 0, 3], "reverse": True}),
    (32, 3, {"recurrent_dropout": 0.3, "dropout": 0.2, "dropout_key": 5}),
    (48, 18, {"unroll": 3}),  # 3 chunks of h in the forward product, 2 batch tiles
]
CELLS = {"lstm": jrnn.lstm, "gru": lambda hidden: jrnn.gru(hidden, reset_after=True)}


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("hidden,batch,options", CASES, ids=["plain", "lengths", "reverse", "dropout", "h48-b18"])
def test_step_kernels_equal_plain(kind, hidden, batch, options, key):
    k_p, k_c, k_x, k_w = jax.random.split(key, 4)
    cell = CELLS[kind](hidden)
    params = cell.init(k_p, 5, jnp.float32)
    carry = jax.tree.map(lambda k: jax.random.normal(k, (batch, hidden), jnp.float32), _keys(cell, k_c))
    xs = jax.random.normal(k_x, (batch, 7, 5), jnp.float32)
    weights = jax.random.normal(k_w, (batch, 7, hidden), jnp.float32)
    options = dict(options)
    if "seq_lengths" in options:
        options["seq_lengths"] = jnp.asarray(options["seq_lengths"])
    if "dropout_key" in options:
        options["dropout_key"] = jax.random.key(options["dropout_key"])

    def loss(params, carry, xs, impl):
        final, ys = jrnn.scan(cell, params, xs, carry, implementation=impl, **options)
        return jnp.sum(weights * ys) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    with jax.default_matmul_precision("highest"):
        want = jax.jit(grad, static_argnums=3)(params, carry, xs, "plain")
        with fused.step_kernels(), native.disabled():
            traced = jax.jit(grad, static_argnums=3).trace(params, carry, xs, "fused")
            got = traced.lower().compile()(params, carry, xs)
    # one kernel forward and one reverse, each traced compiled (for CUDA) and interpreted (elsewhere)
    assert str(traced.jaxpr).count("pallas_call") == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), got, want)


def _keys(cell, key):
    """Random-key leaves in the shape of ``cell``'s carry (an ``LSTMState`` or one array)."""
    leaves, tree = jax.tree.flatten(cell.initial_carry((1,)))
    return jax.tree.unflatten(tree, list(jax.random.split(key, len(leaves))))


def test_step_kernels_refuse_what_they_do_not_take(key):
    cell = jrnn.lstm(20)
    params = cell.init(key, 3)
    with fused.step_kernels(), native.disabled(), pytest.raises(
            ValueError, match="step_kernels: needs a hidden size that is a multiple of 16 up to 256"):
        jrnn.scan(cell, params, jnp.ones((2, 4, 3)), implementation="fused")
    assert not pallas_step.supports(272) and pallas_step.supports(256) and pallas_step.padded_batch(1) == 16


@pytest.mark.parametrize("cell", [jrnn.simple_rnn(16), jrnn.gru(16)], ids=["simple_rnn", "gru-reset-before"])
def test_cells_without_step_kernels_keep_their_loops(cell, key):
    params = cell.init(key, 3)
    xs = jax.random.normal(key, (2, 5, 3))
    loss = lambda p, impl: jnp.sum(jnp.sin(jrnn.scan(cell, p, xs, implementation=impl)[1]))
    with fused.step_kernels(), native.disabled():
        traced = jax.jit(jax.value_and_grad(loss), static_argnums=1).trace(params, "fused")
        got = traced.lower().compile()(params)
    assert "pallas_call" not in str(traced.jaxpr)
    want = jax.value_and_grad(loss)(params, "plain")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.parametrize("kind", CELLS)
def test_step_kernels_lower_to_triton_for_a_gpu(kind, key):
    """Lowered for CUDA, the forward and the reverse loop each call one Triton
    kernel per step, H / 16 programs per batch tile; the default (by platform)
    still runs XLA's loops there."""
    cell = CELLS[kind](128)
    params = cell.init(key, 8)
    loss = lambda p, x: jnp.sum(jrnn.scan(cell, p, x, implementation="fused")[1])
    xs = jnp.ones((1, 50, 8))
    with fused.step_kernels():
        text = _pallas.lower_for_gpu(jax.jit(jax.grad(loss)), params, xs).as_text()
    assert text.count("custom_call @__gpu$xla.gpu.triton") == 2
    assert len(re.findall(r"grid_x = 8 : i32, grid_y = 1 : i32", text)) == 2
    default = _pallas.lower_for_gpu(jax.jit(jax.grad(loss)), params, xs).as_text()
    assert "__gpu$xla.gpu.triton" not in default


@pytest.mark.parametrize("batch,kernels", [(1, True), (16, True), (17, False)])
def test_step_kernels_by_batch_size_once_enabled(batch, kernels, key, monkeypatch):
    """With ``_STEP_KERNELS_MAX_BATCH`` raised (once a GPU run shows them faster),
    CUDA runs the step kernels up to that many batch rows and XLA's loops above;
    other platforms keep their loops."""
    monkeypatch.setattr(fused, "_STEP_KERNELS_MAX_BATCH", 16)
    cell = jrnn.lstm(32)
    params = cell.init(key, 4)
    loss = lambda p, x: jnp.sum(jrnn.scan(cell, p, x, implementation="fused")[1])
    xs = jnp.ones((batch, 6, 4))
    text = _pallas.lower_for_gpu(jax.jit(jax.grad(loss)), params, xs).as_text()
    assert text.count("custom_call @__gpu$xla.gpu.triton") == (2 if kernels else 0)
    with native.disabled():
        on_cpu = jax.jit(jax.grad(loss)).trace(params, xs).lower(lowering_platforms=("cpu",)).as_text()
    assert "triton" not in on_cpu and "pallas" not in on_cpu
