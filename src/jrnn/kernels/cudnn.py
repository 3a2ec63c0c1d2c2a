"""cuDNN's LSTM and GRU on a GPU, as an option (``implementation="cudnn"``), float32.

Two bindings compute it:

- **jrnn's own** (``cudnn_rnn.cc``, XLA FFI calls). It asks cuDNN for the
  algorithm PyTorch picks: ``PERSIST_STATIC_SMALL_H``, the persistent kernel
  that keeps the recurrent weights in registers across time steps, where
  H ≤ 128 (:func:`algorithm`), the standard one elsewhere. LSTM and
  reset-after GRU; sequences of full length (no ``seq_lengths``). On its first
  use on a GPU it is compiled (a few seconds, with the system's C++ compiler,
  against the headers of jax's pip CUDA wheels ``nvidia-cudnn-cu12``,
  ``nvidia-cuda-runtime-cu12`` and ``nvidia-cuda-nvcc-cu12``) into
  ``$XDG_CACHE_HOME/jrnn`` (``~/.cache/jrnn``), unless a ``_cudnn_rnn.so``
  built ahead lies beside this file and loads. ``JRNN_CUDNN_OWN=0`` in the environment
  switches it off, and ``with jrnn.kernels.cudnn.own_binding_disabled():``
  does so for what is traced inside it. Checked on an H200 (2026-11-27);
  before its first use :func:`own_binding_available` runs a small forward
  through it and ``jax.experimental.rnn`` and keeps it only where they agree.
  ``implementation="auto"`` takes it where :func:`auto_applies`.
- **jax.experimental.rnn** (cuDNN's standard algorithm, a GEMM per step):
  the LSTM, with or without ``seq_lengths``, where jrnn's own is missing.

Derivatives of gradients through jrnn's own binding (``jax.hessian``, a
gradient penalty) work: JAX differentiates its forward and backward calls as
plain JAX (:func:`unpack_weights` and jrnn's cell steps). Through
``jax.experimental.rnn`` only first derivatives exist.

cuDNN stores PyTorch's layout (``W_ih (G·H, I)``, ``W_hh (G·H, H)``, two
biases; LSTM gates i, f, g, o; GRU r, z, n with h = (1 − z) ⊙ n + z ⊙ h)
packed in one flat vector: jrnn's ``w_x``/``w_h`` are the transposes, its
LSTM ``b`` goes to ``b_ih`` with ``b_hh = 0``, and its GRU update gate is
cuDNN's negated (σ(−a) = 1 − σ(a)), ``b_hn`` the recurrent bias of the
candidate. Exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jrnn.cells import GRUCell, GRUParams, LSTMCell, LSTMParams, LSTMState, gru, lstm
from jrnn.kernels._custom_vjp import custom_vjp
from jrnn.kernels._with_reference import with_reference

# cudnnRNNMode_t and cudnnRNNAlgo_t (cudnn_adv.h)
_MODES = {"lstm": 2, "gru": 3}
STANDARD, PERSIST_STATIC, PERSIST_DYNAMIC, PERSIST_STATIC_SMALL_H = 0, 1, 2, 3
SMALL_H_MAX = 128  # PyTorch's bound for LSTM and GRU backward (forward: 192); one algorithm serves both here


def available() -> bool:
    """Whether the default backend is a GPU (where cuDNN may run)."""
    return jax.default_backend() == "gpu"


def algorithm(hidden_size: int) -> int:
    """The cuDNN algorithm jrnn's own binding asks for: the persistent small-H
    kernel where H ≤ 128 (as PyTorch does), the standard one otherwise."""
    return PERSIST_STATIC_SMALL_H if hidden_size <= SMALL_H_MAX else STANDARD


def own_kind(cell) -> str | None:
    """``"lstm"`` or ``"gru"`` where jrnn's own binding computes ``cell`` (an LSTM,
    a reset-after GRU), else ``None``."""
    if isinstance(cell, LSTMCell):
        return "lstm"
    return "gru" if isinstance(cell, GRUCell) and cell.reset_after else None


def _gru_blocks(array):
    """jrnn GRU blocks (z, r, n) -> cuDNN's (r, −z, n) along the last axis."""
    z, r, n = jnp.split(array, 3, axis=-1)
    return jnp.concatenate([r, -z, n], axis=-1)


