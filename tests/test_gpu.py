"""The cuDNN option (on any backend: its weight layouts, what jrnn's own binding lowers to for CUDA,
its build cache and fallbacks, derivatives of gradients with cuDNN's calls stood in for, jax.export; values and
gradients on a GPU only) and the GPU benchmark script."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from tests.helpers import assert_derivatives_equal, random_params, scan_loss_problem

gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU backend")


@pytest.fixture(autouse=True)
def _trace_afresh():
    """Tests here monkeypatch what jrnn.scan decides at trace time (cuDNN's availability,
    its calls), and jrnn.scan keeps what it compiled: start each test with none kept."""
    jax.clear_caches()


@gpu
@pytest.mark.parametrize("kind, hidden_size, lengths", [("lstm", 16, None), ("lstm", 16, [12, 5, 0, 1]),
                                                        ("lstm", 256, None), ("gru", 16, None), ("gru", 256, None)])
def test_cudnn_equals_plain(kind, hidden_size, lengths, key):
    """Values, final carry and gradients; without ``seq_lengths`` through jrnn's own
    binding where it works (cuDNN's small-H kernel at H = 16, the standard
    algorithm at 256), else ``jax.experimental.rnn`` (the LSTM)."""
    from jrnn.kernels import cudnn

    if kind == "gru" and not cudnn.own_binding_available():
        pytest.skip(f"jrnn's own cuDNN binding: {cudnn.own_binding_problem()}")
    cell = jrnn.lstm(hidden_size) if kind == "lstm" else jrnn.gru(hidden_size, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), cell.init(key, 8))
    xs = jax.random.normal(key, (4, 12, 8), jnp.float32)  # the suite enables x64: be explicit
    states = [jax.random.normal(k, (4, hidden_size), jnp.float32) for k in jax.random.split(key)]
    carry = jrnn.LSTMState(*states) if kind == "lstm" else states[0]
    options = {} if lengths is None else {"seq_lengths": jnp.asarray(lengths)}

    def loss(p, impl):
        final, ys = jrnn.scan(cell, p, xs, carry, implementation=impl, **options)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final)), (final, ys)

    with jax.default_matmul_precision("highest"):
        (_, (f_c, ys_c)), g_c = jax.value_and_grad(loss, has_aux=True)(params, "cudnn")
        (_, (f_p, ys_p)), g_p = jax.value_and_grad(loss, has_aux=True)(params, "plain")
    np.testing.assert_allclose(ys_c, ys_p, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), f_c, f_p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), g_c, g_p)


@gpu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_auto_takes_cudnn_on_one_gpu_and_equals_plain(kind, key):
    """On one GPU with jrnn's own binding working, ``jrnn.scan``'s default runs an
    H = 32 float32 cell through cuDNN's persistent kernel: values and gradients equal the plain path's."""
    from jrnn.kernels import cudnn

    if jax.device_count() != 1 or not cudnn.own_binding_available():
        pytest.skip(f"{jax.device_count()} devices; jrnn's own cuDNN binding: {cudnn.own_binding_problem()}")
    cell = jrnn.lstm(32) if kind == "lstm" else jrnn.gru(32, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), cell.init(key, 8))
    xs = jax.random.normal(key, (3, 10, 8), jnp.float32)
    loss = lambda p, impl: jnp.sum(jnp.sin(jrnn.scan(cell, p, xs, implementation=impl)[1]))
    with jax.default_matmul_precision("highest"):
        assert "jrnn_cudnn_rnn_backward" in jax.jit(jax.grad(loss), static_argnums=1).lower(params, "auto").as_text()
        (v_a, g_a), (v_p, g_p) = (jax.value_and_grad(loss)(params, impl) for impl in ("auto", "plain"))
    np.testing.assert_allclose(v_a, v_p, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), g_a, g_p)


@gpu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_derivatives_on_a_gpu(kind, key):
    """Forward mode and derivatives of gradients through cuDNN (a gradient
    penalty, a Hessian-vector product, ``jax.hessian``) equal the plain path's:
    JAX differentiates cuDNN's calls as their plain-JAX reference."""
    from jrnn.kernels import cudnn

    if kind == "gru" and not cudnn.own_binding_available():
        pytest.skip(f"jrnn's own cuDNN binding: {cudnn.own_binding_problem()}")
    cell = jrnn.lstm(8) if kind == "lstm" else jrnn.gru(8, reset_after=True)
    with jax.default_matmul_precision("highest"):
        _check_derivatives(cell, key, ("cudnn",) if jax.device_count() != 1 else ("auto", "cudnn"), 1e-4)


@gpu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_exports_on_a_gpu(kind, key):
    """``jax.export`` of a gradient through ``"cudnn"`` gets no custom call, and
    on the GPU computes what ``jax.jit`` computes with cuDNN's kernels (jrnn's
    binding: ``jax.experimental.rnn``'s custom call does not export)."""
    from jrnn.kernels import cudnn

    if not cudnn.own_binding_available():
        pytest.skip(f"jrnn's own cuDNN binding: {cudnn.own_binding_problem()}")
    cell = jrnn.lstm(16) if kind == "lstm" else jrnn.gru(16, reset_after=True)
    params = random_params(cell, key, 8, jnp.float32, scale=0.4)
    xs = jax.random.normal(key, (4, 12, 8), jnp.float32)
    loss = lambda p, xs: jnp.sum(jnp.sin(jrnn.scan(cell, p, xs, implementation="cudnn")[1]))
    with jax.default_matmul_precision("highest"):
        kernels = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        assert "jrnn_cudnn_rnn_backward" in kernels.lower(params, xs).as_text()
        exported = jax.export.export(kernels)(params, xs)
        assert "custom_call" not in exported.mlir_module()
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     exported.call(params, xs), kernels(params, xs))


