"""The Pallas LSTM and GRU kernels (interpret mode on CPU) against their references and the plain driver,
and their lowering to Triton for a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.kernels import _pallas, pallas_gru, pallas_lstm
from tests.helpers import assert_derivatives_equal, scan_loss_problem

pytest.importorskip("jax.experimental.pallas")


@pytest.fixture(params=[True, False], ids=["on-chip", "streamed"])
def on_chip(request):
    """Run a test with the recurrent weights loaded once before the time loop, and
    again with them re-read at every step (as for weights over ``ON_CHIP_BYTES``)."""
    return request.param


def _run(fn, *args):
    """``fn(*args)`` jitted, compiled without LLVM's optimisations: interpret mode
    makes each kernel a large XLA program whose optimisation took most of these
    tests' time, and what the program computes does not depend on it."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": "0"})(*args)


def _outputs_and_grads(loop, loss):
    """``(*args) -> (loop(*args), gradients of loss(loop(*args)) in every argument)``."""

    def loss_and_outputs(*args):
        out = loop(*args)
        return loss(out), out

    def run(*args):
        grads, out = jax.grad(loss_and_outputs, argnums=tuple(range(len(args))), has_aux=True)(*args)
        return out, grads

    return run


def _assert_trees_close(got, want, rtol, atol):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)


def _check_loop(loop, reference, args, loss):
    """``loop(*args)`` equals ``reference(*args)``: the outputs of the forward call
    alone, and the outputs and gradients of ``loss`` under ``jax.grad``."""
    _assert_trees_close(_run(loop, *args), reference(*args), 1e-5, 1e-5)
    (got_out, got_grads), (want_out, want_grads) = (_run(_outputs_and_grads(f, loss), *args)
                                                    for f in (loop, reference))
    _assert_trees_close(got_out, want_out, 1e-5, 1e-5)
    _assert_trees_close(got_grads, want_grads, 1e-4, 1e-5)


def _check_lstm_loop(T, B, H, loop):
    """``loop(px, w, h0, c0)`` equals the plain-JAX reference, values and gradients."""
    k = jax.random.split(jax.random.key(T * B + H), 4)
    px = jax.random.normal(k[0], (T, B, 4 * H), jnp.float32)
    w = jax.random.normal(k[1], (H, 4 * H), jnp.float32) * H**-0.5
    h0, c0 = (jax.random.normal(kk, (B, H), jnp.float32) for kk in k[2:])
    _check_loop(loop, pallas_lstm.reference, (px, w, h0, c0),
                lambda out: jnp.sum(jnp.sin(out[0])) + jnp.sum(out[1][1] ** 2) + jnp.sum(out[1][0]))


@pytest.mark.parametrize("T,B,H", [(1, 16, 16), (6, 32, 48), (3, 16, 128)])  # 1, 3 and 2 chunks
def test_kernel_equals_reference(T, B, H, on_chip):
    _check_lstm_loop(T, B, H, lambda *a: pallas_lstm.lstm_loop(*a, True, on_chip))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_chunk_of_128_columns_equals_reference(kind, monkeypatch):
    """With ``MAX_CHUNK = 128`` (the GPU benchmark's "pallas chunk=128" experiment)
    the H = 128 state is one chunk: 4 products per step instead of 16."""
    monkeypatch.setattr(_pallas, "MAX_CHUNK", 128)
    assert _pallas.chunking(128) == (128, 1)
    if kind == "lstm":
        _check_lstm_loop(3, 16, 128, lambda *a: pallas_lstm.lstm_loop(*a, True, False))
    else:
        _check_gru_loop(3, 16, 128, False)


@pytest.mark.parametrize("T,B,H", [(1, 16, 64), (4, 32, 128)])  # 4 tiles, 1 chunk; 8 tiles, 2 chunks, 2 batch tiles
def test_wide_kernel_equals_reference(T, B, H, on_chip):
    """The cooperative kernels as interpret mode runs them: one program per batch
    tile doing every column tile, through the same grid barrier (reached at once)."""
    _check_lstm_loop(T, B, H, lambda *a: pallas_lstm.lstm_loop(*a, True, on_chip, 1))


def test_wide_kernel_is_nan_when_its_programs_cannot_all_run(monkeypatch):
    """Interpret mode runs programs one after another, so two cooperating programs
    never meet at a barrier: each gives up after ``MAX_SPINS`` polls (instead of
    hanging) and the outputs and gradients are NaN (instead of silently wrong)."""
    monkeypatch.setattr(pallas_lstm, "MAX_SPINS", 3)
    T, B, H = 2, 16, 64
    px, w = jnp.ones((T, B, 4 * H)), jnp.full((H, 4 * H), 0.01)
    h0 = c0 = jnp.zeros((B, H))
    loop = lambda *a: pallas_lstm.lstm_loop(*a, True, None, 2)
    hs, (h, c) = loop(px, w, h0, c0)
    assert np.isnan(hs).all() and np.isnan(h).all() and np.isnan(c).all()
    grads = jax.grad(lambda *a: jnp.sum(loop(*a)[0]), argnums=(0, 1))(px, w, h0, c0)
    assert all(np.isnan(g).all() for g in grads)


