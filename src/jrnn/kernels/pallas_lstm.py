"""A Pallas LSTM time loop: the whole sequence in one kernel launch.

A ``lax.scan`` on a GPU launches several kernels per time step; this kernel
runs the time loop inside one program per batch tile of 16 rows, so the
per-step launch cost disappears. Where the recurrent weights fit
(``_pallas.ON_CHIP_BYTES``: float32 up to H = 96, bfloat16 up to H = 128) they
are loaded once into shared memory and stay there for the whole loop
(persistent style); larger ones are re-read from L2 at each step. The gate math is fused with the
recurrent product and runs in float32. The backward kernel runs the reverse
loop the same way and emits the gate gradients; ``dW_h = Σ_t h_{t-1}ᵀ dG_t``
is then one matrix product, as in :mod:`jrnn.kernels.fused`. Layout as JAX's
own Pallas ops: kernels, a wrapper with ``interpret=`` (so CPU tests run the
same kernel), a custom VJP, and the plain references (:func:`reference_forward`,
:func:`reference_backward`: what the kernels compute, in ``lax.scan``; JAX
differentiates the kernels as these, so derivatives of gradients work).

Wider states (H a multiple of 64 from 320 to 2048; the (16, 768, 1024) case
of the GPU benchmark) take the cooperative kernels: H/16 programs per batch
tile, each owning 16 columns of the state and the matching weights (on chip up
to H = 800 in float32, 1600 in bfloat16), all resident at once (one per
multiprocessor, as cuDNN's persistent kernels), reading the whole ``h_{t-1}``
from L2 and meeting at a grid barrier (atomic counters) at every step. A
program that cannot meet the others gives up after ``MAX_SPINS`` polls, and
the outputs are then NaN: never a hang, never silently wrong. Interpret mode
runs one program per batch tile that does every column tile.

Supported: LSTM with hidden size 16, 32, 48, 64, 96, 128, 192 or 256 (the
state is split into at most 4 chunks of 16, 32 or 64 columns, see
:func:`jrnn.kernels._pallas.chunking`) or a wide one as above, no
``seq_lengths``, ``reverse``, resets or recurrent dropout (``jrnn.scan``
refuses those with ``implementation="pallas"``).

Status (2026-11-27): values and gradients equal the reference and the plain
path in interpret mode on CPU (tests), and the plain path on an H100 and an
H200 at H = 64 and 128 and, for the cooperative kernels, at H = 512 and 768
(float32 and bfloat16; the grid barrier holds). At H = 256 in float32 the
device check was stopped after 40 s, still compiling the forward kernel, on
both cards: Triton's own compile of that kernel (about 3,400 lines of Triton
IR, its chunk loops unrolled) took 12 s with pip Triton 3.9 on a 2-core CPU.
Timed there, no
kernel was faster than the fused path forward+backward (see
``benchmarks/RESULTS.md``), so ``implementation="auto"`` does not pick them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels import _pallas  # _pallas.ON_CHIP_BYTES read at call time (benchmarks vary it)
from jrnn.kernels._custom_vjp import custom_vjp
from jrnn.kernels._pallas import (
    BLOCK_B,
    HIDDEN_SIZES,
    MAX_CHUNK,
    add_recurrent_product_t,
    call,
    chunking,
    columns,
    grid_barrier,
    interpret_default,
    load,
    load_chunks,
    matmul,
    matmul_t,
    recurrent_product,
    sigmoid,
    store,
    store_chunks,
    tiled,
    weight_blocks,
    weights_on_chip,
)
from jrnn.kernels._with_reference import with_reference

# The wide kernels (hidden sizes above HIDDEN_SIZES): cooperating programs of
# WIDE_TILE columns each, H / WIDE_TILE per batch tile, all resident at once
# (one per multiprocessor), synchronised by a grid barrier at every step.
WIDE_TILE = 16
MAX_WIDE = 2048
# hidden sizes above this (multiples of 64) take the wide kernels
MIN_WIDE = HIDDEN_SIZES[-1]
# polls of a grid barrier before a program gives up (each poll is one atomic
# read of the counter in L2 and two block-wide barriers; polls were not timed
# on their own on a GPU)
MAX_SPINS = 1 << 20


def supports(cell) -> bool:
    """Whether the kernels implement this cell: an LSTM with H in ``HIDDEN_SIZES``,
    or a wide one (:func:`is_wide`)."""
    from jrnn.cells import LSTMCell

    return isinstance(cell, LSTMCell) and (cell.hidden_size in HIDDEN_SIZES or is_wide(cell.hidden_size))


def _cell_update(pre, c):
    """The LSTM cell on one column block: pre-activations ``pre = [a_i, a_f, a_g, a_o]``
    and ``c_{t-1}`` -> ``((i, f, g, o), c_t, h_t)``, all ``(B, n)`` float32."""
    i, f, o = sigmoid(pre[0]), sigmoid(pre[1]), sigmoid(pre[3])
    g = jnp.tanh(pre[2])
    c_new = f * c + i * g
    return (i, f, g, o), c_new, o * jnp.tanh(c_new)


def _store_step(hs_ref, residual_refs, t, cols, acts, c, h):
    """Store ``h_t`` of one column block (``cols(gate)``: its columns in a gate-blocked
    axis, ``cols()`` in ``(…, H)``), and with ``residual_refs = (cs_ref, gates_ref)`` also
    ``c_t`` and the activated gates."""
    rows = slice(None)
    store(hs_ref, (t, rows, cols()), h)
    if residual_refs:
        cs_ref, gates_ref = residual_refs
        store(cs_ref, (t, rows, cols()), c)
        for k, act in enumerate(acts):
            store(gates_ref, (t, rows, cols(k)), act)


def _cell_grads(gates_ref, cs_ref, c0_ref, dys_ref, dpre_ref, t, cols, dh, dc):
    """Step t of the reverse loop on one column block (``cols`` as in
    :func:`_store_step`): from ``dh``/``dc`` (gradients of ``h_t``, ``c_t`` from later
    steps), store the pre-activation gradients ``dpre[t]`` and return them with
    ``dc_{t-1}``'s share that flows through the forget gate."""
    rows = slice(None)
    i, f, g, o = (load(gates_ref, (t, rows, cols(k))) for k in range(4))
    c = load(cs_ref, (t, rows, cols()))
    c_prev = jnp.where(t > 0, load(cs_ref, (jnp.maximum(t - 1, 0), rows, cols())), load(c0_ref, (rows, cols())))
    dh = dh + load(dys_ref, (t, rows, cols()))
    tc = jnp.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    grads = (dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o))
    for k, d in enumerate(grads):
        store(dpre_ref, (t, rows, cols(k)), d)
    return grads, dc * f


