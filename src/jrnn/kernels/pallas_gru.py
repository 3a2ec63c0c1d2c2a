"""A Pallas GRU time loop (reset-after, the cuDNN/PyTorch/Keras variant): the
whole sequence in one kernel launch.

The same design as :mod:`jrnn.kernels.pallas_lstm`: one program per batch tile
runs the time loop, so a GPU pays no kernel launch per step; the weights stay
in shared memory where they fit (up to H = 128); the
gate math runs in float32; the backward
kernel runs the reverse loop and emits the pre-activation gradients, and
``dW_h = Σ_t h_{t-1}ᵀ (da_z, da_r, da_n ⊙ r)_t`` is one matrix product after
it. A wrapper with ``interpret=`` (CPU tests run the same kernel), a custom
VJP, and the plain references (:func:`reference_forward`,
:func:`reference_backward`, as JAX differentiates the kernels) sit in this file.

Per step, with ``a = h_{t-1} W_h`` split into z, r, n blocks and ``px`` the
input projection with its bias::

    z = σ(px_z + a_z),  r = σ(px_r + a_r),  hn = a_n + b_hn
    n = tanh(px_n + r ⊙ hn),  h_t = (1 − z) ⊙ h_{t-1} + z ⊙ n

Supported: ``jrnn.gru(H, reset_after=True)`` with H in 16, 32, 48, 64, 96,
128, 192, 256; no ``seq_lengths``, ``reverse``, resets or recurrent dropout.

Status (2026-11-27): values and gradients equal the reference and the plain
path in interpret mode on CPU (tests), and the plain path on an H100 and an
H200 at H = 64 and 128 in float32, and on the H100 at H = 128 in bfloat16.
Not yet timed on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn._ranks import add_bias
from jrnn.kernels._custom_vjp import custom_vjp
from jrnn.kernels._pallas import (
    BLOCK_B,
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
from jrnn.kernels._with_reference import with_reference


def supports(cell) -> bool:
    """Whether the kernel implements this cell (a reset-after GRU with H in ``HIDDEN_SIZES``)."""
    from jrnn.cells import GRUCell

    return isinstance(cell, GRUCell) and cell.reset_after and cell.hidden_size in HIDDEN_SIZES


def _forward_kernel(px_ref, w_ref, b_hn_ref, h0_ref, hs_ref, *residual_refs, on_chip):
    """Writes ``hs``; with ``residual_refs = (acts_ref,)`` also ``acts (T, B, 4H)``:
    z, r, n and hn, for the backward kernel."""
    H = h0_ref.shape[-1]
    C, n_chunks = chunking(H)
    rows = slice(None)
    w = weight_blocks(w_ref, 3, on_chip)
    b_hn = load_chunks(b_hn_ref, C, n_chunks)

    def step(t, h):  # h: n_chunks chunks (B, C)
        h_new = []
        for j in range(n_chunks):
            a = [recurrent_product(h, w, g, j) for g in range(3)]
            z = sigmoid(load(px_ref, (t, rows, columns(j, C, 0, H))) + a[0])
            r = sigmoid(load(px_ref, (t, rows, columns(j, C, 1, H))) + a[1])
            hn = a[2] + b_hn[j]
            n = jnp.tanh(load(px_ref, (t, rows, columns(j, C, 2, H))) + r * hn)
            h_new.append((1 - z) * h[j] + z * n)
            store(hs_ref, (t, rows, columns(j, C)), h_new[j])
            for acts_ref in residual_refs:
                for k, act in enumerate((z, r, n, hn)):
                    store(acts_ref, (t, rows, columns(j, C, k, H)), act)
        return tuple(h_new)

    jax.lax.fori_loop(0, px_ref.shape[0], step, load_chunks(h0_ref, C, n_chunks))


def _backward_kernel(acts_ref, hs_ref, h0_ref, dys_ref, dhT_ref, w_ref, dpx_ref, dh0_ref, *, on_chip):
    """Writes ``d_px (T, B, 3H) = (da_z, da_r, da_n)`` and ``dh_0``."""
    num_steps = acts_ref.shape[0]
    H = h0_ref.shape[-1]
    C, n_chunks = chunking(H)
    rows = slice(None)
    w = weight_blocks(w_ref, 3, on_chip)

    def step(s, dh):  # dh: n_chunks chunks (B, C)
        t = num_steps - 1 - s
        dh_prev = [jnp.zeros_like(dh[0])] * n_chunks
        for j in range(n_chunks):
            z, r, n, hn = (load(acts_ref, (t, rows, columns(j, C, k, H))) for k in range(4))
            h_prev = jnp.where(t > 0, load(hs_ref, (jnp.maximum(t - 1, 0), rows, columns(j, C))),
                               load(h0_ref, (rows, columns(j, C))))
            dh_j = dh[j] + load(dys_ref, (t, rows, columns(j, C)))
            da_z = dh_j * (n - h_prev) * z * (1 - z)
            da_n = dh_j * z * (1 - n * n)
            da_r = da_n * hn * r * (1 - r)
            for k, d_px in enumerate((da_z, da_r, da_n)):
                store(dpx_ref, (t, rows, columns(j, C, k, H)), d_px)
            dh_prev[j] = dh_prev[j] + dh_j * (1 - z)
            dh_prev = add_recurrent_product_t(dh_prev, (da_z, da_r, da_n * r), w, j)  # through h_{t-1} W_h
        return tuple(dh_prev)

    store_chunks(dh0_ref, jax.lax.fori_loop(0, num_steps, step, load_chunks(dhT_ref, C, n_chunks)))


@functools.partial(custom_vjp, nondiff_argnums=(4, 5))
def gru_loop(projected, w_h, b_hn, h0, interpret=False, on_chip=None):
    """``projected (T, B, 3H)`` (bias included), ``w_h (H, 3H)``, ``b_hn (H,)``,
    ``h0 (B, H)``, ``B`` a multiple of 16 -> ``(hs (T, B, H), h_T)`` in ``h0``'s dtype.
    ``on_chip``: keep ``w_h`` on chip for the whole loop (``None``: if it fits; see
    :func:`jrnn.kernels._pallas.weight_blocks`)."""
    kernel = lambda *args: tuple(_forward(*args, interpret, on_chip, save=False))
    (hs,) = with_reference(kernel, lambda *args: reference_forward(*args)[:1])(projected, w_h, b_hn, h0)
    return hs, hs[-1]


def _forward(projected, w_h, b_hn, h0, interpret, on_chip, *, save):
    T, B, G = projected.shape
    H = G // 3
    b_hn_tile = jnp.broadcast_to(b_hn.astype(jnp.float32), (BLOCK_B, H))
    outputs = [((T, B, H), h0.dtype, "tb")] + ([((T, B, 4 * H), jnp.float32, "tb")] if save else [])
    kernel = functools.partial(_forward_kernel, on_chip=on_chip)
    return call(kernel, (projected, w_h, b_hn_tile, h0), ("tb", "w", "w", "b"), outputs, interpret)


def _gru_loop_fwd(projected, w_h, b_hn, h0, interpret, on_chip):
    kernel = lambda *args: tuple(_forward(*args, interpret, on_chip, save=True))
    hs, acts = with_reference(kernel, reference_forward)(projected, w_h, b_hn, h0)
    return (hs, hs[-1]), (jnp.zeros((0,), projected.dtype), hs, acts, w_h, b_hn, h0)


def _backward(acts, hs, h0, d_hs, d_hT, w_h, interpret, on_chip):
    T, B, H = hs.shape
    kernel = functools.partial(_backward_kernel, on_chip=on_chip)
    return tuple(call(kernel, (acts, hs, h0, d_hs, d_hT, w_h), ("tb", "tb", "b", "tb", "b", "w"),
                      [((T, B, 3 * H), jnp.float32, "tb"), ((B, H), h0.dtype, "b")], interpret))


def _gru_loop_bwd(interpret, on_chip, saved, cotangents):
    px_like, hs, acts, w_h, b_hn, h0 = saved  # px_like: an empty array of projected's dtype
    d_hs, d_hT = cotangents
    H = hs.shape[-1]
    kernel = functools.partial(_backward, interpret=interpret, on_chip=on_chip)
    d_px, dh0 = with_reference(kernel, reference_backward)(acts, hs, h0, d_hs, d_hT, w_h)
    r = acts[..., H : 2 * H]
    d_a = jnp.concatenate([d_px[..., : 2 * H], d_px[..., 2 * H :] * r], axis=-1)  # gradient of h_{t-1} W_h
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = jnp.dot(h_prev.reshape(-1, H).T, d_a.reshape(-1, 3 * H), preferred_element_type=jnp.float32)
    d_b_hn = d_a[..., 2 * H :].sum(axis=(0, 1))
    return d_px.astype(px_like.dtype), d_w.astype(w_h.dtype), d_b_hn.astype(b_hn.dtype), dh0


gru_loop.defvjp(_gru_loop_fwd, _gru_loop_bwd)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for a reset-after GRU: ``projected (T, *batch, 3H)`` -> ``(h_T, ys)``."""
    px, (h0,), untile = tiled(projected, [carry])
    w_h = params.w_h.astype(px.dtype)
    hs, h_T = gru_loop(px, w_h, params.b_hn, h0, interpret_default(interpret), weights_on_chip(w_h))
    return untile(h_T), untile(hs)


