"""Native CPU time loops: the fused path's loops as XLA FFI calls (``cpu_rnn.cc``).

One call runs a whole sequence; each step is one GEMM (two for the
reset-before GRU) against recurrent weights packed once per call, plus one
vectorised pass of gate math, instead of
XLA:CPU's while loop, whose per-step product and gate fusions are slower
(see ``benchmarks/RESULTS.md``). Same inputs, outputs and residuals as the
loops in :mod:`jrnn.kernels.fused`, which picks these on CPU for float32
LSTM, GRU (both reset placements) and SimpleRNN cells and keeps its own loops
everywhere else (GPU, TPU, other dtypes).

The extension is compiled when jrnn is installed (``pip install .``); without
a C++ compiler the install still succeeds and :func:`available` is ``False``.
``JRNN_NATIVE=0`` in the environment switches the native loops off, and
``with jrnn.kernels.native.disabled():`` does so for what is traced inside it;
``JRNN_NATIVE_THREADS=n`` caps the threads a call splits the batch over
(default: the CPUs the process may use; small work runs on one thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._varying import vary_like
from jrnn.cells import GRUCell, LSTMCell, SimpleRNNCell

_SYMBOLS = {
    "jrnn_lstm_forward": "JrnnLstmForward",
    "jrnn_lstm_backward": "JrnnLstmBackward",
    "jrnn_gru_forward": "JrnnGruForward",
    "jrnn_gru_backward": "JrnnGruBackward",
    "jrnn_gru_before_forward": "JrnnGruBeforeForward",
    "jrnn_gru_before_backward": "JrnnGruBeforeBackward",
    "jrnn_rnn_forward": "JrnnRnnForward",
    "jrnn_rnn_backward": "JrnnRnnBackward",
}


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_cpu_rnn{suffix}"
        if path.exists():
            return path
    return None


_disabled = False


@contextlib.contextmanager
def disabled():
    """Trace with the XLA loops instead of the native ones (for comparisons and tests)."""
    global _disabled
    before, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = before


@functools.cache
def available() -> bool:
    """Whether the compiled loops are installed, load, and pass a one-step smoke call."""
    if os.environ.get("JRNN_NATIVE", "1") == "0":
        return False
    path = _library_path()
    if path is None:
        return False
    try:
        library = ctypes.CDLL(str(path))
        for target, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        _smoke_test()
    except Exception:  # noqa: BLE001 - any failure means: use the XLA loops
        return False
    return True


def _smoke_test():
    """One tiny LSTM step on the CPU device: catches an FFI version mismatch at load time.
    It runs now even when the first use is inside ``jax.jit`` (else it would be
    traced into the user's function and checked nothing)."""
    one = np.ones((1, 1, 4), np.float32)
    with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
        carry = (jnp.zeros((1, 1), jnp.float32),) * 2
        (_, ys), _ = _lstm_forward(False, False, {"w_h": one[0], "b": one[0, 0]}, jnp.asarray(one), carry, None, None,
                                   False)
        jax.block_until_ready(ys)


def applies(cell, *arrays) -> bool:
    """Whether the native loops compute this cell for these float32 arrays."""
    if not all(jnp.dtype(a.dtype) == jnp.float32 for a in arrays):
        return False
    return type(cell) in _CELLS and not _disabled and available()


def _none_as_empty(valid, mask):
    valid = jnp.zeros((0,), jnp.bool_) if valid is None else valid
    mask = jnp.zeros((0,), jnp.float32) if mask is None else mask
    return valid, mask


def _call(target, shapes, *args, aliases=None, **attrs):
    """``aliases {input: output}``: the output reuses the (dead) input's buffer.
    Fresh buffers of tens of MB cost XLA:CPU a page fault per 4 KiB on every
    call, which took as long as the loop that fills them."""
    out_types = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    attrs = {k: np.bool_(v) for k, v in attrs.items()}
    outputs = jax.ffi.ffi_call(target, out_types, vmap_method="sequential",
                               input_output_aliases=aliases)(*args, **attrs)
    return vary_like(outputs, *args)  # inside jax.shard_map, each device's call computes its own shard


def _ys_shape(T, B, H, batch_major):
    return (B, T, H) if batch_major else (T, B, H)


def _lstm_forward(reverse, batch_major, p, projected, carry, valid, mask, save):
    T, B, G = projected.shape
    H = G // 4
    seq, state = (T, B, H), (B, H)
    res_shape = lambda s: s if save else (0,)
    ys, h, c, h_in, c_prev, t, tc = _call(
        "jrnn_lstm_forward",
        [_ys_shape(T, B, H, batch_major), state, state, res_shape(seq), res_shape(seq), res_shape((T, B, G)),
         res_shape(seq)],
        projected, p["w_h"], p["b"], *carry, *_none_as_empty(valid, mask),
        aliases={0: 5} if save else None,  # the gate values overwrite the projection
        reverse=reverse, batch_major=batch_major, save=save)
    res = (h_in, c_prev, t.reshape(T, B, 4, H), tc) if save else None
    return ((h, c), ys), res


def _lstm_backward(reverse, batch_major, p, res, d_final, d_ys, valid, mask):
    _, c_prev, t, tc = res
    T, B, _, H = t.shape
    d_pre, dh, dc = _call(
        "jrnn_lstm_backward", [(T, B, 4 * H), (B, H), (B, H)],
        p["w_h"], *_none_as_empty(valid, mask), c_prev, t.reshape(T, B, 4 * H), tc, d_ys, *d_final,
        aliases={4: 0},  # the gradients overwrite the gate values
        reverse=reverse, batch_major=batch_major)
    return (dh, dc), d_pre


def _gru_forward(reset_after, reverse, batch_major, p, projected, h0, valid, mask, save):
    """Residuals ``(h, h_in, z, r, n, hn)``; ``hn = h·W_hn + b_hn`` exists only with ``reset_after``."""
    T, B, G = projected.shape
    H = G // 3
    target, biases = (("jrnn_gru_forward", (p["b"], p["b_hn"])) if reset_after
                      else ("jrnn_gru_before_forward", (p["b"],)))
    res_shapes = [(T, B, H) if save else (0,)] * (6 if reset_after else 5)
    ys, h, *res = _call(target, [_ys_shape(T, B, H, batch_major), (B, H), *res_shapes],
                        projected, p["w_h"], *biases, h0, *_none_as_empty(valid, mask),
                        reverse=reverse, batch_major=batch_major, save=save)
    if not save:
        return (h, ys), None
    return (h, ys), tuple(res) if reset_after else (*res, None)


def _gru_backward(reset_after, reverse, batch_major, p, res, d_final, d_ys, valid, mask):
    h, h_in, z, r, n, hn = res
    T, B, H = h.shape
    target, saved = (("jrnn_gru_backward", (h, z, r, n, hn)) if reset_after
                     else ("jrnn_gru_before_backward", (h, h_in, z, r, n)))
    d_px, dh = _call(target, [(T, B, 3 * H), (B, H)], p["w_h"], *_none_as_empty(valid, mask), *saved, d_ys,
                     d_final, reverse=reverse, batch_major=batch_major)
    return dh, d_px


def _rnn_forward(relu, reverse, batch_major, p, projected, h0, valid, mask, save):
    T, B, H = projected.shape
    res_shape = (T, B, H) if save else (0,)
    ys, h, h_in, h_new = _call("jrnn_rnn_forward", [_ys_shape(T, B, H, batch_major), (B, H), res_shape, res_shape],
                               projected, p["w_h"], p["b"], h0, *_none_as_empty(valid, mask),
                               aliases={0: 3} if save else None,  # the states overwrite the projection
                               reverse=reverse, batch_major=batch_major, save=save, relu=relu)
    return (h, ys), ((h_in, h_new) if save else None)


def _rnn_backward(relu, reverse, batch_major, p, res, d_final, d_ys, valid, mask):
    _, h_new = res
    T, B, H = h_new.shape
    d_pre, dh = _call("jrnn_rnn_backward", [(T, B, H), (B, H)],
                      p["w_h"], *_none_as_empty(valid, mask), h_new, d_ys, d_final,
                      aliases={3: 0},  # the gradients overwrite the states
                      reverse=reverse, batch_major=batch_major, relu=relu)
    return dh, d_pre


_CELLS = {
    LSTMCell: (_lstm_forward, _lstm_backward),
    GRUCell: (_gru_forward, _gru_backward),
    SimpleRNNCell: (_rnn_forward, _rnn_backward),
}


def _loops(cell):
    """``(forward, backward)`` for this cell, with its options bound."""
    loops = _CELLS[type(cell)]
    if isinstance(cell, SimpleRNNCell):
        return tuple(functools.partial(fn, cell.activation == "relu") for fn in loops)
    if isinstance(cell, GRUCell):
        return tuple(functools.partial(fn, cell.reset_after) for fn in loops)
    return loops


def forward(cell, reverse, batch_major, p, projected, carry, valid, mask, *, save):
    """The whole forward loop: ``((final_carry, ys), residuals or None)`` as in ``fused``;
    ``ys`` is ``(B, T, H)`` with ``batch_major``, else ``(T, B, H)``."""
    return _loops(cell)[0](reverse, batch_major, p, projected, carry, valid, mask, save)


def backward(cell, reverse, batch_major, p, res, d_final, d_ys, valid, mask):
    """The whole reverse loop: ``(d_initial_carry, d_projected (T, B, G·H))``; ``d_ys`` laid out as ``ys``."""
    return _loops(cell)[1](reverse, batch_major, p, res, d_final, d_ys, valid, mask)