def _forward_kernel(px_ref, w_ref, h0_ref, c0_ref, hs_ref, c_T_ref, *residual_refs, on_chip):
    """Writes ``hs`` and ``c_T``; with ``residual_refs = (cs_ref, gates_ref)`` also
    the cell states and the activated gates i, f, g, o for the backward kernel."""
    H = h0_ref.shape[-1]
    C, n_chunks = chunking(H)
    rows = slice(None)
    w = weight_blocks(w_ref, 4, on_chip)

    def step(t, carry):
        h, c = carry  # n_chunks chunks each, (B, C)
        h_new, c_new = [], []
        for j in range(n_chunks):
            pre = [load(px_ref, (t, rows, columns(j, C, g, H))) + recurrent_product(h, w, g, j) for g in range(4)]
            acts, c_j, h_j = _cell_update(pre, c[j])
            c_new.append(c_j)
            h_new.append(h_j)
            _store_step(hs_ref, residual_refs, t, lambda gate=0, j=j: columns(j, C, gate, H), acts, c_j, h_j)
        return tuple(h_new), tuple(c_new)

    initial = (load_chunks(h0_ref, C, n_chunks), load_chunks(c0_ref, C, n_chunks))
    _, c_T = jax.lax.fori_loop(0, px_ref.shape[0], step, initial)
    store_chunks(c_T_ref, c_T)