def test_cudnn_weight_layout_is_exact(key):
    """On any backend: the flat cuDNN weight vector jrnn packs, unpacked by
    ``jax.experimental.rnn`` and run through its reference LSTM (the equations
    cuDNN computes, in PyTorch's layout), gives jrnn's plain path."""
    from jax.experimental import rnn

    from jrnn.kernels import cudnn

    I, H, B, T = 3, 5, 2, 6
    cell = jrnn.lstm(H)
    k_p, k_b, k_x, k_h, k_c = jax.random.split(key, 5)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k_p, I))
    params = params._replace(b=jax.random.normal(k_b, params.b.shape, jnp.float64))  # every gate's bias matters
    xs = jax.random.normal(k_x, (B, T, I), jnp.float64)
    carry = jrnn.LSTMState(jax.random.normal(k_h, (B, H), jnp.float64), jax.random.normal(k_c, (B, H), jnp.float64))
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(cudnn.pack_weights(params), I, H, 1, False)
    ys, h_n, c_n = rnn.lstm_ref(xs, carry.h[None], carry.c[None], w_ih, w_hh, b_ih, b_hh,
                                jnp.full((B,), T, jnp.int32), I, H, 1, 0.0, False)
    final, ys_plain = jrnn.scan(cell, params, xs, carry, implementation="plain")
    np.testing.assert_allclose(ys, ys_plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n[0], final.h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n[0], final.c, rtol=1e-12, atol=1e-12)


def test_cudnn_gru_weight_layout_is_exact(key):
    """On any backend: the flat cuDNN weight vector jrnn packs for a reset-after
    GRU, cut where cuDNN's layout puts W_ih (3H, I), W_hh (3H, H), b_ih and b_hh
    (PyTorch's layout: blocks r, z, n) and run by ``torch.nn.GRU``, gives jrnn's plain path."""
    torch = pytest.importorskip("torch")
    from jrnn.kernels import cudnn

    I, H, B, T = 3, 5, 2, 6
    cell = jrnn.gru(H, reset_after=True)
    k_p, k_b, k_n, k_x, k_h = jax.random.split(key, 5)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k_p, I))
    params = params._replace(b=jax.random.normal(k_b, params.b.shape, jnp.float64),
                             b_hn=jax.random.normal(k_n, params.b_hn.shape, jnp.float64))
    xs = jax.random.normal(k_x, (B, T, I), jnp.float64)
    h0 = jax.random.normal(k_h, (B, H), jnp.float64)
    module = _torch_module(torch, "gru", cudnn.pack_weights(params), I, H, batch_first=True)
    with torch.no_grad():
        ys, h_n = module(torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(h0))[None])
    final, ys_plain = jrnn.scan(cell, params, xs, h0, implementation="plain")
    np.testing.assert_allclose(ys.numpy(), ys_plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n[0].numpy(), final, rtol=1e-12, atol=1e-12)


