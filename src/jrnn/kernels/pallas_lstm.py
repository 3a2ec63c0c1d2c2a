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
same kernel), a custom VJP, and the plain reference (:func:`reference`).

Supported: LSTM with hidden size 16, 32, 48, 64, 96, 128, 192 or 256 (the
state is split into at most 4 chunks of 16, 32 or 64 columns, see
:func:`jrnn.kernels._pallas.chunking`), no ``seq_lengths``, ``reverse``,
resets or recurrent dropout (``jrnn.scan`` refuses those with
``implementation="pallas"``).

Status (2026-11-26): values and gradients equal the reference and the plain
path in interpret mode on CPU, and forward and backward pass the Triton
lowering for CUDA there (tests); an earlier version equalled the plain path on
an H100 at H = 64; not yet timed on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels._pallas import (
    HIDDEN_SIZES,
    add_recurrent_product_t,
    call,
    chunking,
    columns,
    interpret_default,
    load,
    load_chunks,
    recurrent_product,
    sigmoid,
    store,
    store_chunks,
    tiled,
    weight_blocks,
    weights_on_chip,
)


def supports(cell) -> bool:
    """Whether the kernel implements this cell (an LSTM with H in ``HIDDEN_SIZES``)."""
    from jrnn.cells import LSTMCell

    return isinstance(cell, LSTMCell) and cell.hidden_size in HIDDEN_SIZES


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
            i, f, o = sigmoid(pre[0]), sigmoid(pre[1]), sigmoid(pre[3])
            g = jnp.tanh(pre[2])
            c_new.append(f * c[j] + i * g)
            h_new.append(o * jnp.tanh(c_new[j]))
            store(hs_ref, (t, rows, columns(j, C)), h_new[j])
            if residual_refs:
                cs_ref, gates_ref = residual_refs
                store(cs_ref, (t, rows, columns(j, C)), c_new[j])
                for k, act in enumerate((i, f, g, o)):
                    store(gates_ref, (t, rows, columns(j, C, k, H)), act)
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
    rows = slice(None)
    w = weight_blocks(w_ref, 4, on_chip)

    def step(s, carry):
        dh, dc = carry  # n_chunks chunks each, (B, C)
        t = num_steps - 1 - s
        dh_prev, dc_prev = [jnp.zeros_like(dh[0])] * n_chunks, []
        for j in range(n_chunks):
            i, f, g, o = (load(gates_ref, (t, rows, columns(j, C, k, H))) for k in range(4))
            c = load(cs_ref, (t, rows, columns(j, C)))
            c_prev = jnp.where(t > 0, load(cs_ref, (jnp.maximum(t - 1, 0), rows, columns(j, C))),
                               load(c0_ref, (rows, columns(j, C))))
            dh_j = dh[j] + load(dys_ref, (t, rows, columns(j, C)))
            tc = jnp.tanh(c)
            dc_j = dc[j] + dh_j * o * (1 - tc * tc)
            grads = (dc_j * g * i * (1 - i), dc_j * c_prev * f * (1 - f), dc_j * i * (1 - g * g),
                     dh_j * tc * o * (1 - o))
            for k, d in enumerate(grads):
                store(dpre_ref, (t, rows, columns(j, C, k, H)), d)
            dh_prev = add_recurrent_product_t(dh_prev, grads, w, j)
            dc_prev.append(dc_j * f)
        return tuple(dh_prev), tuple(dc_prev)

    final = (load_chunks(dhT_ref, C, n_chunks), load_chunks(dcT_ref, C, n_chunks))
    dh0, dc0 = jax.lax.fori_loop(0, num_steps, step, final)
    store_chunks(dh0_ref, dh0)
    store_chunks(dc0_ref, dc0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lstm_loop(projected, w_h, h0, c0, interpret=False, on_chip=None):
    """``projected (T, B, 4H)`` (bias included), ``w_h (H, 4H)``, ``h0``/``c0 (B, H)``,
    ``B`` a multiple of 16 -> ``(hs (T, B, H), (h_T, c_T))`` in the carry's dtype.
    ``on_chip``: keep ``w_h`` on chip for the whole loop (``None``: if it fits; see
    :func:`jrnn.kernels._pallas.weight_blocks`)."""
    hs, c_T = _forward(projected, w_h, h0, c0, interpret, on_chip, save=False)
    return hs, (hs[-1], c_T.astype(c0.dtype))


def _forward(projected, w_h, h0, c0, interpret, on_chip, *, save):
    T, B, G = projected.shape
    H = G // 4
    outputs = [((T, B, H), h0.dtype, "tb"), ((B, H), jnp.float32, "b")]
    if save:
        outputs += [((T, B, H), jnp.float32, "tb"), ((T, B, G), jnp.float32, "tb")]
    kernel = functools.partial(_forward_kernel, on_chip=on_chip)
    return call(kernel, (projected, w_h, h0, c0), ("tb", "w", "b", "b"), outputs, interpret)


def _lstm_loop_fwd(projected, w_h, h0, c0, interpret, on_chip):
    hs, c_T, cs, gates = _forward(projected, w_h, h0, c0, interpret, on_chip, save=True)
    return (hs, (hs[-1], c_T.astype(c0.dtype))), (jnp.zeros((0,), projected.dtype), hs, cs, gates, w_h, h0, c0)


def _lstm_loop_bwd(interpret, on_chip, saved, cotangents):
    px_like, hs, cs, gates, w_h, h0, c0 = saved  # px_like: an empty array of projected's dtype
    d_hs, (d_hT, d_cT) = cotangents
    T, B, G = gates.shape
    H = G // 4
    kernel = functools.partial(_backward_kernel, on_chip=on_chip)
    dpre, dh0, dc0 = call(kernel, (gates, cs, c0, d_hs, d_hT, d_cT, w_h), ("tb", "tb", "b", "tb", "b", "b", "w"),
                          [((T, B, G), jnp.float32, "tb"), ((B, H), h0.dtype, "b"), ((B, H), c0.dtype, "b")],
                          interpret)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = jnp.dot(h_prev.reshape(-1, H).T, dpre.reshape(-1, G), preferred_element_type=jnp.float32)
    return dpre.astype(px_like.dtype), d_w.astype(w_h.dtype), dh0, dc0


lstm_loop.defvjp(_lstm_loop_fwd, _lstm_loop_bwd)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for an LSTM: ``projected (T, *batch, 4H)`` -> ``(LSTMState, ys)``."""
    from jrnn.cells import LSTMState

    px, (h0, c0), untile = tiled(projected, carry)
    w_h = params.w_h.astype(px.dtype)
    hs, (h_T, c_T) = lstm_loop(px, w_h, h0, c0, interpret_default(interpret), weights_on_chip(w_h))
    return LSTMState(untile(h_T), untile(c_T)), untile(hs)


def reference(projected, w_h, h0, c0):
    """The same loop in plain JAX (``lax.scan``), for tests."""

    def step(carry, px):
        h, c = carry
        a = px + h @ w_h
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), hs = jax.lax.scan(step, (h0, c0), projected)
    return hs, (h, c)