def reference(projected, w_h, b_hn, h0):
    """:func:`gru_loop` in plain JAX, for tests."""
    hs, _ = reference_forward(projected, w_h, b_hn, h0)
    return hs, hs[-1]


def reference_forward(projected, w_h, b_hn, h0):
    """What the forward kernel computes for the VJP, in plain JAX (``lax.scan``):
    ``hs (T, B, H)`` in ``h0``'s dtype and the float32 activations z, r, n and
    hn ``(T, B, 4H)``. The kernels' derivatives are this function's
    (:mod:`jrnn.kernels._with_reference`)."""
    f32 = jnp.float32
    H = h0.shape[-1]

    def step(h, px):
        px = px.astype(f32)
        a = jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=f32)
        z = jax.nn.sigmoid(px[..., :H] + a[..., :H])
        r = jax.nn.sigmoid(px[..., H : 2 * H] + a[..., H : 2 * H])
        hn = add_bias(a[..., 2 * H :], b_hn.astype(f32))
        n = jnp.tanh(px[..., 2 * H :] + r * hn)
        h = (1 - z) * h + z * n
        return h, (h, jnp.concatenate([z, r, n, hn], axis=-1))

    _, (hs, acts) = jax.lax.scan(step, h0.astype(f32), projected)
    return hs.astype(h0.dtype), acts