@pytest.mark.parametrize("T,B,H", [(1, 16, 16), (6, 32, 48), (3, 16, 128)])  # 1, 3 and 2 chunks
def test_gru_kernel_equals_reference(T, B, H, on_chip):
    _check_gru_loop(T, B, H, on_chip)


def _check_gru_loop(T, B, H, on_chip):
    """``pallas_gru.gru_loop`` equals the plain-JAX reference, values and gradients."""
    k = jax.random.split(jax.random.key(T * B + H), 4)
    px = jax.random.normal(k[0], (T, B, 3 * H), jnp.float32)
    w = jax.random.normal(k[1], (H, 3 * H), jnp.float32) * H**-0.5
    b_hn = jax.random.normal(k[2], (H,), jnp.float32)
    h0 = jax.random.normal(k[3], (B, H), jnp.float32)
    _check_loop(lambda *a: pallas_gru.gru_loop(*a, True, on_chip), pallas_gru.reference, (px, w, b_hn, h0),
                lambda out: jnp.sum(jnp.sin(out[0])) + jnp.sum(out[1] ** 2))


_CELLS = {"lstm": jrnn.lstm(16), "gru": jrnn.gru(16, reset_after=True), "wide-lstm": jrnn.lstm(320)}
_BATCHES = {"pad-3": (3,), "two-dims": (2, 3), "no-batch": ()}


@pytest.mark.parametrize("cell,batch", [
    pytest.param(_CELLS[c], _BATCHES[b], id=f"{c}-{b}")
    for c, b in [(c, b) for c in ("lstm", "gru") for b in _BATCHES] + [("wide-lstm", "pad-3")]])
def test_scan_pallas_equals_plain(cell, batch, key):
    params = cell.init(key, 3)
    params = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases (b_hn too)
    xs = jax.random.normal(key, (*batch, 5, 3), jnp.float32)
    carry = jax.tree.map(lambda c: c + 0.1, cell.initial_carry(batch, jnp.float32))

    def loss(p, x, impl):
        final, ys = jrnn.scan(cell, p, x, carry, implementation=impl)
        return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(final)), (final, ys)

    (_, (f_k, ys_k)), g_k = _run(jax.value_and_grad(lambda p, x: loss(p, x, "pallas"), argnums=(0, 1), has_aux=True),
                                 params, xs)
    (_, (f_p, ys_p)), g_p = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs, "plain")
    np.testing.assert_allclose(ys_k, ys_p, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), f_k, f_p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_k, g_p)


@pytest.mark.parametrize("cell", [_CELLS["lstm"], _CELLS["gru"], _CELLS["wide-lstm"]], ids=["lstm", "gru", "wide-lstm"])
def test_pallas_derivatives_equal_plain(cell, key):
    """Forward mode and derivatives of the kernels' gradients (a gradient penalty,
    a Hessian-vector product, ``jax.hessian``) equal the plain driver's: JAX
    differentiates each kernel call as its plain-JAX reference (``reference_forward``,
    ``reference_backward``)."""
    loss, primals, k_v = scan_loss_problem(cell, key, scale=1.6 * cell.hidden_size**-0.5)  # 0.4 at H = 16
    assert_derivatives_equal(loss, primals, k_v, "pallas", 2e-4, run=_run)


def test_pallas_refusals(key):
    with pytest.raises(ValueError, match=r"size in \(16, 32, 48, 64, 96, 128, 192, 256\) \(LSTM: or a multiple of 64 "
                                         r"from 320 to 2048\), got"):
        jrnn.scan(jrnn.lstm(12), jrnn.lstm(12).init(key, 2), jnp.ones((1, 3, 2)), implementation="pallas")
    with pytest.raises(ValueError, match="reset-after jrnn.gru"):
        jrnn.scan(jrnn.gru(16), jrnn.gru(16).init(key, 2), jnp.ones((1, 3, 2)), implementation="pallas")
    cell = jrnn.lstm(16)
    with pytest.raises(ValueError, match="supports no seq_lengths"):
        jrnn.scan(cell, cell.init(key, 2), jnp.ones((1, 3, 2)), seq_lengths=jnp.array([2]), implementation="pallas")


def test_wide_lstm_refused_where_its_programs_cannot_all_run(key, monkeypatch):
    """On a GPU, the cooperative kernels need every program resident at once (one
    per multiprocessor): H/16 per 16 batch rows, here 20 × 2 > 30."""

    class SmallGPU:
        core_count = 30

    monkeypatch.setattr(jax, "devices", lambda *a: [SmallGPU()])
    cell = jrnn.lstm(320)
    params = cell.init(key, 2)
    projected = cell.project_input(params, jnp.ones((3, 20, 2)))
    with pytest.raises(ValueError, match="needs 40 programs running at once .* more than the GPU's 30 multiprocessors"):
        pallas_lstm.pallas_scan(cell, params, projected, cell.initial_carry((20,)), interpret=False)


