"""One Pallas kernel per time step of the fused path's LSTM and GRU loops on a GPU.

XLA:GPU runs each step of the fused loops as two or more kernels: the
recurrent product (a GEMM, or at batch 1 a reduction), a fusion for the gate
math, and in the reverse loop a fusion that adds the product's split-K partial
sums (``benchmarks/step_kernels.py``). At batch 1 every kernel costs about
1.6 µs however little it computes (H100, ``benchmarks/RESULTS.md``). These
kernels do a whole step in one launch each, for the LSTM and the reset-after
GRU:

* forward: program ``j`` computes column tile ``j`` (``TILE`` columns) of every
  gate, e.g. for the LSTM ``a = x_t W_x + b + h_{t-1} W_h`` (reading all of
  ``h_{t-1}``), the gates, ``c_t``, ``h_t``, and the values the fused path saves
  for its backward loop (for the LSTM ``h_{t-1}``, ``c_{t-1}``, ``tanh c_t`` and
  the gate tanh values), packed in one array (:func:`pack_lstm`,
  :func:`pack_gru`), so that XLA stacks one array per step, not four or six;
* backward: program ``j`` computes tile ``j`` of ``dh_{t-1}``, whose product
  ``dA_t W_hᵀ`` needs the gate gradients ``dA_t`` of every column: each program
  recomputes them from the saved values (cheap at the hidden sizes taken,
  H ≤ 256), and stores those of its own tile (with, for the LSTM, its tile of
  ``dc_{t-1}``).

The launch boundary is the barrier between steps, so no program waits for
another (unlike the cooperative kernels of :mod:`jrnn.kernels.pallas_lstm`).
Inputs, outputs and saved values are those of the fused path's XLA steps
(:class:`jrnn.kernels.fused._LSTM`, :class:`jrnn.kernels.fused._GRU`; the
saved values unpacked after the loop), so the fused path's custom VJP, weight
gradients and CPU loops are shared. The gate math is theirs (the LSTM's in
its one-tanh form), in float32, with float32 products (TF32 by default, as
XLA's). Batch rows are tiled by ``BLOCK_B`` (16: Triton's dot needs 16 rows);
the fused loop pads the batch once, outside the time loop.

Status (2026-11-27): the fused path with these kernels equals the plain path
in interpret mode on CPU, values and gradients (tests); compiled for an H100
without one, forward+backward runs 2.875 kernels per step at batch 1 where
XLA's loops run 5.25, for either cell (``benchmarks/step_kernels.py --target
h100_sxm --step-kernels``), and Triton's sm_90 code spills no registers
(``benchmarks/triton_resources.py``). Not yet run or timed on a GPU, so the
fused path uses them only inside :func:`jrnn.kernels.fused.step_kernels`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels._pallas import BLOCK_B, MAX_CHUNK, NT, available, call_per_column_tile, load, sigmoid, store

TILE = 16  # state columns per program (a Triton dot's smallest width)
MAX_HIDDEN = 256  # the backward kernel's programs each recompute all 4H gate gradients
# columns of dA_t per product in the backward kernel: Triton loads every chunk's
# operands at once, and with 64 (or 32) its sm_90 code for H = 128 spilled
# registers; with 16 neither kernel spills any up to H = 256
# (benchmarks/triton_resources.py)
BACKWARD_CHUNK = 16
# the LSTM's saved values of a step, packed in this order of H-column sections
# (see pack_lstm): h_{t-1} (after any dropout mask), c_{t-1}, tanh c_t, then the
# 4 gate tanh values
_H_IN, _C_PREV, _TANH_C, _GATES = 0, 1, 2, 3
LSTM_SAVED = 7
# the reset-after GRU's (see pack_gru): h_{t-1}, h_{t-1} after any dropout
# mask, z, r, n and hn = h_{t-1} W_hn + b_hn
GRU_SAVED = 6
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


def _sections(H):
    """This program's columns (tile ``j``) of each ``H``-column section of an axis
    (gates, saved values): ``section -> pl.ds``."""
    from jax.experimental import pallas as pl

    j = pl.program_id(0)
    return lambda section: pl.ds(section * H + j * TILE, TILE)


def _input_and_product(px_ref, b_ref, h_ref, w_ref, num_gates):
    """``x_t W_x + b`` and ``h W_h`` in this program's columns of each gate, each
    ``(R, TILE)`` float32 (the product one chunk of ``h``'s columns at a time)."""
    from jax.experimental import pallas as pl

    H = h_ref.shape[-1]
    C = _chunk(H)
    rows, cols = slice(None), _sections(H)
    xw = [load(px_ref, (rows, cols(g))) + load(b_ref, (cols(g),))[None, :] for g in range(num_gates)]
    hw = [jnp.zeros((h_ref.shape[0], TILE), jnp.float32)] * num_gates
    for k in range(H // C):
        h_k = load(h_ref, (rows, pl.ds(k * C, C)))
        hw = [a + _product(h_k, w_ref[pl.ds(k * C, C), cols(g)]) for g, a in enumerate(hw)]
    return xw, hw


def _forward_kernel(px_ref, b_ref, w_ref, h_ref, c_ref, h_out, c_out, saved_out):
    """Column tile ``j`` of one step: ``px (R, 4H)`` (without the bias), ``b (4H,)``,
    ``w (H, 4H)``, ``h``/``c (R, H)`` -> ``h_t``, ``c_t (R, H)`` and the saved values
    ``(R, 7H)`` (see :func:`pack_lstm`), each in its tile's columns."""
    rows, cols = slice(None), _sections(h_ref.shape[-1])
    xw, hw = _input_and_product(px_ref, b_ref, h_ref, w_ref, 4)
    t = [jnp.tanh((a + b) * s) for a, b, s in zip(xw, hw, SCALE)]
    i, f, g, o = (tk * s + a for tk, s, a in zip(t, SCALE, ADD))
    c = load(c_ref, (rows, cols(0)))
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    store(h_out, (rows, cols(0)), o * tc)
    store(c_out, (rows, cols(0)), c_new)
    for section, value in enumerate([load(h_ref, (rows, cols(0))), c, tc, *t]):
        store(saved_out, (rows, cols(section)), value)


def _backward_kernel(dh_ref, dy_ref, dc_ref, saved_ref, w_ref, *refs, masked):
    """Column tile ``j`` of one reverse step: ``dh`` (the gradient of ``h_t`` from
    later steps), ``dy`` (from ``y_t``), ``dc (R, H)``, the saved values ``(R, 7H)``
    (see :func:`pack_lstm`), ``w (H, 4H)`` and, where ``masked``, the dropout mask
    ``(R, H)`` -> tile ``j`` of ``dh_{t-1} = mask ⊙ (dA W_hᵀ)`` and of ``dc_{t-1}``,
    and the gate gradients ``dA (R, 4H)`` in the tile's columns."""
    from jax.experimental import pallas as pl

    mask_ref, dh_out, dc_out, da_out = refs if masked else (None, *refs)
    H = dh_ref.shape[-1]
    C = BACKWARD_CHUNK
    j = pl.program_id(0)
    rows, cols = slice(None), _sections(H)

    def loads(start, width):
        """``dh`` (with ``dy``), the full ``dc``, ``c_{t-1}``, ``tanh c_t`` and the gate
        tanh values (``t(gate)``) of the columns ``start … start + width``."""
        cols = pl.ds(start, width)
        saved = lambda section: load(saved_ref, (rows, pl.ds(section * H + start, width)))
        t = functools.cache(lambda g: saved(_GATES + g))  # loaded where first used
        dh = load(dh_ref, (rows, cols)) + load(dy_ref, (rows, cols))
        tc = saved(_TANH_C)
        return dh, _cell_grad(dh, load(dc_ref, (rows, cols)), t(3), tc), saved(_C_PREV), tc, t

    dh_prev = jnp.zeros((dh_ref.shape[0], TILE), jnp.float32)
    for k in range(H // C):  # every column chunk's gate gradients, times the rows of W_h for this tile
        dh, dc, c_prev, tc, t = loads(k * C, C)
        for g in range(4):
            dh_prev = dh_prev + _product_t(_gate_grad(g, t, dh, dc, c_prev, tc), w_ref[cols(0), pl.ds(g * H + k * C, C)])
    store(dh_out, (rows, cols(0)), dh_prev if mask_ref is None else dh_prev * load(mask_ref, (rows, cols(0))))
    dh, dc, c_prev, tc, t = loads(j * TILE, TILE)
    for g in range(4):
        store(da_out, (rows, cols(g)), _gate_grad(g, t, dh, dc, c_prev, tc))
    store(dc_out, (rows, cols(0)), dc * (t(1) * SCALE[1] + ADD[1]))


def pack_lstm(h_in, c_prev, t, tc):
    """The fused path's saved values of a step, ``h_in``, ``c_prev``, ``tanh c_t``
    ``(..., H)`` and the gate tanh values ``t (..., 4, H)``, as the one ``(..., 7H)``
    array that the kernels write and read: one array to stack per step, not four."""
    return jnp.concatenate([h_in, c_prev, tc, t.reshape(*t.shape[:-2], -1)], axis=-1)


def unpack_lstm(saved):
    """:func:`pack_lstm`'s inverse: ``(h_in, c_prev, t (..., 4, H), tc)``."""
    H = saved.shape[-1] // LSTM_SAVED
    part = lambda section, n=1: saved[..., section * H:(section + n) * H]
    return part(_H_IN), part(_C_PREV), part(_GATES, 4).reshape(*saved.shape[:-1], 4, H), part(_TANH_C)


def pack_gru(*res):
    """The reset-after GRU's saved values of a step, ``(h, h_in, z, r, n, hn)``, each
    ``(..., H)``, as the one ``(..., 6H)`` array that the GRU kernels write and read."""
    return jnp.concatenate(res, axis=-1)


def unpack_gru(saved):
    """:func:`pack_gru`'s inverse."""
    return tuple(jnp.split(saved, GRU_SAVED, axis=-1))


def lstm_step(h, c, px, b, w_h, *, interpret):
    """One forward step: ``h``/``c (B, H)``, ``px (B, 4H)`` (``x_t W_x``, no bias),
    ``b (4H,)``, ``w_h (H, 4H)``, B a multiple of ``BLOCK_B`` -> ``(h_t, c_t, saved)``
    with the saved values ``(B, 7H)`` of :func:`pack_lstm`, all in the carry's dtype."""
    B, H = h.shape
    h_new, c_new, saved = call_per_column_tile(
        _forward_kernel, (px, b, w_h, h, c), ("b", "w", "w", "b", "b"),
        [((B, H), h.dtype, "b"), ((B, H), c.dtype, "b"), ((B, LSTM_SAVED * H), h.dtype, "b")], interpret, H // TILE)
    return h_new, c_new, saved


def _with_mask(kernel, inputs, kinds, mask, dtype):
    """``kernel`` with ``masked`` bound, and the inputs and their kinds with the
    dropout mask ``(B, H)`` appended where there is one."""
    if mask is None:
        return functools.partial(kernel, masked=False), inputs, kinds
    return functools.partial(kernel, masked=True), (*inputs, mask.astype(dtype)), (*kinds, "b")


def lstm_step_backward(dh, dy, dc, saved, mask, w_h, *, interpret):
    """One reverse step: ``dh`` (the gradient of ``h_t`` from later steps), ``dy``
    (from ``y_t``), ``dc (B, H)``, the step's saved values ``(B, 7H)`` (:func:`pack_lstm`),
    the dropout mask ``(B, H)`` or None, ``w_h (H, 4H)`` -> ``(dh_{t-1}, dc_{t-1}, dA (B, 4H))``."""
    B, H = dh.shape
    state = ((B, H), jnp.float32, "b")
    kernel, inputs, kinds = _with_mask(_backward_kernel, (dh, dy, dc, saved, w_h), ("b", "b", "b", "b", "w"),
                                       mask, dh.dtype)
    dh_prev, dc_prev, da = call_per_column_tile(
        kernel, inputs, kinds, [state, state, ((B, 4 * H), jnp.float32, "b")], interpret, H // TILE)
    return dh_prev.astype(dh.dtype), dc_prev.astype(dc.dtype), da.astype(dh.dtype)


def _gru_forward_kernel(px_ref, b_ref, b_hn_ref, w_ref, h_ref, h_in_ref, h_out, saved_out):
    """Column tile ``j`` of one reset-after GRU step: ``px (R, 3H)`` (without the
    bias), ``b (3H,)``, ``b_hn (H,)``, ``w (H, 3H)``, ``h_{t-1}`` and ``h_in (R, H)``
    (``h_{t-1}`` after any dropout mask) -> ``h_t (R, H)`` and the saved values
    ``(R, 6H)`` (see :func:`pack_gru`), each in its tile's columns."""
    rows, cols = slice(None), _sections(h_ref.shape[-1])
    xw, hw = _input_and_product(px_ref, b_ref, h_in_ref, w_ref, 3)
    z, r = sigmoid(xw[0] + hw[0]), sigmoid(xw[1] + hw[1])
    hn = hw[2] + load(b_hn_ref, (cols(0),))[None, :]
    n = jnp.tanh(xw[2] + r * hn)
    h = load(h_ref, (rows, cols(0)))
    store(h_out, (rows, cols(0)), (1 - z) * h + z * n)
    for section, value in enumerate([h, load(h_in_ref, (rows, cols(0))), z, r, n, hn]):
        store(saved_out, (rows, cols(section)), value)


def _gru_backward_kernel(dh_ref, dy_ref, saved_ref, w_ref, *refs, masked):
    """Column tile ``j`` of one reset-after GRU reverse step: ``dh`` (from later
    steps), ``dy (R, H)``, the saved values ``(R, 6H)``, ``w (H, 3H)`` and, where
    ``masked``, the dropout mask ``(R, H)`` -> tile ``j`` of ``dh_{t-1} = dh ⊙ (1 - z)
    + mask ⊙ (dA' W_hᵀ)`` (``dA' = [da_z, da_r, da_n ⊙ r]``, recomputed here for every
    column) and the gate gradients ``dA = [da_z, da_r, da_n] (R, 3H)`` in its columns;
    as :meth:`jrnn.kernels.fused._GRU.backward`."""
    from jax.experimental import pallas as pl

    mask_ref, dh_out, da_out = refs if masked else (None, *refs)
    H = dh_ref.shape[-1]
    C = BACKWARD_CHUNK
    j = pl.program_id(0)
    rows, cols = slice(None), _sections(H)

    def grads(start, width):
        """``dh`` (with ``dy``), ``z`` and ``(da_z, da_r, da_n, r)`` of the columns ``start … start + width``."""
        saved = lambda section: load(saved_ref, (rows, pl.ds(section * H + start, width)))
        dh = load(dh_ref, (rows, pl.ds(start, width))) + load(dy_ref, (rows, pl.ds(start, width)))
        h, z, r, n, hn = saved(0), saved(2), saved(3), saved(4), saved(5)
        da_z = dh * (n - h) * z * (1 - z)
        da_n = dh * z * (1 - n * n)
        return dh, z, (da_z, da_n * hn * r * (1 - r), da_n, r)

    d_h_in = jnp.zeros((dh_ref.shape[0], TILE), jnp.float32)
    for k in range(H // C):  # every column chunk's gate gradients, times the rows of W_h for this tile
        _, _, (da_z, da_r, da_n, r) = grads(k * C, C)
        for g, d in enumerate((da_z, da_r, da_n * r)):
            d_h_in = d_h_in + _product_t(d, w_ref[cols(0), pl.ds(g * H + k * C, C)])
    if mask_ref is not None:
        d_h_in = d_h_in * load(mask_ref, (rows, cols(0)))
    dh, z, (da_z, da_r, da_n, _) = grads(j * TILE, TILE)
    store(dh_out, (rows, cols(0)), dh * (1 - z) + d_h_in)
    for g, d in enumerate((da_z, da_r, da_n)):
        store(da_out, (rows, cols(g)), d)


def gru_step(h, h_in, px, b, b_hn, w_h, *, interpret):
    """One reset-after GRU step: ``h``/``h_in (B, H)`` (``h_{t-1}`` before and after any
    dropout mask), ``px (B, 3H)`` (``x_t W_x``, no bias), ``b (3H,)``, ``b_hn (H,)``,
    ``w_h (H, 3H)``, B a multiple of ``BLOCK_B`` -> ``(h_t, saved)`` with the saved
    values ``(B, 6H)`` of :func:`pack_gru`, in the carry's dtype."""
    B, H = h.shape
    h_new, saved = call_per_column_tile(
        _gru_forward_kernel, (px, b, b_hn, w_h, h, h_in), ("b", "w", "w", "w", "b", "b"),
        [((B, H), h.dtype, "b"), ((B, GRU_SAVED * H), h.dtype, "b")], interpret, H // TILE)
    return h_new, saved


def gru_step_backward(dh, dy, saved, mask, w_h, *, interpret):
    """One reset-after GRU reverse step: ``dh`` (from later steps), ``dy (B, H)``, the
    step's saved values ``(B, 6H)`` (:func:`pack_gru`), the dropout mask ``(B, H)`` or
    None, ``w_h (H, 3H)`` -> ``(dh_{t-1}, dA (B, 3H))``."""
    B, H = dh.shape
    kernel, inputs, kinds = _with_mask(_gru_backward_kernel, (dh, dy, saved, w_h), ("b", "b", "b", "w"), mask,
                                       dh.dtype)
    dh_prev, da = call_per_column_tile(
        kernel, inputs, kinds, [((B, H), jnp.float32, "b"), ((B, 3 * H), jnp.float32, "b")], interpret, H // TILE)
    return dh_prev.astype(dh.dtype), da.astype(dh.dtype)