def _torch_module(torch, kind, flat, I, H, batch_first=False):
    """A float64 ``torch.nn.LSTM`` or ``GRU`` holding a flat cuDNN weight vector, cut
    where cuDNN's layout puts W_ih (G·H, I), W_hh (G·H, H), b_ih and b_hh
    (PyTorch's layout, gate blocks i, f, g, o and r, z, n)."""
    G = 4 if kind == "lstm" else 3
    flat = np.asarray(flat)
    sizes = [G * H * I, G * H * H, G * H, G * H]
    assert flat.size == sum(sizes)
    w_ih, w_hh, b_ih, b_hh = np.split(flat, np.cumsum(sizes)[:-1])
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, batch_first=batch_first).double()
    with torch.no_grad():
        for name, value in (("weight_ih_l0", w_ih.reshape(G * H, I)), ("weight_hh_l0", w_hh.reshape(G * H, H)),
                            ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(module, name).copy_(torch.from_numpy(np.array(value)))
    return module


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_reference_computes_what_cudnn_does_with_any_weights(kind, key):
    """On any backend: ``unpack_weights`` inverts ``pack_weights``, and for a flat
    weight vector with every entry random (``b_hh`` too, which ``pack_weights``
    leaves zero outside the GRU's ``b_hn``), the plain-JAX reference that JAX
    differentiates in place of cuDNN's calls computes what ``torch.nn.LSTM`` /
    ``GRU`` (cuDNN's equations and layout) compute with it."""
    torch = pytest.importorskip("torch")
    from jrnn.kernels import cudnn

    I, H, B, T = 3, 5, 2, 6
    cell = jrnn.lstm(H) if kind == "lstm" else jrnn.gru(H, reset_after=True)
    k_p, k_w, k_x, k_h, k_c = jax.random.split(key, 5)
    params = random_params(cell, k_p, I, jnp.float64)
    jax.tree.map(np.testing.assert_array_equal, cudnn.unpack_weights(kind, cudnn.pack_weights(params), I, H), params)
    w = jax.random.normal(k_w, cudnn.pack_weights(params).shape, jnp.float64)
    xs = jax.random.normal(k_x, (T, B, I), jnp.float64)
    h0, c0 = (jax.random.normal(k, (1, B, H), jnp.float64) for k in (k_h, k_c))
    ys, hy, cy, _ = cudnn._reference_forward(kind, 0, xs, h0, c0, w)
    module = _torch_module(torch, kind, w, I, H)
    to_torch = lambda a: torch.from_numpy(np.array(a))
    with torch.no_grad():
        ys_t, state = module(to_torch(xs), (to_torch(h0), to_torch(c0)) if kind == "lstm" else to_torch(h0))
    np.testing.assert_allclose(ys, ys_t.numpy(), rtol=1e-12, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(hy, state[0].numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cy, state[1].numpy(), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(hy, state.numpy(), rtol=1e-12, atol=1e-12)


def test_cudnn_algorithm_follows_pytorch():
    """cuDNN's persistent small-H kernel where PyTorch uses it for both passes (H ≤ 128)."""
    from jrnn.kernels import cudnn

    assert [cudnn.algorithm(h) for h in (1, 64, 128, 129, 768)] == [cudnn.PERSIST_STATIC_SMALL_H] * 3 + [
        cudnn.STANDARD] * 2


def test_cudnn_binding_check_runs_eagerly_inside_a_trace(monkeypatch):
    """The first ``implementation="cudnn"`` often comes inside ``jax.jit``: the
    binding's check against ``jax.experimental.rnn`` must still compute values
    (not trace them), pass where the two agree and say so where they differ.
    Both are stood in for by ``jax.experimental.rnn``'s reference LSTM here."""
    from jax.experimental import rnn

    from jrnn.kernels import cudnn

    def reference(xs, h0, c0, w):  # batch-major xs, (B, H) states
        I, H = xs.shape[-1], h0.shape[-1]
        ys, h_n, c_n = rnn.lstm_ref(xs, h0[None], c0[None], *rnn.unpack_lstm_weights(w, I, H, 1, False),
                                    jnp.full(xs.shape[:1], xs.shape[1], jnp.int32), I, H, 1, 0.0, False)
        return ys, h_n[0], c_n[0]

    def own(config, xs, h0, c0, w, shift=0.0):  # time-major, (1, B, H) states, as the binding's
        ys, h, c = reference(jnp.swapaxes(xs, 0, 1), h0[0], c0[0], w)
        return jnp.swapaxes(ys, 0, 1) + shift, h[None], c[None]

    monkeypatch.setattr(cudnn, "_own_library", lambda: object())
    monkeypatch.setattr(cudnn, "_experimental_lstm", lambda xs, h0, c0, w, lengths: reference(xs, h0, c0, w))
    monkeypatch.setattr(cudnn, "_own_rnn", own)
    seen = []
    jax.jit(lambda x: seen.append(cudnn._own_binding_check.__wrapped__()) or x)(jnp.ones(2))
    monkeypatch.setattr(cudnn, "_own_rnn", lambda *args: own(*args, shift=1e-2))
    jax.jit(lambda x: seen.append(cudnn._own_binding_check.__wrapped__()) or x)(jnp.ones(2))
    assert seen[0] is None
    assert seen[1].startswith("differs from jax.experimental.rnn")


def test_cudnn_plan_falls_back_and_can_be_forced(monkeypatch):
    """Where cuDNN refuses the persistent small-H kernel for a problem (its size
    query fails), the binding takes the standard algorithm; ``forced_algorithm``
    takes the one given, with no fallback, and refuses what is not one of cuDNN's."""
    from jrnn.kernels import cudnn

    def sizes(kind, algo, *rest):
        if algo == cudnn.PERSIST_STATIC_SMALL_H:
            raise RuntimeError("cuDNN cudnnGetRNNTempSpaceSizes: CUDNN_STATUS_NOT_SUPPORTED")
        return 0, 0, 0

    monkeypatch.setattr(cudnn, "_sizes", sizes)
    assert cudnn.plan("lstm", True, 8, 64, 2, 5) == ("lstm", cudnn.STANDARD, True)
    assert cudnn.plan("gru", False, 8, 768, 2, 5) == ("gru", cudnn.STANDARD, False)
    with cudnn.forced_algorithm(cudnn.PERSIST_STATIC):
        assert cudnn.plan("lstm", True, 8, 768, 2, 5) == ("lstm", cudnn.PERSIST_STATIC, True)
    with cudnn.forced_algorithm(cudnn.PERSIST_STATIC_SMALL_H):
        assert cudnn.plan("lstm", True, 8, 64, 2, 5)[1] == cudnn.PERSIST_STATIC_SMALL_H
    assert cudnn.plan("lstm", True, 8, 768, 2, 5)[1] == cudnn.STANDARD  # the context is over
    with cudnn.forced_algorithm(cudnn.PERSIST_DYNAMIC):
        assert cudnn.plan("gru", True, 8, 768, 2, 5) == ("gru", cudnn.PERSIST_DYNAMIC, True)
    with pytest.raises(ValueError, match="algo: expected one of 0, 1, 2, 3, got 4"), cudnn.forced_algorithm(4):
        pass


def test_cudnn_binding_builds_where_cuda_headers_are(tmp_path):
    """Where jax's CUDA wheels are installed (their headers) beside a C++ compiler,
    jrnn's own cuDNN binding compiles and links against cuDNN; elsewhere (CI's CPU
    machine) there is nothing to build and :func:`build_command` says so."""
    import subprocess

    from jrnn.kernels import cudnn

    command = cudnn.build_command(tmp_path / "_cudnn_rnn.so")
    if command is None:
        pytest.skip("no CUDA wheels' headers or no C++ compiler here")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    symbols = subprocess.run(["nm", "-D", str(tmp_path / "_cudnn_rnn.so")], capture_output=True, text=True,
                             check=True).stdout
    for name in ("JrnnCudnnRnnForward", "JrnnCudnnRnnBackward", "jrnn_cudnn_rnn_sizes"):
        assert f" T {name}" in symbols


def test_cudnn_binding_is_built_once_into_the_cache(tmp_path, monkeypatch):
    """The binding is compiled on first use into ``$XDG_CACHE_HOME/jrnn`` (named
    by a hash of its source and jaxlib's version), then reused; a failed
    compile says why; without a compiler or headers there is no library."""
    from jrnn.kernels import cudnn

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    builds = []

    def build(output, fail=False):
        builds.append(output)
        return ["false"] if fail else ["touch", str(output)]

    monkeypatch.setattr(cudnn, "build_command", build)
    first = cudnn._library_path()
    assert first.parent == tmp_path / "cache" / "jrnn" and first.exists() and first.name.startswith("_cudnn_rnn-")
    assert cudnn._library_path() == first and len(builds) == 1  # built once, then reused
    first.unlink()
    monkeypatch.setattr(cudnn, "build_command", lambda output: build(output, fail=True))
    with pytest.raises(RuntimeError, match="compiling cudnn_rnn.cc failed"):
        cudnn._library_path()
    monkeypatch.setattr(cudnn, "build_command", lambda output: None)
    assert cudnn._library_path() is None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_own_binding_lowers_for_cuda(kind, key, monkeypatch):
    """On any backend: ``jrnn.scan(implementation="cudnn")`` through jrnn's own
    binding lowers for CUDA, forward+backward, to one cuDNN forward (training)
    and one backward call whose weight gradients and reserve space alias their
    inputs; inference lowers to one forward call. (cuDNN's sizes, a GPU query,
    are stood in for; running it needs a GPU: ``benchmarks/gpu.py``'s checks.)"""
    from jrnn.kernels import cudnn

    I, H, B, T = 3, 8, 2, 5
    G = 4 if kind == "lstm" else 3
    asked = []

    def sizes(kind_, algo, tf32, input_size, hidden_size, batch, steps, training):
        asked.append((kind_, algo, tf32, input_size, hidden_size, batch, steps, training))
        return 4 * G * hidden_size * (input_size + hidden_size + 2), 256, 1024 if training else 0

    monkeypatch.setattr(cudnn, "available", lambda: True)
    monkeypatch.setattr(cudnn, "_own_binding_check", lambda: None)
    monkeypatch.setattr(cudnn, "_sizes", sizes)
    cell = jrnn.lstm(H) if kind == "lstm" else jrnn.gru(H, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), cell.init(key, I))
    xs = jnp.ones((B, T, I), jnp.float32)

    def loss(p, x):
        final, ys = jrnn.scan(cell, p, x, implementation="cudnn")
        return jnp.sum(ys) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))

    lower = lambda f: jax.jit(f).trace(params, xs).lower(lowering_platforms=("cuda",)).as_text()
    with jax.default_matmul_precision("default"):  # cuDNN may use TF32 products, as XLA's dots do
        train = lower(jax.grad(loss, argnums=(0, 1)))
        infer = lower(loss)
    assert train.count("@jrnn_cudnn_rnn_forward") == 1 and train.count("@jrnn_cudnn_rnn_backward") == 1
    assert "output_operand_aliases" in train
    assert infer.count("@jrnn_cudnn_rnn_forward") == 1 and "@jrnn_cudnn_rnn_backward" not in infer
    algo = cudnn.PERSIST_STATIC_SMALL_H
    assert {a[:7] for a in asked} == {(kind, algo, True, I, H, B, T)} and {a[7] for a in asked} == {True, False}
    with jax.default_matmul_precision("highest"):  # cuDNN's float32 (FMA) math then
        lower(loss)
    assert asked[-1][2] is False