def _jrnn_gru_blocks(array):
    """cuDNN's GRU blocks (r, −z, n) -> jrnn's (z, r, n) along the last axis."""
    r, minus_z, n = jnp.split(array, 3, axis=-1)
    return jnp.concatenate([-minus_z, r, n], axis=-1)


def pack_weights(params) -> jax.Array:
    """jrnn LSTM or reset-after GRU params -> cuDNN's flat weight vector (one layer, one direction)."""
    if isinstance(params, GRUParams):
        H = params.w_h.shape[0]
        w_x, w_h, b = (_gru_blocks(a) for a in params[:3])
        b_hh = jnp.concatenate([jnp.zeros(2 * H, b.dtype), params.b_hn])
    else:
        w_x, w_h, b = params
        b_hh = jnp.zeros_like(b)
    return jnp.concatenate([w_x.T.ravel(), w_h.T.ravel(), b, b_hh])


# ---- jrnn's own binding (cudnn_rnn.cc) -------------------------------------------------


_SOURCE = Path(__file__).with_name("cudnn_rnn.cc")


def _nvidia_dir(name: str) -> Path | None:
    """A directory of jax's pip CUDA wheels (``nvidia/cudnn``, ...), or ``None``."""
    try:
        spec = importlib.util.find_spec(f"nvidia.{name}")
    except ModuleNotFoundError:
        return None
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def build_command(output: Path) -> list[str] | None:
    """The compiler command that builds the binding into ``output``, or ``None``
    without a C++ compiler or the CUDA wheels' headers."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    dirs = [_nvidia_dir(name) for name in ("cudnn", "cuda_runtime", "cuda_nvcc")]
    if compiler is None or not all(d and (d / "include").is_dir() for d in dirs):
        return None
    cudnn_lib = dirs[0] / "lib"
    return [compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-Wno-attributes", "-Wno-return-type",
            f"-I{jax.ffi.include_dir()}", *(f"-I{d / 'include'}" for d in dirs), str(_SOURCE), "-o", str(output),
            f"-L{cudnn_lib}", "-l:libcudnn.so.9", f"-Wl,-rpath,{cudnn_lib}", "-Wl,--no-undefined"]


def _built_ahead() -> Path | None:
    """A ``_cudnn_rnn.so`` beside this file (built on another machine, say), or ``None``."""
    ahead = Path(__file__).with_name("_cudnn_rnn.so")
    return ahead if ahead.exists() else None


def _library_path() -> Path | None:
    """The library built for this source and jaxlib in the cache (building it
    there on first use), or ``None`` without a compiler or the headers."""
    key = hashlib.sha256(_SOURCE.read_bytes() + jaxlib.version.__version__.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "jrnn")
    path = cache / f"_cudnn_rnn-{key}.so"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        command = build_command(Path(folder, path.name))
        if command is None:
            return None
        built = subprocess.run(command, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE.name} failed: {built.stderr[-500:]}")
        os.replace(Path(folder, path.name), path)  # atomic: a concurrent build or reader sees all or nothing
    return path


@functools.cache
def _own_library():
    """The loaded library with its FFI targets registered (one built ahead where
    it loads, else one built here), or ``None`` where there is none."""
    # cuDNN first, globally: jax's pip wheel by its path, else the system's by name
    # (where neither loads, the library may still find the cuDNN that jax loaded)
    wheel = _nvidia_dir("cudnn")
    wheel_lib = wheel / "lib" / "libcudnn.so.9" if wheel else None
    with contextlib.suppress(OSError):
        ctypes.CDLL(str(wheel_lib) if wheel_lib and wheel_lib.exists() else "libcudnn.so.9", mode=ctypes.RTLD_GLOBAL)
    library = None
    ahead = _built_ahead()
    if ahead is not None:
        with contextlib.suppress(OSError):  # e.g. built against a newer C++ runtime than this machine's
            library = ctypes.CDLL(str(ahead))
    if library is None:
        path = _library_path()
        if path is None:
            return None
        library = ctypes.CDLL(str(path))
    library.jrnn_cudnn_rnn_sizes.restype = ctypes.c_int
    for target, symbol in (("jrnn_cudnn_rnn_forward", "JrnnCudnnRnnForward"),
                           ("jrnn_cudnn_rnn_backward", "JrnnCudnnRnnBackward")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="CUDA")
    return library


_own_disabled = False
_forced_algorithm = None


@contextlib.contextmanager
def own_binding_disabled():
    """Trace with ``jax.experimental.rnn`` instead of jrnn's own binding (for comparisons)."""
    global _own_disabled
    before, _own_disabled = _own_disabled, True
    try:
        yield
    finally:
        _own_disabled = before