def _backward_kernel(gates_ref, cs_ref, c0_ref, dys_ref, dhT_ref, dcT_ref, w_ref, dpre_ref, dh0_ref, dc0_ref,
                     *, on_chip):
    """Writes the pre-activation gradients ``dpre (T, B, 4H)``, ``dh_0`` and ``dc_0``."""
    num_steps = gates_ref.shape[0]
    H = c0_ref.shape[-1]
    C, n_chunks = chunking(H)
    w = weight_blocks(w_ref, 4, on_chip)

    def step(s, carry):
        dh, dc = carry  # n_chunks chunks each, (B, C)
        t = num_steps - 1 - s
        dh_prev, dc_prev = [jnp.zeros_like(dh[0])] * n_chunks, []
        for j in range(n_chunks):
            grads, dc_prev_j = _cell_grads(gates_ref, cs_ref, c0_ref, dys_ref, dpre_ref, t,
                                           lambda gate=0, j=j: columns(j, C, gate, H), dh[j], dc[j])
            dh_prev = add_recurrent_product_t(dh_prev, grads, w, j)
            dc_prev.append(dc_prev_j)
        return tuple(dh_prev), tuple(dc_prev)

    final = (load_chunks(dhT_ref, C, n_chunks), load_chunks(dcT_ref, C, n_chunks))
    dh0, dc0 = jax.lax.fori_loop(0, num_steps, step, final)
    store_chunks(dh0_ref, dh0)
    store_chunks(dc0_ref, dc0)