def reference_backward(acts, hs, h0, d_hs, d_hT, w_h):
    """What the backward kernel computes, in plain JAX (``lax.scan`` in reverse):
    from :func:`reference_forward`'s residuals and the gradients of ``hs`` and
    ``h_T``, ``d_px = (da_z, da_r, da_n) (T, B, 3H)`` (float32) and ``dh_0``.
    ``dh_{t-1} = dh_t ⊙ (1 − z_t) + (da_z, da_r, da_n ⊙ r)_t W_hᵀ``."""
    f32 = jnp.float32
    H = h0.shape[-1]
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0).astype(f32)

    def step(dh, inputs):
        a, h_before, dy = inputs
        z, r, n, hn = (a[..., k * H : (k + 1) * H] for k in range(4))
        dh = dh + dy.astype(f32)
        da_z = dh * (n - h_before) * z * (1 - z)
        da_n = dh * z * (1 - n * n)
        da_r = da_n * hn * r * (1 - r)
        d_a = jnp.concatenate([da_z, da_r, da_n * r], axis=-1)
        dh_prev = dh * (1 - z) + jnp.dot(d_a.astype(w_h.dtype), w_h.T, preferred_element_type=f32)
        return dh_prev, jnp.concatenate([da_z, da_r, da_n], axis=-1)

    dh0, d_px = jax.lax.scan(step, d_hT.astype(f32), (acts, h_prev, d_hs), reverse=True)
    return d_px, dh0.astype(h0.dtype)