@contextlib.contextmanager
def forced_algorithm(algo: int):
    """Trace jrnn's own binding with cuDNN's algorithm ``algo`` (``STANDARD``,
    ``PERSIST_STATIC``, ``PERSIST_DYNAMIC``, whose kernel cuDNN compiles on the
    first call of each problem, or ``PERSIST_STATIC_SMALL_H``) instead of
    :func:`algorithm`'s choice, and without its fallback: where cuDNN refuses
    it, the call fails (for comparisons)."""
    global _forced_algorithm
    if algo not in (STANDARD, PERSIST_STATIC, PERSIST_DYNAMIC, PERSIST_STATIC_SMALL_H):
        raise ValueError(f"algo: expected one of {STANDARD}, {PERSIST_STATIC}, {PERSIST_DYNAMIC}, "
                         f"{PERSIST_STATIC_SMALL_H}, got {algo!r}")
    before, _forced_algorithm = _forced_algorithm, algo
    try:
        yield
    finally:
        _forced_algorithm = before


def own_binding_available() -> bool:
    """Whether jrnn's own binding computes ``implementation="cudnn"`` here: built,
    loaded, agreeing with ``jax.experimental.rnn`` (:func:`own_binding_problem`), and not disabled."""
    return not _own_disabled and own_binding_problem() is None


def own_binding_problem() -> str | None:
    """Why jrnn's own binding is not used here (``None``: it is)."""
    if os.environ.get("JRNN_CUDNN_OWN", "1") == "0":
        return "switched off by JRNN_CUDNN_OWN=0"
    if not available():
        return f"no GPU backend ({jax.default_backend()!r})"
    return _own_binding_check()


@functools.cache
def _own_binding_check() -> str | None:
    """``None`` where jrnn's own binding is built, loads, and agrees with
    ``jax.experimental.rnn`` on a small LSTM forward on this GPU (both with
    cuDNN's standard algorithm: this checks the binding, not the algorithm);
    else what went wrong."""
    try:
        if _own_library() is None:
            return ("not built: no C++ compiler, or not the headers of jax's pip CUDA wheels "
                    "(nvidia-cudnn-cu12, nvidia-cuda-runtime-cu12, nvidia-cuda-nvcc-cu12)")
        # eagerly, also when first asked while a jitted function is being traced
        with jax.ensure_compile_time_eval(), jax.default_matmul_precision("highest"):
            k = jax.random.split(jax.random.key(0), 4)
            B, T, I, H = 2, 5, 8, 16
            xs = jax.random.normal(k[0], (B, T, I), jnp.float32)
            h0, c0 = (0.5 * jax.random.normal(kk, (B, H), jnp.float32) for kk in k[1:3])
            w = 0.3 * jax.random.normal(k[3], (4 * H * (I + H + 2),), jnp.float32)
            ys, hy, cy = _own_rnn(("lstm", STANDARD, False), jnp.swapaxes(xs, 0, 1), h0[None], c0[None], w)
            got = (jnp.swapaxes(ys, 0, 1), hy[0], cy[0])
            want = _experimental_lstm(xs, h0, c0, w, None)
            errors = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, want)]
            if not all(bool(jnp.allclose(a, b, rtol=1e-4, atol=1e-5)) for a, b in zip(got, want)):
                return f"differs from jax.experimental.rnn (largest differences of ys, h, c: {errors})"
    except Exception as error:  # noqa: BLE001 - any failure means: use jax.experimental.rnn
        return f"{type(error).__name__}: {str(error)[:300]}"
    return None