def _as_if_on_one_gpu(monkeypatch, refuses=False):
    """Stand in for a single GPU with jrnn's own binding working; cuDNN's sizes
    (a GPU query) are faked, refusing every problem with ``refuses``. Returns
    the problems asked about."""
    from jrnn.kernels import cudnn

    asked = []

    def sizes(kind, algo, tf32, input_size, hidden_size, batch, steps, training):
        asked.append((kind, algo, input_size, hidden_size, batch, steps))
        if refuses:
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        gates = 4 if kind == "lstm" else 3
        return 4 * gates * hidden_size * (input_size + hidden_size + 2), 256, 1024 if training else 0

    monkeypatch.setattr(cudnn, "available", lambda: True)
    monkeypatch.setattr(cudnn, "_own_binding_check", lambda: None)
    monkeypatch.setattr(cudnn, "_sizes", sizes)
    monkeypatch.setattr(jax, "device_count", lambda *backend: 1)
    return asked


def _opaque(fn, name):
    """``fn`` as a kernel that JAX cannot differentiate (as a custom call):
    differentiating it fails the test; lowered, it is a function named
    ``stood_in_<name>``."""
    def named(*args):
        return fn(*args)

    named.__name__ = f"stood_in_{name}"
    kernel = jax.custom_jvp(jax.jit(named))
    kernel.defjvp(lambda primals, tangents: pytest.fail(f"JAX differentiated the {name} kernel itself"))
    return kernel


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_derivatives_equal_plain(kind, monkeypatch, key):
    """On a (stood-in) single GPU, with cuDNN's forward and backward stood in for
    by kernels JAX cannot differentiate: a gradient runs both, and forward mode and
    derivatives of gradients (a gradient penalty, a Hessian-vector product,
    ``jax.hessian``) equal the plain path's. On a GPU,
    :func:`test_cudnn_derivatives_on_a_gpu` runs cuDNN itself."""
    from jrnn.kernels import cudnn

    _as_if_on_one_gpu(monkeypatch)

    def forward(config, xs, h0, c0, w, training):
        T, B, I = xs.shape
        reserve_bytes = cudnn._sizes(*config, I, h0.shape[-1], B, T, training)[2]

        def values(*args):  # what cuDNN computes, with a reserve space that is not the reference's zeros
            ys, hy, cy, reserve = cudnn._reference_forward(config[0], reserve_bytes, *args)
            return ys, hy, cy, reserve + 7

        return _opaque(values, "forward")(xs, h0, c0, w)

    def backward(config, *args):
        return _opaque(functools.partial(cudnn._reference_backward, config[0]), "backward")(*args)

    monkeypatch.setattr(cudnn, "_forward", forward)
    monkeypatch.setattr(cudnn, "_backward", backward)
    cell = jrnn.lstm(8) if kind == "lstm" else jrnn.gru(8, reset_after=True)
    _check_derivatives(cell, key, ("auto",), 1e-4)  # "auto" takes "cudnn"'s path here
    loss, primals, _ = scan_loss_problem(cell, key)
    gradient = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3).lower(*primals, "auto").as_text()
    assert "@stood_in_forward" in gradient and "@stood_in_backward" in gradient  # a gradient runs both kernels


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_exports_as_xla(kind, monkeypatch, key):
    """On a (stood-in) single GPU, ``jax.export`` of a gradient through ``"auto"``
    (jrnn's cuDNN binding, custom calls that export refuses) gets the plain-JAX
    references in their place, for CUDA and CPU; the half for this machine runs
    and equals the plain path's values and gradients."""
    _as_if_on_one_gpu(monkeypatch)
    cell = jrnn.lstm(8) if kind == "lstm" else jrnn.gru(8, reset_after=True)
    params = random_params(cell, key, 3, jnp.float32, scale=0.4)
    xs = jax.random.normal(key, (2, 5, 3), jnp.float32)
    loss = lambda impl: lambda p, xs: jnp.sum(jnp.sin(jrnn.scan(cell, p, xs, implementation=impl)[1]))
    for transform, kernel in [(lambda f: jax.value_and_grad(f, argnums=(0, 1)), "@jrnn_cudnn_rnn_backward"),
                              (lambda f: f, "@jrnn_cudnn_rnn_forward")]:  # training, and inference
        auto, plain = jax.jit(transform(loss("auto"))), jax.jit(transform(loss("plain")))
        with jax.default_matmul_precision("highest"):  # float32 products on a GPU too
            assert kernel in auto.trace(params, xs).lower(lowering_platforms=("cuda",)).as_text()
            exported = jax.export.export(auto, platforms=("cpu", "cuda"))(params, xs)
            assert "custom_call" not in exported.mlir_module()
            if importlib.util.find_spec("flatbuffers"):  # Exported.serialize() needs it
                exported = jax.export.deserialize(exported.serialize())
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5),
                         exported.call(params, xs), plain(params, xs))


