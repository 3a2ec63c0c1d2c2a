"""One Pallas kernel per time step of the fused path's LSTM loops on a GPU.

XLA:GPU runs each step of the fused LSTM loop as two or more kernels: the
recurrent product (a GEMM, or at batch 1 a reduction), a fusion for the gate
math, and in the reverse loop a fusion that adds the product's split-K partial
sums (``benchmarks/step_kernels.py``). At batch 1 every kernel costs about
1.6 µs however little it computes (H100, ``benchmarks/RESULTS.md``). These
kernels do a whole step in one launch each:

* forward: program ``j`` computes column tile ``j`` (``TILE`` columns) of every
  gate, ``a = x_t W_x + b + h_{t-1} W_h`` (reading all of ``h_{t-1}``), the
  gates, ``c_t``, ``h_t``, and the values the fused path saves for its
  backward loop (``h_{t-1}``, ``c_{t-1}``, ``tanh c_t`` and the gate tanh
  values, packed in one ``(B, 7H)`` array, :func:`pack`, so that XLA stacks
  one array per step, not four);
* backward: program ``j`` computes tile ``j`` of ``dh_{t-1} = dA_t W_hᵀ``, which
  needs the gate gradients ``dA_t`` of every column: each program recomputes
  them from the saved values (cheap at the hidden sizes taken, H ≤ 256), and
  stores those of its own tile with its tile of ``dc_{t-1}``.

The launch boundary is the barrier between steps, so no program waits for
another (unlike the cooperative kernels of :mod:`jrnn.kernels.pallas_lstm`).
Inputs, outputs and saved values are those of the fused path's XLA step
(:class:`jrnn.kernels.fused._LSTM`; the saved values unpacked after the
loop), so the fused path's custom VJP, weight gradients and CPU loops are
shared. The gate math is its one-tanh form, in float32, with float32 products
(TF32 by default, as XLA's). Batch rows are tiled by ``BLOCK_B`` (16:
Triton's dot needs 16 rows); the fused loop pads the batch once, outside the
time loop.

Status (2026-11-27): the fused path with these kernels equals the plain path
in interpret mode on CPU, values and gradients (tests); compiled for an H100
without one, forward+backward runs 2.875 kernels per step at batch 1 where
XLA's loops run 5.25 (``benchmarks/step_kernels.py --target h100_sxm
--step-kernels``), and Triton's sm_90 code spills no registers
(``benchmarks/triton_resources.py``). Not yet run or timed on a GPU, so the
fused path uses them only inside :func:`jrnn.kernels.fused.step_kernels`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels._pallas import BLOCK_B, MAX_CHUNK, NT, available, call_per_column_tile, load, store

TILE = 16  # state columns per program (a Triton dot's smallest width)
MAX_HIDDEN = 256  # the backward kernel's programs each recompute all 4H gate gradients
# columns of dA_t per product in the backward kernel: Triton loads every chunk's
# operands at once, and with 64 (or 32) its sm_90 code for H = 128 spilled
# registers; with 16 neither kernel spills any up to H = 256
# (benchmarks/triton_resources.py)
BACKWARD_CHUNK = 16
# the saved values of a step, packed in this order of H-column sections (see pack)
_H_IN, _C_PREV, _TANH_C, _GATES = 0, 1, 2, 3  # then the 4 gate tanh values
SAVED = 7
# the one-tanh gate form (i, f, g, o), which the fused path's XLA step uses too:
# act = tanh(a·scale)·scale + add, so σ(a) = 0.5·tanh(a/2) + 0.5
SCALE = (0.5, 0.5, 1.0, 0.5)
ADD = (0.5, 0.5, 0.0, 0.5)


def supports(hidden_size: int) -> bool:
    """Whether the step kernels take this hidden size (a multiple of ``TILE`` up to
    ``MAX_HIDDEN``) with this jax (Pallas' Triton backend)."""
    return 0 < hidden_size <= MAX_HIDDEN and hidden_size % TILE == 0 and available()


def padded_batch(batch: int) -> int:
    """The batch rows the kernels run: ``batch`` rounded up to whole tiles of ``BLOCK_B``."""
    return -(-max(batch, 1) // BLOCK_B) * BLOCK_B


def _chunk(hidden_size):
    """Rows of ``h_{t-1}`` (and columns of ``dA_t``) per product: the largest power
    of two that divides H, at most ``MAX_CHUNK``."""
    return min(hidden_size & -hidden_size, MAX_CHUNK)


def _product(a, w):
    """``a @ w`` in float32 (a float32 operand promotes the other, as in XLA's step)."""
    return jnp.dot(a, w.astype(jnp.float32), preferred_element_type=jnp.float32)


def _product_t(a, w):
    """``a @ wᵀ`` in float32."""
    return jax.lax.dot_general(a, w.astype(jnp.float32), NT, preferred_element_type=jnp.float32)


def _cell_grad(dh, dc, t_o, tc):
    """``dc_t`` in full: ``dc`` from later steps plus ``dh ⊙ o ⊙ (1 - tanh² c_t)``."""
    return dc + dh * (t_o * SCALE[3] + ADD[3]) * (1 - tc * tc)


def _gate_grad(gate, t, dh, dc, c_prev, tc):
    """The gradient of gate ``gate``'s pre-activation, from the gate tanh values
    ``t(gate)`` and the full ``dc`` (:func:`_cell_grad`);
    as :meth:`jrnn.kernels.fused._LSTM.backward`."""
    act = lambda g: t(g) * SCALE[g] + ADD[g]
    d_act = {0: lambda: dc * act(2), 1: lambda: dc * c_prev, 2: lambda: dc * act(0), 3: lambda: dh * tc}[gate]()
    return d_act * (SCALE[gate] * SCALE[gate]) * (1 - t(gate) * t(gate))


def _forward_kernel(px_ref, b_ref, w_ref, h_ref, c_ref, h_out, c_out, saved_out):
    """Column tile ``j`` of one step: ``px (R, 4H)`` (without the bias), ``b (4H,)``,
    ``w (H, 4H)``, ``h``/``c (R, H)`` -> ``h_t``, ``c_t (R, H)`` and the saved values
    ``(R, 7H)`` (see :func:`pack`), each in its tile's columns."""
    from jax.experimental import pallas as pl

    H = h_ref.shape[-1]
    C = _chunk(H)
    j = pl.program_id(0)
    rows = slice(None)
    mine = pl.ds(j * TILE, TILE)
    gate_cols = lambda gate: pl.ds(gate * H + j * TILE, TILE)
    saved_cols = lambda section: pl.ds(section * H + j * TILE, TILE)
    pre = [load(px_ref, (rows, gate_cols(g))) + load(b_ref, (gate_cols(g),))[None, :] for g in range(4)]
    for k in range(H // C):  # one chunk of h_{t-1} at a time
        h_k = load(h_ref, (rows, pl.ds(k * C, C)))
        pre = [a + _product(h_k, w_ref[pl.ds(k * C, C), gate_cols(g)]) for g, a in enumerate(pre)]
    t = [jnp.tanh(a * s) for a, s in zip(pre, SCALE)]
    i, f, g, o = (tk * s + a for tk, s, a in zip(t, SCALE, ADD))
    c = load(c_ref, (rows, mine))
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    store(h_out, (rows, mine), o * tc)
    store(c_out, (rows, mine), c_new)
    for section, value in zip(range(SAVED), [load(h_ref, (rows, mine)), c, tc, *t]):
        store(saved_out, (rows, saved_cols(section)), value)


def _backward_kernel(dh_ref, dy_ref, dc_ref, saved_ref, w_ref, dh_out, dc_out, da_out):
    """Column tile ``j`` of one reverse step: ``dh`` (the gradient of ``h_t`` from
    later steps), ``dy`` (from ``y_t``), ``dc (R, H)``, the saved values ``(R, 7H)``
    (see :func:`pack`) and ``w (H, 4H)`` -> tile ``j`` of ``dh_{t-1} = dA W_hᵀ`` and
    of ``dc_{t-1}``, and the gate gradients ``dA (R, 4H)`` in the tile's columns."""
    from jax.experimental import pallas as pl

    H = dh_ref.shape[-1]
    C = BACKWARD_CHUNK
    j = pl.program_id(0)
    rows = slice(None)

    def loads(start, width):
        """``dh`` (with ``dy``), the full ``dc``, ``c_{t-1}``, ``tanh c_t`` and the gate
        tanh values (``t(gate)``) of the columns ``start … start + width``."""
        cols = pl.ds(start, width)
        saved = lambda section: load(saved_ref, (rows, pl.ds(section * H + start, width)))
        t = functools.cache(lambda g: saved(_GATES + g))  # loaded where first used
        dh = load(dh_ref, (rows, cols)) + load(dy_ref, (rows, cols))
        tc = saved(_TANH_C)
        return dh, _cell_grad(dh, load(dc_ref, (rows, cols)), t(3), tc), saved(_C_PREV), tc, t

    mine = pl.ds(j * TILE, TILE)
    dh_prev = jnp.zeros((dh_ref.shape[0], TILE), jnp.float32)
    for k in range(H // C):  # every column chunk's gate gradients, times the rows of W_h for this tile
        dh, dc, c_prev, tc, t = loads(k * C, C)
        for g in range(4):
            dh_prev = dh_prev + _product_t(_gate_grad(g, t, dh, dc, c_prev, tc), w_ref[mine, pl.ds(g * H + k * C, C)])
    store(dh_out, (rows, mine), dh_prev)
    dh, dc, c_prev, tc, t = loads(j * TILE, TILE)
    for g in range(4):
        store(da_out, (rows, pl.ds(g * H + j * TILE, TILE)), _gate_grad(g, t, dh, dc, c_prev, tc))
    store(dc_out, (rows, mine), dc * (t(1) * SCALE[1] + ADD[1]))


def pack(h_in, c_prev, t, tc):
    """The fused path's saved values of a step, ``h_in``, ``c_prev``, ``tanh c_t``
    ``(..., H)`` and the gate tanh values ``t (..., 4, H)``, as the one ``(..., 7H)``
    array that the kernels write and read: one array to stack per step, not four."""
    return jnp.concatenate([h_in, c_prev, tc, t.reshape(*t.shape[:-2], -1)], axis=-1)


def unpack(saved):
    """:func:`pack`'s inverse: ``(h_in, c_prev, t (..., 4, H), tc)``."""
    H = saved.shape[-1] // SAVED
    part = lambda section, n=1: saved[..., section * H:(section + n) * H]
    return part(_H_IN), part(_C_PREV), part(_GATES, 4).reshape(*saved.shape[:-1], 4, H), part(_TANH_C)


def lstm_step(h, c, px, b, w_h, *, interpret):
    """One forward step: ``h``/``c (B, H)``, ``px (B, 4H)`` (``x_t W_x``, no bias),
    ``b (4H,)``, ``w_h (H, 4H)``, B a multiple of ``BLOCK_B`` -> ``(h_t, c_t, saved)``
    with the saved values ``(B, 7H)`` of :func:`pack`, all in the carry's dtype."""
    B, H = h.shape
    h_new, c_new, saved = call_per_column_tile(
        _forward_kernel, (px, b, w_h, h, c), ("b", "w", "w", "b", "b"),
        [((B, H), h.dtype, "b"), ((B, H), c.dtype, "b"), ((B, SAVED * H), h.dtype, "b")], interpret, H // TILE)
    return h_new, c_new, saved


def lstm_step_backward(dh, dy, dc, saved, w_h, *, interpret):
    """One reverse step: ``dh`` (the gradient of ``h_t`` from later steps), ``dy``
    (from ``y_t``), ``dc (B, H)``, the step's saved values ``(B, 7H)`` (:func:`pack`),
    ``w_h (H, 4H)`` -> ``(dh_{t-1}, dc_{t-1}, dA (B, 4H))``, before any recurrent dropout mask."""
    B, H = dh.shape
    state = ((B, H), jnp.float32, "b")
    dh_prev, dc_prev, da = call_per_column_tile(
        _backward_kernel, (dh, dy, dc, saved, w_h), ("b", "b", "b", "b", "w"),
        [state, state, ((B, 4 * H), jnp.float32, "b")], interpret, H // TILE)
    return dh_prev.astype(dh.dtype), dc_prev.astype(dc.dtype), da.astype(dh.dtype)