@functools.cache
def _sizes(kind, algo, tf32, input_size, hidden_size, batch, steps, training):
    """Bytes of cuDNN's weight space, workspace and reserve space for this problem."""
    sizes, message = (ctypes.c_size_t * 3)(), ctypes.c_char_p()
    status = _own_library().jrnn_cudnn_rnn_sizes(_MODES[kind], algo, int(tf32), input_size, hidden_size, batch,
                                                 steps, int(training), sizes, ctypes.byref(message))
    if status:
        raise RuntimeError(f"jrnn's cuDNN binding: {message.value.decode()} (status {status})")
    return tuple(sizes)


def _attrs(config):
    kind, algo, tf32 = config
    return {"mode": np.int32(_MODES[kind]), "algo": np.int32(algo), "tf32": np.bool_(tf32)}


def _forward(config, xs, h0, c0, w, training):
    T, B, I = xs.shape
    H = h0.shape[-1]
    weight_bytes, work, reserve = _sizes(*config, I, H, B, T, training)
    if weight_bytes != 4 * w.size:
        raise RuntimeError(f"jrnn's cuDNN binding: cuDNN's weight space is {weight_bytes} bytes, "
                           f"jrnn packed {4 * w.size}")
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    u8 = lambda size: jax.ShapeDtypeStruct((size,), jnp.uint8)
    lengths = jnp.full((B,), T, jnp.int32)
    ys, hy, cy, _, reserved = jax.ffi.ffi_call(
        "jrnn_cudnn_rnn_forward", [f32((T, B, H)), f32((1, B, H)), f32((1, B, H)), u8(work), u8(reserve)],
        vmap_method="sequential")(xs, h0, c0, w, lengths, training=np.bool_(training), **_attrs(config))
    return ys, hy, cy, reserved


@functools.partial(custom_vjp, nondiff_argnums=(0,))
def _own_rnn(config, xs, h0, c0, w):
    """``config = (kind, algorithm, tf32)``; ``xs (T, B, I)``, ``h0, c0 (1, B, H)``, ``w`` the flat
    weights -> ``ys (T, B, H), hy, cy``. cuDNN's forward and backward (data and weights), which JAX
    differentiates, and ``jax.export`` lowers, as :func:`_reference_forward` and :func:`_reference_backward`
    (:mod:`jrnn.kernels._with_reference`)."""
    kernel = lambda *args: _forward(config, *args, training=False)[:3]
    return with_reference(kernel, functools.partial(_reference_outputs, config[0]))(xs, h0, c0, w)


def _own_rnn_fwd(config, xs, h0, c0, w):
    T, B, I = xs.shape
    reserve_bytes = _sizes(*config, I, h0.shape[-1], B, T, True)[2]
    kernel = lambda *args: _forward(config, *args, training=True)
    reference = functools.partial(_reference_forward, config[0], reserve_bytes)
    ys, hy, cy, reserve = with_reference(kernel, reference)(xs, h0, c0, w)
    # Where the forward is differentiated, its values (and this reserve, zeros) are the
    # reference's; the backward then is too, as it takes the same xs, h0, c0 and w.
    return (ys, hy, cy), (xs, h0, c0, w, ys, reserve)


def _backward(config, xs, h0, c0, w, ys, reserve, d_ys, d_hy, d_cy):
    """cuDNN's backward data and weights: ``(dx, dh0, dc0, dw)``."""
    T, B, I = xs.shape
    _, work, _ = _sizes(*config, I, h0.shape[-1], B, T, True)
    like = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    dx, dh0, dc0, dw, _, _ = jax.ffi.ffi_call(
        "jrnn_cudnn_rnn_backward",
        [like(xs), like(h0), like(c0), like(w), jax.ShapeDtypeStruct((work,), jnp.uint8), like(reserve)],
        vmap_method="sequential",
        input_output_aliases={10: 3, 9: 5},  # cuDNN adds the weight gradients into zeros, and writes the reserve
    )(xs, h0, c0, w, jnp.full((B,), T, jnp.int32), ys, d_ys, d_hy, d_cy, reserve, jnp.zeros_like(w),
      **_attrs(config))
    if config[0] == "gru":  # cuDNN leaves a GRU's dc0 unwritten
        dc0 = jnp.zeros_like(c0)
    return dx, dh0, dc0, dw