def _check_derivatives(cell, key, implementations, tol):
    """A gradient through each of ``implementations`` equals the plain path's, and
    so do forward mode and derivatives of that gradient (see ``assert_derivatives_equal``)."""
    loss, primals, k_v = scan_loss_problem(cell, key)
    gradient = lambda impl: jax.grad(loss, argnums=(0, 1, 2))(*primals, impl)
    want = gradient("plain")
    for impl in implementations:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), gradient(impl), want)
        assert_derivatives_equal(loss, primals, k_v, impl, tol)


def test_cudnn_auto_applies_only_where_the_persistent_kernel_does(monkeypatch, key):
    """``implementation="auto"`` takes cuDNN on one GPU for a float32 LSTM or
    reset-after GRU with H ≤ 128 and nothing cuDNN does not do, asking cuDNN
    about this (B, T, I); anything else stays on jrnn's own loops."""
    from jrnn.kernels import cudnn

    asked = _as_if_on_one_gpu(monkeypatch)
    lstm, gru = jrnn.lstm(8), jrnn.gru(8, reset_after=True)
    xs = jnp.ones((2, 5, 3), jnp.float32)

    def applies(cell, xs=xs, dtype=jnp.float32, time_major=False, plain_loop=True):
        params = jax.tree.map(lambda a: a.astype(dtype), cell.init(key, 3))
        carry = cell.initial_carry((xs.shape[1 if time_major else 0],), dtype)
        return cudnn.auto_applies(cell, params, xs.astype(dtype), carry, time_major=time_major,
                                  plain_loop=plain_loop)

    assert applies(lstm) and applies(gru) and asked[-1] == ("gru", cudnn.PERSIST_STATIC_SMALL_H, 3, 8, 2, 5)
    assert applies(lstm, xs=jnp.ones((5, 2, 3)), time_major=True) and asked[-1][4:] == (2, 5)
    assert applies(jrnn.lstm(cudnn.SMALL_H_MAX))
    assert not applies(jrnn.lstm(cudnn.SMALL_H_MAX + 1))
    assert not applies(jrnn.gru(8)) and not applies(jrnn.simple_rnn(8))
    assert not applies(lstm, dtype=jnp.bfloat16) and not applies(lstm, plain_loop=False)
    assert not applies(lstm, xs=jnp.ones((2, 2, 5, 3)))
    monkeypatch.setattr(jax, "device_count", lambda *backend: 2)  # a custom call would not shard with the batch
    assert not applies(lstm)
    _as_if_on_one_gpu(monkeypatch, refuses=True)  # cuDNN refuses its persistent kernel for this problem
    assert not applies(lstm)
    _as_if_on_one_gpu(monkeypatch)
    with cudnn.own_binding_disabled():
        assert not applies(lstm)
    monkeypatch.setattr(cudnn, "available", lambda: False)
    assert not applies(lstm)