def _wide_forward_kernel(px_ref, w_ref, h0_ref, c0_ref, _counters_in, hs_ref, c_T_ref, *refs,
                         tiles, programs, on_chip, compiled):
    """Cooperative forward loop for wide states: program (p, b) computes the
    ``tiles`` column tiles ``p·tiles …`` (``WIDE_TILE`` columns each) of batch
    tile b, reading the whole ``h_{t-1}`` that all programs wrote at step t − 1;
    a grid barrier ends each step. ``refs``: the residual refs (as in
    :func:`_forward_kernel`), then the barrier counters and the stalled flags."""
    from jax.experimental import pallas as pl

    *residual_refs, counters_ref, stalled_ref = refs
    H, N, K = h0_ref.shape[-1], WIDE_TILE, MAX_CHUNK
    p, b = pl.program_id(0), pl.program_id(1)
    rows = slice(None)
    cols = lambda tile, gate=0: pl.ds(gate * H + tile * N, N)
    mine = [p * tiles + i for i in range(tiles)]
    w = wide_weight_blocks(lambda i, g, k: w_ref[pl.ds(k * K, K), cols(mine[i], g)], tiles, H // K, on_chip)

    def step(t, carry):
        c, stalled = carry  # c: tiles blocks of (B, N)
        pre = [[load(px_ref, (t, rows, cols(tile, g))) for g in range(4)] for tile in mine]
        for k in range(H // K):  # one chunk of h_{t-1} at a time: few registers live
            h_k = jnp.where(t > 0, load(hs_ref, (jnp.maximum(t - 1, 0), rows, pl.ds(k * K, K))),
                            load(h0_ref, (rows, pl.ds(k * K, K))))
            pre = [[a + matmul(h_k, w(i, g, k)) for g, a in enumerate(pre_i)] for i, pre_i in enumerate(pre)]
        c_new = []
        for i, tile in enumerate(mine):
            acts, c_i, h_i = _cell_update(pre[i], c[i])
            c_new.append(c_i)
            _store_step(hs_ref, residual_refs, t, functools.partial(cols, tile), acts, c_i, h_i)
        stalled = grid_barrier(counters_ref, b, (t + 1) * programs, stalled, max_spins=MAX_SPINS, compiled=compiled)
        return tuple(c_new), stalled

    initial = tuple(load(c0_ref, (rows, cols(tile))) for tile in mine), b < 0
    c_T, stalled = jax.lax.fori_loop(0, px_ref.shape[0], step, initial)
    for tile, c_i in zip(mine, c_T):
        store(c_T_ref, (rows, cols(tile)), c_i)
    stalled_ref[b, p] = stalled.astype(jnp.int32)


def _wide_backward_kernel(gates_ref, cs_ref, c0_ref, dys_ref, dhT_ref, dcT_ref, w_ref, _counters_in,
                          dpre_ref, dh0_ref, dc0_ref, counters_ref, stalled_ref, *, tiles, programs, on_chip, compiled):
    """Cooperative reverse loop (layout as :func:`_wide_forward_kernel`): each
    program writes its tiles' share of ``dpre[t]``, waits at the grid barrier,
    then reads all of ``dpre[t]`` for its tiles of ``dh_{t-1} = dpre[t] W_hᵀ``."""
    from jax.experimental import pallas as pl

    num_steps, H, N, K = gates_ref.shape[0], c0_ref.shape[-1], WIDE_TILE, MAX_CHUNK
    p, b = pl.program_id(0), pl.program_id(1)
    rows = slice(None)
    cols = lambda tile, gate=0: pl.ds(gate * H + tile * N, N)
    mine = [p * tiles + i for i in range(tiles)]
    # rows of W_h for this program's tiles: block (i, g, k) is (N, K)
    w = wide_weight_blocks(lambda i, g, k: w_ref[cols(mine[i]), pl.ds(g * H + k * K, K)], tiles, H // K, on_chip)

    def step(s, carry):
        dh, dc, stalled = carry  # tiles blocks of (B, N) each
        t = num_steps - 1 - s
        dc_prev = []
        for i, tile in enumerate(mine):
            _, dc_i = _cell_grads(gates_ref, cs_ref, c0_ref, dys_ref, dpre_ref, t, functools.partial(cols, tile),
                                  dh[i], dc[i])
            dc_prev.append(dc_i)
        stalled = grid_barrier(counters_ref, b, (s + 1) * programs, stalled, max_spins=MAX_SPINS, compiled=compiled)
        dh_prev = [jnp.zeros_like(dh_i) for dh_i in dh]
        for g in range(4):
            for k in range(H // K):  # one chunk of dpre[t] at a time
                d = load(dpre_ref, (t, rows, pl.ds(g * H + k * K, K)))
                dh_prev = [a + matmul_t(d, w(i, g, k)) for i, a in enumerate(dh_prev)]
        return tuple(dh_prev), tuple(dc_prev), stalled

    initial = (tuple(load(dhT_ref, (rows, cols(tile))) for tile in mine),
               tuple(load(dcT_ref, (rows, cols(tile))) for tile in mine), b < 0)
    dh0, dc0, stalled = jax.lax.fori_loop(0, num_steps, step, initial)
    for tile, dh_i, dc_i in zip(mine, dh0, dc0):
        store(dh0_ref, (rows, cols(tile)), dh_i)
        store(dc0_ref, (rows, cols(tile)), dc_i)
    stalled_ref[b, p] = stalled.astype(jnp.int32)


def wide_weight_blocks(load_block, tiles, num_chunks, on_chip):
    """``block(i, g, k)`` (tile i, gate g, chunk k of ``MAX_CHUNK`` rows or columns)
    for the wide kernels, from ``load_block(i, g, k)``: loaded here, once, when
    ``on_chip`` (call this outside the time loop), else at each use."""
    if not on_chip:
        return load_block
    blocks = {(i, g, k): load_block(i, g, k) for i in range(tiles) for g in range(4) for k in range(num_chunks)}
    return lambda i, g, k: blocks[i, g, k]


@functools.partial(custom_vjp, nondiff_argnums=(4, 5, 6))
def lstm_loop(projected, w_h, h0, c0, interpret=False, on_chip=None, programs=None):
    """``projected (T, B, 4H)`` (bias included), ``w_h (H, 4H)``, ``h0``/``c0 (B, H)``,
    ``B`` a multiple of 16 -> ``(hs (T, B, H), (h_T, c_T))`` in the carry's dtype.
    ``on_chip``: keep ``w_h`` (or, with ``programs``, each program's share) on chip
    for the whole loop (``None``: if it fits; see :func:`jrnn.kernels._pallas.weights_on_chip`
    and :func:`wide_weights_on_chip`).
    ``programs``: None for one program per batch tile (H in ``HIDDEN_SIZES``);
    else the wide kernels, with that many cooperating programs per batch tile
    (H a multiple of 64; ``H / WIDE_TILE`` on a GPU, 1 in interpret mode)."""
    kernel = lambda *args: tuple(_forward(*args, interpret, on_chip, programs, save=False))
    hs, c_T = with_reference(kernel, lambda *args: reference_forward(*args)[:2])(projected, w_h, h0, c0)
    return hs, (hs[-1], c_T.astype(c0.dtype))


def _forward(projected, w_h, h0, c0, interpret, on_chip, programs, *, save):
    T, B, G = projected.shape
    H = G // 4
    outputs = [((T, B, H), h0.dtype, "tb"), ((B, H), jnp.float32, "b")]
    if save:
        outputs += [((T, B, H), jnp.float32, "tb"), ((T, B, G), jnp.float32, "tb")]
    kernel = _kernel(_forward_kernel, _wide_forward_kernel, w_h, interpret, on_chip, programs)
    return _unless_stalled(call(kernel, (projected, w_h, h0, c0), ("tb", "w", "b", "b"), outputs, interpret,
                                programs), programs)


def _kernel(one_program_kernel, wide_kernel, w_h, interpret, on_chip, programs):
    """The kernel that ``programs`` asks for (see :func:`lstm_loop`), its options bound."""
    if programs is None:
        return functools.partial(one_program_kernel, on_chip=on_chip)
    on_chip = wide_weights_on_chip(w_h) if on_chip is None else on_chip
    return functools.partial(wide_kernel, tiles=w_h.shape[0] // WIDE_TILE // programs, programs=programs,
                             on_chip=on_chip, compiled=not interpret)


def _unless_stalled(results, programs):
    """The wide kernels' outputs, all NaN where a program gave up at a grid barrier
    (its programs could not all run at once): never silently wrong."""
    if programs is None:
        return results
    *results, stalled = results
    return [jnp.where(jnp.any(stalled > 0), jnp.nan, r).astype(r.dtype) for r in results]


def _lstm_loop_fwd(projected, w_h, h0, c0, interpret, on_chip, programs):
    kernel = lambda *args: tuple(_forward(*args, interpret, on_chip, programs, save=True))
    hs, c_T, cs, gates = with_reference(kernel, reference_forward)(projected, w_h, h0, c0)
    return (hs, (hs[-1], c_T.astype(c0.dtype))), (jnp.zeros((0,), projected.dtype), hs, cs, gates, w_h, h0, c0)


def _backward(gates, cs, h0, c0, d_hs, d_hT, d_cT, w_h, interpret, on_chip, programs):
    T, B, G = gates.shape
    H = G // 4
    kernel = _kernel(_backward_kernel, _wide_backward_kernel, w_h, interpret, on_chip, programs)
    return tuple(_unless_stalled(
        call(kernel, (gates, cs, c0, d_hs, d_hT, d_cT, w_h), ("tb", "tb", "b", "tb", "b", "b", "w"),
             [((T, B, G), jnp.float32, "tb"), ((B, H), h0.dtype, "b"), ((B, H), c0.dtype, "b")], interpret,
             programs), programs))


def _lstm_loop_bwd(interpret, on_chip, programs, saved, cotangents):
    px_like, hs, cs, gates, w_h, h0, c0 = saved  # px_like: an empty array of projected's dtype
    d_hs, (d_hT, d_cT) = cotangents
    G = gates.shape[-1]
    H = G // 4
    kernel = functools.partial(_backward, interpret=interpret, on_chip=on_chip, programs=programs)
    dpre, dh0, dc0 = with_reference(kernel, reference_backward)(gates, cs, h0, c0, d_hs, d_hT, d_cT, w_h)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = jnp.dot(h_prev.reshape(-1, H).T, dpre.reshape(-1, G), preferred_element_type=jnp.float32)
    return dpre.astype(px_like.dtype), d_w.astype(w_h.dtype), dh0, dc0


lstm_loop.defvjp(_lstm_loop_fwd, _lstm_loop_bwd)


def is_wide(hidden_size) -> bool:
    """Whether the cooperative (wide) kernels take this hidden size: a multiple of
    64 above ``MIN_WIDE`` (the largest of ``HIDDEN_SIZES``), at most ``MAX_WIDE``."""
    return MIN_WIDE < hidden_size <= MAX_WIDE and hidden_size % MAX_CHUNK == 0


def wide_weights_on_chip(w_h) -> bool:
    """Whether one wide program's weights (4 gates × ``WIDE_TILE`` columns of ``w_h``)
    fit on chip: float32 up to H = 800, bfloat16 up to H = 1600."""
    return 4 * WIDE_TILE * w_h.shape[0] * jnp.dtype(w_h.dtype).itemsize <= _pallas.ON_CHIP_BYTES


def weights_stay_on_chip(w_h) -> bool:
    """Whether the kernels :func:`pallas_scan` runs for ``w_h (H, 4H)`` keep the
    recurrent weights on chip: :func:`wide_weights_on_chip` for wide states,
    :func:`jrnn.kernels._pallas.weights_on_chip` otherwise."""
    return wide_weights_on_chip(w_h) if is_wide(w_h.shape[0]) else weights_on_chip(w_h)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for an LSTM: ``projected (T, *batch, 4H)`` -> ``(LSTMState, ys)``.

    Raises:
      ValueError: a wide hidden size on a GPU with fewer multiprocessors than the
        cooperating programs need (``H / WIDE_TILE`` per batch tile of 16 rows).
    """
    from jrnn.cells import LSTMState

    px, (h0, c0), untile = tiled(projected, carry)
    w_h = params.w_h.astype(px.dtype)
    interpret = interpret_default(interpret)
    programs = None
    if is_wide(cell.hidden_size):
        programs = 1 if interpret else cell.hidden_size // WIDE_TILE
        needed, available = programs * (px.shape[1] // BLOCK_B), getattr(jax.devices()[0], "core_count", None)
        if not interpret and available is not None and needed > available:
            raise ValueError(f"implementation: 'pallas' at hidden size {cell.hidden_size} needs {needed} programs "
                             f"running at once (H/{WIDE_TILE} per 16 batch rows), more than the GPU's "
                             f"{available} multiprocessors; use a smaller batch or 'fused'")
    hs, (h_T, c_T) = lstm_loop(px, w_h, h0, c0, interpret, weights_stay_on_chip(w_h), programs)
    return LSTMState(untile(h_T), untile(c_T)), untile(hs)


def reference(projected, w_h, h0, c0):
    """:func:`lstm_loop` in plain JAX, for tests."""
    hs, c_T, _, _ = reference_forward(projected, w_h, h0, c0)
    return hs, (hs[-1], c_T.astype(c0.dtype))


def reference_forward(projected, w_h, h0, c0):
    """What the forward kernels compute for the VJP, in plain JAX (``lax.scan``):
    ``hs (T, B, H)`` in ``h0``'s dtype, and in float32 ``c_T (B, H)``, the cell
    states ``cs (T, B, H)`` and the activated gates i, f, g, o ``(T, B, 4H)``.
    The kernels' derivatives are this function's (:mod:`jrnn.kernels._with_reference`)."""
    f32 = jnp.float32

    def step(carry, px):
        h, c = carry
        a = px.astype(f32) + jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=f32)
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

    (_, c_T), (hs, cs, gates) = jax.lax.scan(step, (h0.astype(f32), c0.astype(f32)), projected)
    return hs.astype(h0.dtype), c_T, cs, gates


def reference_backward(gates, cs, h0, c0, d_hs, d_hT, d_cT, w_h):
    """What the backward kernels compute, in plain JAX (``lax.scan`` in reverse):
    from :func:`reference_forward`'s residuals and the gradients of ``hs``, ``h_T``
    and ``c_T``, the pre-activation gradients ``dpre (T, B, 4H)`` (float32), ``dh_0``
    and ``dc_0``. ``dh_{t-1} = dpre_t W_hᵀ``; ``dc_{t-1} = dc_t ⊙ f_t``."""
    f32 = jnp.float32
    c_prev = jnp.concatenate([c0.astype(f32)[None], cs[:-1]], axis=0)

    def step(carry, inputs):
        dh, dc = carry
        acts, c, c_before, dy = inputs
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        dh = dh + dy.astype(f32)
        tc = jnp.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        dpre = jnp.concatenate([dc * g * i * (1 - i), dc * c_before * f * (1 - f), dc * i * (1 - g * g),
                                dh * tc * o * (1 - o)], axis=-1)
        dh_prev = jnp.dot(dpre.astype(w_h.dtype), w_h.T, preferred_element_type=f32)
        return (dh_prev, dc * f), dpre

    (dh0, dc0), dpre = jax.lax.scan(step, (d_hT.astype(f32), d_cT.astype(f32)), (gates, cs, c_prev, d_hs),
                                    reverse=True)
    return dpre, dh0.astype(h0.dtype), dc0.astype(c0.dtype)