def _reference_backward(kind, xs, h0, c0, w, ys, reserve, d_ys, d_hy, d_cy):
    """:func:`_backward` in plain JAX: the VJP of :func:`_reference_outputs` (which
    needs neither ``ys`` nor cuDNN's reserve space)."""
    return jax.vjp(functools.partial(_reference_outputs, kind), xs, h0, c0, w)[1]((d_ys, d_hy, d_cy))


def _own_rnn_bwd(config, residuals, cotangents):
    kernel = functools.partial(_backward, config)
    return with_reference(kernel, functools.partial(_reference_backward, config[0]))(*residuals, *cotangents)


def unpack_weights(kind, w, input_size, hidden_size):
    """cuDNN's flat weight vector (one layer, one direction) -> jrnn params that
    compute what cuDNN computes with it: the inverse of :func:`pack_weights`, and
    where ``b_hh`` is not zero (as :func:`pack_weights` leaves it), the recurrent
    biases that sit outside the reset gate added to ``b``."""
    G, H = (4 if kind == "lstm" else 3), hidden_size
    sizes = np.cumsum([G * H * input_size, G * H * H, G * H])
    w_ih, w_hh, b_ih, b_hh = jnp.split(w, sizes)
    w_x, w_h = w_ih.reshape(G * H, input_size).T, w_hh.reshape(G * H, H).T
    if kind == "lstm":
        return LSTMParams(w_x, w_h, b_ih + b_hh)
    b_hh_rz = jnp.concatenate([b_hh[: 2 * H], jnp.zeros_like(b_hh[2 * H :])])
    return GRUParams(*(_jrnn_gru_blocks(a) for a in (w_x, w_h, b_ih + b_hh_rz)), b_hh[2 * H :])


def _reference_forward(kind, reserve_bytes, xs, h0, c0, w):
    """:func:`_forward` in plain JAX: jrnn's cell steps with :func:`unpack_weights`'
    params; ``cy`` zeros for a GRU, the reserve space ``reserve_bytes`` zeros."""
    I, H = xs.shape[-1], h0.shape[-1]
    params = unpack_weights(kind, w, I, H)
    cell = lstm(H) if kind == "lstm" else gru(H, reset_after=True)
    carry = LSTMState(h0[0], c0[0]) if kind == "lstm" else h0[0]
    final, ys = jax.lax.scan(lambda carry, x: cell.step(params, carry, x), carry, xs)
    hy, cy = (final.h, final.c) if kind == "lstm" else (final, jnp.zeros_like(c0[0]))
    return ys, hy[None], cy[None], jnp.zeros((reserve_bytes,), jnp.uint8)


def _reference_outputs(kind, xs, h0, c0, w):
    """:func:`_reference_forward`'s ``ys, hy, cy`` (what inference returns)."""
    return _reference_forward(kind, 0, xs, h0, c0, w)[:3]


_own_rnn.defvjp(_own_rnn_fwd, _own_rnn_bwd)


def plan(kind, tf32, input_size, hidden_size, batch, steps):
    """``(kind, algorithm, tf32)`` for :func:`_own_rnn` (``kind`` "lstm" or "gru";
    ``tf32``: cuDNN may use TF32 products): :func:`algorithm`'s choice, or the
    standard algorithm where cuDNN refuses the persistent one for this problem;
    inside :func:`forced_algorithm`, the algorithm forced. Needs the binding (a GPU)."""
    if _forced_algorithm is not None:
        return kind, _forced_algorithm, tf32
    algo = algorithm(hidden_size)
    if algo != STANDARD:
        try:
            _sizes(kind, algo, tf32, input_size, hidden_size, batch, steps, True)
        except RuntimeError:
            algo = STANDARD
    return kind, algo, tf32


def _tf32() -> bool:
    """Whether cuDNN may use TF32 products: as XLA's float32 dots do, unless the
    default matmul precision asks for float32 ("highest" / "float32")."""
    return str(jax.config.jax_default_matmul_precision).lower() not in ("highest", "float32", "f32_f32_f32")