def test_scan_auto_lowers_to_cudnn_where_it_applies(monkeypatch, key):
    """On a (stood-in) single GPU, ``jrnn.scan``'s default runs a float32 LSTM
    through jrnn's cuDNN binding, forward and backward, and keeps the fused loop
    where cuDNN does not apply (``seq_lengths``, H > 128, bfloat16)."""
    _as_if_on_one_gpu(monkeypatch)

    def lowered(cell, xs, **options):
        params = jax.tree.map(lambda a: a.astype(xs.dtype), cell.init(key, xs.shape[-1]))
        loss = lambda p, x: jnp.sum(jrnn.scan(cell, p, x, **options)[1])
        return jax.jit(jax.grad(loss, argnums=(0, 1))).trace(params, xs).lower(
            lowering_platforms=("cuda",)).as_text()

    xs = jnp.ones((2, 5, 3), jnp.float32)
    text = lowered(jrnn.lstm(8), xs)
    assert "@jrnn_cudnn_rnn_forward" in text and "@jrnn_cudnn_rnn_backward" in text
    assert "@jrnn_cudnn_rnn_forward" in lowered(jrnn.gru(8, reset_after=True), xs, time_major=True)
    for cell, x, options in [(jrnn.lstm(8), xs, {"seq_lengths": jnp.array([5, 3])}), (jrnn.lstm(136), xs, {}),
                             (jrnn.lstm(8), xs.astype(jnp.bfloat16), {}), (jrnn.lstm(8), xs, {"reverse": True}),
                             (jrnn.lstm(8), xs, {"truncate_every": 2}),
                             (jrnn.lstm(8), xs, {"implementation": "fused"})]:
        assert "jrnn_cudnn" not in lowered(cell, x, **options), options


def test_cudnn_refused_without_gpu(key):
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    cell = jrnn.lstm(4)
    with pytest.raises(ValueError, match="'cudnn' needs a GPU backend"):
        jrnn.scan(cell, cell.init(key, 2), jnp.ones((1, 3, 2)), implementation="cudnn")


