"""``jax.export`` of code that runs jrnn's fast paths: exported, serialized,
deserialized and called, it computes what the jitted function computes, with
no jrnn kernel in the exported module (its custom calls have no compatibility
guarantee, so export would refuse them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jrnn
from jrnn.forecast import Forecaster
from jrnn.kernels import _pallas, native, pallas_gru, pallas_lstm
from jrnn.scan import scan_projected
from tests.helpers import CELL_IDS, CELLS, random_params, scan_loss_problem

pytest.importorskip("flatbuffers")  # Exported.serialize() needs it


@pytest.fixture(autouse=True)
def _float32_products():
    """On a GPU too, float32 products (not TF32) on both sides of each comparison."""
    with jax.default_matmul_precision("highest"):
        yield


def _roundtrip(jitted, *specs, platforms=None):
    """``jitted`` exported for ``specs``, serialized and deserialized: ``(exported, module text)``."""
    exported = export.export(jitted, platforms=platforms)(*specs)
    text = exported.mlir_module()
    return export.deserialize(exported.serialize()), text


def _assert_trees_close(got, want, tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


def _scan_and_gradient(cell, key):
    """Jitted ``jrnn.scan`` (final carry and outputs) and the gradient of
    ``scan_loss_problem``'s loss, default implementation, with its primals."""
    loss, primals, _ = scan_loss_problem(cell, key)
    forward = jax.jit(lambda p, carry, xs: jrnn.scan(cell, p, xs, carry))
    gradient = jax.jit(jax.grad(lambda p, carry, xs: loss(p, carry, xs, "auto"), argnums=(0, 1, 2)))
    return (forward, gradient), primals


@pytest.mark.parametrize("name, cell, kind, opts", CELLS, ids=CELL_IDS)
def test_export_of_the_default_path_runs_what_jit_runs(name, cell, kind, opts, key):
    """Every cell's forward and gradient (the native CPU loops under ``jax.jit``)
    export, serialize and run again; params and LSTM states keep their types."""
    functions, primals = _scan_and_gradient(cell, key)
    for jitted in functions:
        if native.available():  # what export must replace
            assert "custom_call @jrnn_" in jitted.lower(*primals).as_text()
        exported, text = _roundtrip(jitted, *primals)
        assert "custom_call" not in text
        _assert_trees_close(exported.call(*primals), jitted(*primals), 2e-5)


def test_export_with_a_symbolic_batch_size(key):
    """Exported once with batch size ``b``, the gradient runs at any batch size."""
    cell = jrnn.lstm(8)
    (_, gradient), (params, _, _) = _scan_and_gradient(cell, key)
    (b,) = export.symbolic_shape("b")
    specs = (params, jrnn.LSTMState(*[jax.ShapeDtypeStruct((b, 8), jnp.float32)] * 2),
             jax.ShapeDtypeStruct((b, 5, 3), jnp.float32))
    exported, _ = _roundtrip(gradient, *specs)
    for batch in (1, 7):
        primals = (params, cell.initial_carry((batch,)), jax.random.normal(key, (batch, 5, 3), jnp.float32))
        _assert_trees_close(exported.call(*primals), gradient(*primals), 2e-5)


def test_export_of_layers_and_a_forecaster(key):
    """A bidirectional layer over padded sequences, a minLSTM (parallel in
    time), and a stacked forecaster's predictions with its ``ForecasterParams``,
    export and serialize."""
    layer = jrnn.bidirectional(jrnn.gru(6, reset_after=True))
    params = layer.init(key, 3)
    xs = jax.random.normal(key, (3, 7, 3), jnp.float32)
    lengths = jnp.array([7, 4, 1])
    run = jax.jit(lambda p, xs, n: layer(p, xs, seq_lengths=n)[1])
    exported, text = _roundtrip(run, params, xs, lengths)
    assert "custom_call" not in text
    _assert_trees_close(exported.call(params, xs, lengths), run(params, xs, lengths), 2e-5)

    cell = jrnn.min_lstm(5)
    min_params = cell.init(key, 3)
    run = jax.jit(lambda p, xs: jrnn.scan(cell, p, xs))
    exported, _ = _roundtrip(run, min_params, xs)
    _assert_trees_close(exported.call(min_params, xs), run(min_params, xs), 2e-5)

    model = Forecaster(jrnn.lstm(8), 3, 2, num_layers=2)
    model_params = model.init(key)
    predict = jax.jit(model.apply)
    exported, _ = _roundtrip(predict, model_params, xs)
    _assert_trees_close(exported.call(model_params, xs), predict(model_params, xs), 2e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_export_for_a_gpu_lowers_the_pallas_kernels_as_xla(kind, key):
    """The Pallas kernels (compiled for a GPU: Triton calls, which export
    refuses) export as their plain-JAX references, here for CUDA and CPU, and
    the CPU half runs: values and gradients equal the plain path's."""
    cell = jrnn.lstm(16) if kind == "lstm" else jrnn.gru(16, reset_after=True)
    module = pallas_lstm if kind == "lstm" else pallas_gru
    params = random_params(cell, key, 3, jnp.float32, scale=0.4)
    xs = jax.random.normal(key, (16, 5, 3), jnp.float32)

    def loss(p, xs, kernels):
        projected = cell.project_input(p, jnp.swapaxes(xs, 0, 1))
        carry = cell.initial_carry((16,), jnp.float32)
        if kernels:
            _, ys = module.pallas_scan(cell, p, projected, carry, interpret=False)
        else:
            _, ys = scan_projected(cell, p, projected, carry)
        return jnp.sum(jnp.sin(ys))

    for transform in (jax.value_and_grad, lambda f: f):  # training, and inference (the kernels' primal call)
        kernels = jax.jit(transform(lambda p, xs: loss(p, xs, True)))
        assert "__gpu$xla.gpu.triton" in _pallas.lower_for_gpu(kernels, params, xs).as_text()  # what export replaces
        exported, text = _roundtrip(kernels, params, xs, platforms=("cpu", "cuda"))
        assert "custom_call" not in text
        plain = jax.jit(transform(lambda p, xs: loss(p, xs, False)))
        _assert_trees_close(exported.call(params, xs), plain(params, xs), 2e-5)