def test_pallas_refused_without_the_triton_backend(key, monkeypatch):
    """A jax that has dropped Pallas' Triton backend (deprecated from 0.11) gets
    a clear error, not an ImportError from inside the kernel wrapper."""
    monkeypatch.setattr(_pallas, "available", lambda: False)
    cell = jrnn.lstm(16)
    with pytest.raises(ValueError, match=r"needs Pallas' Triton backend, which jax \S+ no longer has; use 'fused'"):
        jrnn.scan(cell, cell.init(key, 2), jnp.ones((1, 3, 2)), implementation="pallas")


@pytest.mark.parametrize("cell", [jrnn.lstm(16), jrnn.gru(16, reset_after=True)], ids=["lstm", "gru"])
def test_scan_pallas_bfloat16(cell, key):
    """bfloat16 params and inputs with a float32 carry: the kernel computes in
    float32 from the bfloat16 operands, as the plain path does with that carry."""
    params = jax.tree.map(lambda a: (a + 0.1).astype(jnp.bfloat16), cell.init(key, 3))
    xs = jax.random.normal(key, (5, 7, 3)).astype(jnp.bfloat16)

    def loss(p, impl):
        final, ys = jrnn.scan(cell, p, xs, implementation=impl, carry_dtype=jnp.float32)
        return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(final)), ys

    def values_and_grads(impl):  # both jitted: the XLA around the kernel compiles alike
        return _run(jax.value_and_grad(lambda p: loss(p, impl), has_aux=True), params)

    (_, ys_k), g_k = values_and_grads("pallas")
    (_, ys_p), g_p = values_and_grads("plain")
    assert ys_k.dtype == ys_p.dtype == jnp.float32
    np.testing.assert_allclose(ys_k, ys_p, rtol=2e-2, atol=2e-2)
    for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_p)):
        assert a.dtype == b.dtype == jnp.bfloat16
        # A weight gradient sums T·B bfloat16 products; where they cancel, an entry near 0 is off by a few
        # units in the last place of the largest ones (jax 0.11.2: 0.39 in an entry of 1.09, largest 40).
        scale = float(np.abs(np.float32(b)).max())
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=5e-2, atol=max(5e-2, 2e-2 * scale))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("H,dtype,on_chip", [(64, jnp.float32, True), (192, jnp.float32, False),
                                             (96, jnp.bfloat16, True), (256, jnp.float32, False),
                                             (256, jnp.bfloat16, False)])
def test_kernels_lower_to_triton_for_a_gpu(kind, H, dtype, on_chip):
    """Without a GPU, lower forward and backward for CUDA: the kernels must pass
    Pallas' Triton lowering (shapes, dtypes, ops) at the benchmark's T = 1000,
    with weights both on chip and streamed, with 1 to 4 chunks."""
    assert _pallas.weights_on_chip(jnp.zeros((H, (4 if kind == "lstm" else 3) * H), dtype)) == on_chip
    assert _lowered_for_a_gpu(kind, H, dtype).count("custom_call @__gpu$xla.gpu.triton") == 2  # forward, backward


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_chunk_of_128_columns_lowers_to_triton_for_a_gpu(kind, monkeypatch):
    """The "pallas chunk=128" experiment at H = 128 (bfloat16: weights on chip)
    passes the Triton lowering too."""
    monkeypatch.setattr(_pallas, "MAX_CHUNK", 128)
    assert _lowered_for_a_gpu(kind, 128, jnp.bfloat16).count("custom_call @__gpu$xla.gpu.triton") == 2


@pytest.mark.parametrize("H,dtype,on_chip", [(768, jnp.float32, True), (768, jnp.bfloat16, True),
                                             (1024, jnp.float32, False)])
def test_wide_kernels_lower_to_triton_for_a_gpu(H, dtype, on_chip):
    """The cooperative kernels as a GPU runs them (H/16 programs, grid barriers),
    lowered for CUDA: 48 programs at the benchmark's H = 768."""
    assert pallas_lstm.wide_weights_on_chip(jnp.zeros((H, 4 * H), dtype)) == on_chip
    text = _lowered_for_a_gpu("lstm", H, dtype)
    assert text.count("custom_call @__gpu$xla.gpu.triton") == 2
    assert text.count(f"grid_x = {H // pallas_lstm.WIDE_TILE} : i32, grid_y = 1 : i32") == 2  # batch 3: one tile


def _lowered_for_a_gpu(kind, H, dtype):
    """StableHLO text of the jitted gradient through the kernels, lowered for CUDA, at T = 1000."""
    cell = jrnn.lstm(H) if kind == "lstm" else jrnn.gru(H, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.key(0), 8))
    xs = jnp.ones((3, 1000, 8), dtype)

    def loss(p, x):
        carry = cell.initial_carry((3,), jnp.float32)
        projected = cell.project_input(p, jnp.swapaxes(x, 0, 1))
        module = pallas_lstm if kind == "lstm" else pallas_gru
        _, ys = module.pallas_scan(cell, p, projected, carry, interpret=False)
        return jnp.sum(ys)

    return _pallas.lower_for_gpu(jax.jit(jax.grad(loss)), params, xs).as_text()