def test_gpu_benchmark_quick_runs_anywhere(tmp_path):
    """``benchmarks/gpu.py --quick`` (the script a GPU run uses, on tiny shapes) runs
    its device checks and times both cells here too; a failed check exits 1.
    ``--profile`` adds each contender's kernels to its row and prints them,
    ``--device-time`` its median device time and the ratio to Flax's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu.py"
    out = subprocess.run([sys.executable, script, "--quick", "--profile", "--device-time", "--json",
                          tmp_path / "r.json"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["checks"] and all(c["ok"] for c in result["checks"])
    assert {c["implementation"] for c in result["checks"]} >= {"fused", "parallel", "pallas"}
    timed = {(r["cell"], r["contender"]) for r in result["results"]}
    assert {("lstm", "jrnn fused"), ("lstm", "jrnn fused block-gates"), ("gru", "jrnn fused"),
            ("gru", "jrnn pallas")} <= timed
    assert all(r["fwd_bwd_ms"] > 0 for r in result["results"])
    profiled = {r["contender"] for r in result["results"] if r["profile"] and r["profile"]["launches"] > 0}
    assert profiled >= {r["contender"] for r in result["results"] if r["contender"].startswith(("jrnn", "flax"))}
    assert "# profile lstm 2, 16, 20 float32 jrnn fused fwd+bwd: " in out.stdout
    flax = next(r for r in result["results"] if r["cell"] == "lstm" and r["contender"].startswith("flax"))
    fused = next(r for r in result["results"] if r["cell"] == "lstm" and r["contender"] == "jrnn fused")
    assert fused["fwd_bwd_device_ms"] > 0 and flax["device_vs_flax"] == 1
    assert fused["device_vs_flax"] == pytest.approx(fused["fwd_bwd_device_ms"] / flax["fwd_bwd_device_ms"])
    assert "# device time lstm 2, 16, 20 float32 jrnn fused: fwd+bwd " in out.stdout


def test_gpu_benchmark_reports_a_check_that_hangs(tmp_path):
    """A device check that takes longer than ``--check-timeout`` (here: any) is
    killed with its child process and reported as timed out (or as a child that
    exited, where printing its traceback crashed it), the checks after the checks'
    budget as skipped, and the script exits 1; nothing waits forever."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu.py"
    # The budget counts the first child's start (jax's import, about 1 s on the 2-core VM; a 1 s budget was
    # sometimes spent before the first check began), and six checks, each 0.2 s plus a new child, outlast it.
    out = subprocess.run([sys.executable, script, "--quick", "--check-timeout", "0.2", "--checks-budget-s", "3",
                          "--budget-s", "0", "--json", tmp_path / "r.json"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    checks = json.loads((tmp_path / "r.json").read_text())["checks"]
    stopped = ("timed out", "child exited")  # a child can crash while printing its traceback
    assert checks[0]["error"].startswith(stopped) and not checks[0]["ok"]
    assert checks[-1]["error"].startswith("skipped")
    assert all(c["error"].startswith((*stopped, "skipped")) for c in checks), checks


def test_gpu_benchmark_checks_stop_at_their_budget_within_one_child():
    """Checks that pass do not run on past ``--checks-budget-s`` in the child that
    runs them (on an H100, 22 checks once took 280 s of a 75 s budget):
    here the budget is spent while the child starts, so every check is skipped."""
    gpu_benchmark = _benchmark("gpu")
    rows = gpu_benchmark.check_in_children(False, 45.0, 0.05, 1000)
    assert len(rows) == len(gpu_benchmark.check_cases(False)) > 1
    assert all(not r["ok"] and r["error"].startswith("skipped") for r in rows), rows


def test_gpu_benchmark_checks_only_the_contenders_asked_for():
    """With ``--only``, the device checks are those of the jrnn contenders it keeps
    (on an H100, checks of contenders left out took 190 s of a 480 s lease), and
    the child processes that run them get the same list."""
    gpu_benchmark = _benchmark("gpu")
    on_gpu = {c[1] + gpu_benchmark.variant_label(c[3] if len(c) > 3 else None)
              for c in gpu_benchmark.check_cases(True, ["fused", "chunk", "flax"])}
    assert on_gpu == {"fused", "pallas chunk=128"}
    assert len(gpu_benchmark.check_cases(True)) > len(gpu_benchmark.check_cases(True, ["pallas"])) > 4
    rows = gpu_benchmark.check_in_children(False, 45.0, 120.0, 1000, ["parallel"])
    assert [(r["cell"], r["implementation"], r["ok"]) for r in rows] == [("min_gru H=64 float32", "parallel", True)]


def test_gpu_benchmark_checks_the_binding_for_contenders_named_exactly():
    """``--only "=jrnn cudnn algorithm=3,=jrnn auto"`` (gpu_session.sh's batch-1 step) keeps the
    checks of jrnn's own binding at H <= 128 that gate those contenders; on an H200
    (2026-11-28) it kept none, so neither was timed."""
    gpu_benchmark = _benchmark("gpu")
    for only in (["=jrnn cudnn algorithm=3"], ["=jrnn auto"], ["=jrnn cudnn algorithm=3", "=jrnn auto", "torch"]):
        kept = {(c[0].hidden_size, c[1], c[3]) for c in gpu_benchmark.check_cases(True, only)}
        assert kept == {(h, "cudnn", v) for h in (64, 128) for v in (None, gpu_benchmark.TF32)}, only
    persistent = {c[3] for c in gpu_benchmark.check_cases(True, ["=jrnn cudnn algorithm=1"])}
    assert persistent == {"algorithm=1"}


def _benchmark(name):
    """``benchmarks/<name>.py`` as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_the_targets_first():
    """A short device lease must measure the issue's targets before anything else:
    the LSTM at (16, 768, 1024), then at (1, 128, 1000), float32 before bfloat16;
    then the GRU at those shapes, then the other shapes."""
    gpu_benchmark = _benchmark("gpu")
    cases = gpu_benchmark.ranked_cases(["gru", "lstm"], gpu_benchmark.SHAPES)
    assert len(cases) == 16
    assert [(kind, shape) for kind, shape, _ in cases[:4]] == [
        ("lstm", (16, 768, 1024)), ("lstm", (16, 768, 1024)), ("lstm", (1, 128, 1000)), ("lstm", (1, 128, 1000))]
    assert [jnp.dtype(dtype).name for _, _, dtype in cases[:2]] == ["float32", "bfloat16"]
    assert [(kind, shape) for kind, shape, _ in cases[4:8:2]] == [("gru", (16, 768, 1024)), ("gru", (1, 128, 1000))]
    assert {shape for _, shape, _ in cases[8:]} == {(64, 512, 100), (16, 256, 1000)}
    assert [kind for kind, _, _ in cases[8:]] == ["lstm"] * 4 + ["gru"] * 4
    # --dtypes float32: the same order, one dtype
    only_f32 = gpu_benchmark.ranked_cases(["gru", "lstm"], gpu_benchmark.SHAPES, [jnp.dtype("float32")])
    assert only_f32 == [case for case in cases if jnp.dtype(case[2]) == jnp.float32]


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="shows what is tried by its failing without a GPU")
def test_gpu_benchmark_times_own_cudnn_only_where_its_checks_passed():
    """On a GPU, jrnn's own cuDNN binding is timed with an algorithm only where
    the device checks at that algorithm's math passed (its ``OWN_CUDNN`` key is
    in ``checked``); otherwise it is reported, not compiled. (Here, without a
    GPU, what is compiled fails at once, which shows it was tried.)"""
    gpu_benchmark = _benchmark("gpu")
    tried = lambda failures: sorted(f.split(" jrnn ")[1].split(":")[0] for f in failures if "not timed" not in f)
    for hidden_size, checked, want in [
            (16, set(), ["cudnn jax.experimental.rnn"]),
            (16, {gpu_benchmark.OWN_CUDNN["tf32"]}, ["cudnn algorithm=3", "cudnn jax.experimental.rnn"]),
            (256, {gpu_benchmark.OWN_CUDNN["algorithm=2"]}, ["cudnn algorithm=2", "cudnn jax.experimental.rnn"])]:
        failures = []
        fns = gpu_benchmark.contenders("lstm", 2, hidden_size, 5, jnp.float32, True, failures, checked=checked,
                                       only=["cudnn"])
        assert not fns and tried(failures) == want
        assert all("needs a GPU backend" in f for f in failures if "not timed" not in f)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="shows what is tried by its failing without a GPU")
def test_gpu_benchmark_cudnn_check_with_a_forced_algorithm(monkeypatch):
    """A device check of jrnn's own binding with a forced algorithm names the
    binding and algorithm, then runs the paths under that algorithm (entering
    ``forced_algorithm`` a second time: a context made by ``contextmanager``
    cannot be reused). Without a GPU the cuDNN path itself then fails, and says why."""
    from jrnn.kernels import cudnn

    gpu_benchmark = _benchmark("gpu")
    monkeypatch.setattr(cudnn, "own_binding_problem", lambda: None)
    seen = []
    monkeypatch.setattr(cudnn, "plan", lambda kind, tf32, *shape: seen.append(cudnn._forced_algorithm) or
                        (kind, cudnn._forced_algorithm, tf32))
    row = gpu_benchmark.run_check(jrnn.lstm(16), "cudnn", jnp.float32, "algorithm=2")
    assert row["implementation"] == "cudnn algorithm=2" and row["binding"] == "jrnn, algorithm 2"
    assert seen == [cudnn.PERSIST_DYNAMIC] and not row["ok"]
    assert "needs a GPU backend" in row["error"]


def test_gpu_benchmark_times_only_the_contenders_asked_for():
    """``--only`` keeps a short device lease to the contenders named (by parts of
    their names), so the others are not even compiled."""
    failures = []
    fns = _benchmark("gpu").contenders("lstm", 2, 16, 5, jnp.float32, False, failures,
                                       only=["fused unroll", "flax"])
    assert set(fns) == {"jrnn fused unroll=8", "jrnn fused unroll=32", "flax OptimizedLSTMCell"} and not failures


def test_gpu_benchmark_times_pallas_variants_where_they_change_the_kernel():
    """"pallas chunk=128" (the state in one chunk of 128 columns) only at H = 128,
    and a Pallas contender only where its own device check passed."""
    gpu_benchmark = _benchmark("gpu")
    assert [H for H in (16, 64, 96, 128, 192, 256, 768) if gpu_benchmark.variant_applies("chunk=128", H)] == [128]
    failures = []  # no check passed: neither kernel is compiled, each is reported
    fns = gpu_benchmark.contenders("lstm", 2, 128, 5, jnp.float32, False, failures, checked=set(), only=["pallas"])
    assert not fns and [f.split(": ")[0] for f in failures] == [
        "lstm 2, 128, 5 float32 jrnn pallas", "lstm 2, 128, 5 float32 jrnn pallas chunk=128"]
    failures = []  # the variant's check passed, the default's did not (and --only left it out: no report)
    fns = gpu_benchmark.contenders("lstm", 2, 128, 5, jnp.float32, False, failures,
                                   checked={"lstm H=128 chunk=128"}, only=["chunk"])
    assert set(fns) == {"jrnn pallas chunk=128"} and not failures


def test_step_kernels_counts_the_operations_of_each_time_loop(tmp_path):
    """``benchmarks/step_kernels.py`` finds every time loop of the compiled forward
    and forward+backward programs, with XLA's trip count (so the steps per
    iteration follow from ``unroll``) and the operations of the loop body."""
    import json

    out = tmp_path / "rows.json"
    assert _benchmark("step_kernels").main(["--quick", "--cells", "lstm", "--implementations", "fused", "--unroll", "4",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    per_program = {(r["dtype"], r["program"]): 0 for r in rows}
    for r in rows:
        per_program[r["dtype"], r["program"]] += 1
    # the forward is one loop; forward+backward a forward and a reverse loop
    assert per_program == {("float32", "forward"): 1, ("float32", "forward+backward"): 2,
                           ("bfloat16", "forward"): 1, ("bfloat16", "forward+backward"): 2}
    for r in rows:
        assert r["trip_count"] == 24 // 4 and r["steps_per_trip"] == 4
        assert r["launches"] >= 4 and r["ops_per_step"] == r["launches"] / 4
        assert not {"parameter", "tuple", "get-tuple-element"} & set(r["ops"])


def test_step_kernels_target_names_its_spec_and_needs_the_cuda_plugin():
    """``step_kernels.py --target`` compiles for a GPU described by a target config
    (no GPU needed); an unknown name lists the known ones, and without jax's CUDA
    plugin (as in CI) it says what to install instead of a traceback."""
    import importlib.util

    step_kernels = _benchmark("step_kernels")
    with pytest.raises(SystemExit, match=r"--target: expected one of \['h100_sxm'\].*got 'h99'"):
        step_kernels.main(["--quick", "--target", "h99"])
    if importlib.util.find_spec("jax_plugins") and any(
            importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13)):
        pytest.skip("jax's CUDA plugin is installed: the deviceless compile is checked by hand (RESULTS.md)")
    platforms = jax.config.jax_platforms
    try:
        with pytest.raises(SystemExit, match=r"--target: needs jax's CUDA plugin"):
            step_kernels.main(["--quick", "--target", "h100_sxm"])
    finally:
        jax.config.update("jax_platforms", platforms)  # --target sets "cpu"