def auto_applies(cell, params, xs, carry, *, time_major: bool, plain_loop: bool) -> bool:
    """Whether ``implementation="auto"`` runs this problem on cuDNN's persistent
    small-H kernel (as Keras's LSTM/GRU layers take cuDNN where they can): on a
    single GPU, with jrnn's own binding working, for an LSTM or reset-after GRU
    with H ≤ 128 that cuDNN accepts at this (B, T, I), float32 inputs, params and
    carry, one batch axis, and none of what cuDNN does not do (``plain_loop``
    false: ``seq_lengths``, ``reverse``, ``resets``, recurrent dropout or segments).
    With several devices a custom call would not shard with the batch: jrnn's fused
    loop runs there. ``xs``: ``(B, T, I)``, or ``(T, B, I)`` with ``time_major``."""
    if not (plain_loop and xs.ndim == 3 and available() and jax.device_count() == 1):
        return False
    kind = own_kind(cell)
    if kind is None or cell.hidden_size > SMALL_H_MAX:
        return False
    leaves = (xs, *jax.tree.leaves(params), *jax.tree.leaves(carry))
    if any(jnp.dtype(leaf.dtype) != jnp.float32 for leaf in leaves):
        return False
    if not own_binding_available():
        return False
    steps, batch, inputs = xs.shape if time_major else (xs.shape[1], xs.shape[0], xs.shape[2])
    # the persistent kernel, unless cuDNN refuses it for this problem (plan then falls back)
    return plan(kind, _tf32(), inputs, cell.hidden_size, batch, steps)[1] == PERSIST_STATIC_SMALL_H


# ---- jax.experimental.rnn ------------------------------------------------------------


def _experimental_lstm(xs, h0, c0, w, seq_lengths):
    from jax.experimental import rnn

    B, T, I = xs.shape
    H = h0.shape[-1]
    lengths = jnp.full((B,), T, jnp.int32) if seq_lengths is None else seq_lengths.astype(jnp.int32)
    y, h_n, c_n = rnn.lstm(xs, h0[None], c0[None], w, lengths, input_size=I, hidden_size=H, num_layers=1,
                           dropout=0.0, bidirectional=False, precision=jax.lax.Precision.HIGHEST)
    return y, h_n[0], c_n[0]


def cudnn_scan(cell, params, xs, carry, *, seq_lengths=None):
    """LSTM or reset-after GRU over batch-major ``xs (B, T, I)`` with cuDNN;
    returns ``(final carry, ys (B, T, H))``. jrnn's own binding where it is
    available and every sequence has full length, else ``jax.experimental.rnn`` (LSTM)."""
    own = seq_lengths is None and own_binding_available()
    kind = own_kind(cell)
    is_gru = kind == "gru"
    if not (kind == "lstm" or (is_gru and own)):
        supported = ("jrnn.lstm cells and jrnn.gru(reset_after=True) cells without seq_lengths"
                     if own_binding_available()
                     else "jrnn.lstm cells only (jrnn's own cuDNN binding is not built or not working here)")
        raise ValueError(f"implementation: 'cudnn' supports {supported}, got {cell!r}")
    w = pack_weights(params)
    if own:
        B, T, I = xs.shape
        config = plan(kind, _tf32(), I, cell.hidden_size, B, T)
        h0 = carry if is_gru else carry.h
        c0 = jnp.zeros_like(h0) if is_gru else carry.c
        ys, hy, cy = _own_rnn(config, jnp.swapaxes(xs, 0, 1), h0[None], c0[None], w)
        return (hy[0] if is_gru else LSTMState(hy[0], cy[0])), jnp.swapaxes(ys, 0, 1)
    y, h_n, c_n = _experimental_lstm(xs, carry.h, carry.c, w, seq_lengths)
    if seq_lengths is None:
        return LSTMState(h_n, c_n), y
    T = xs.shape[1]
    lengths = seq_lengths.astype(jnp.int32)
    mask = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    empty = (lengths == 0)[:, None]  # jrnn's contract: length 0 returns the initial carry
    final = LSTMState(jnp.where(empty, carry.h, h_n), jnp.where(empty, carry.c, c_n))
    return final, jnp.where(mask, y, jnp.zeros_like(y))
