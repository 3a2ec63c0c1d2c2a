"""A Pallas GRU time loop (reset-after, the cuDNN/PyTorch/Keras variant): the
whole sequence in one kernel launch.

The same design as :mod:`jrnn.kernels.pallas_lstm`: one program per batch tile
runs the time loop, so a GPU pays no kernel launch per step; the backward
kernel runs the reverse loop and emits the pre-activation gradients, and
``dW_h = Σ_t h_{t-1}ᵀ (da_z, da_r, da_n ⊙ r)_t`` is one matrix product after
it. A wrapper with ``interpret=`` (CPU tests run the same kernel), a custom
VJP, and the plain reference (:func:`reference`) sit in this file.

Per step, with ``a = h_{t-1} W_h`` split into z, r, n blocks and ``px`` the
input projection with its bias::

    z = σ(px_z + a_z),  r = σ(px_r + a_r),  hn = a_n + b_hn
    n = tanh(px_n + r ⊙ hn),  h_t = (1 − z) ⊙ h_{t-1} + z ⊙ n

Supported: ``jrnn.gru(H, reset_after=True)`` with H in 16, 32, 64, 128; no
``seq_lengths``, ``reverse``, resets or recurrent dropout.

Status (2026-11-26): values and gradients equal the reference and the plain
path in interpret mode on CPU; not yet run on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels._pallas import (
    BLOCK_B,
    HIDDEN_SIZES,
    NT,
    call,
    interpret_default,
    sigmoid,
    tiled,
)


def supports(cell) -> bool:
    """Whether the kernel implements this cell (a reset-after GRU with H in 16, 32, 64, 128)."""
    from jrnn.cells import GRUCell

    return isinstance(cell, GRUCell) and cell.reset_after and cell.hidden_size in HIDDEN_SIZES


def _forward_kernel(px_ref, w_ref, b_hn_ref, h0_ref, hs_ref, acts_ref):
    """Saves ``acts (T, B, 4H)``: z, r, n and hn, for the backward kernel."""
    from jax.experimental import pallas as pl

    num_steps = px_ref.shape[0]
    H = h0_ref.shape[-1]
    block = lambda k: pl.ds(k * H, H)

    def step(t, h):
        a = [jnp.dot(h, w_ref[:, block(k)]) for k in range(3)]
        z = sigmoid(px_ref[t, :, block(0)] + a[0])
        r = sigmoid(px_ref[t, :, block(1)] + a[1])
        hn = a[2] + b_hn_ref[...]
        n = jnp.tanh(px_ref[t, :, block(2)] + r * hn)
        h = (1 - z) * h + z * n
        for k, act in enumerate((z, r, n, hn)):
            acts_ref[t, :, block(k)] = act
        hs_ref[t] = h
        return h

    jax.lax.fori_loop(0, num_steps, step, h0_ref[...])


def _backward_kernel(acts_ref, hs_ref, h0_ref, dys_ref, dhT_ref, w_ref, dpx_ref, dh0_ref):
    """Writes ``d_px (T, B, 3H) = (da_z, da_r, da_n)`` and ``dh_0``."""
    from jax.experimental import pallas as pl

    num_steps = acts_ref.shape[0]
    H = h0_ref.shape[-1]
    block = lambda k: pl.ds(k * H, H)

    def step(s, dh):
        t = num_steps - 1 - s
        z, r, n, hn = (acts_ref[t, :, block(k)] for k in range(4))
        h_prev = jnp.where(t > 0, hs_ref[jnp.maximum(t - 1, 0)], h0_ref[...])
        dh = dh + dys_ref[t]
        da_z = dh * (n - h_prev) * z * (1 - z)
        da_n = dh * z * (1 - n * n)
        da_r = da_n * hn * r * (1 - r)
        dh_prev = dh * (1 - z)
        for k, (d_px, d_a) in enumerate(((da_z, da_z), (da_r, da_r), (da_n, da_n * r))):
            dpx_ref[t, :, block(k)] = d_px
            dh_prev = dh_prev + jax.lax.dot_general(d_a, w_ref[:, block(k)], NT)
        return dh_prev

    dh0_ref[...] = jax.lax.fori_loop(0, num_steps, step, dhT_ref[...])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gru_loop(projected, w_h, b_hn, h0, interpret=False):
    """``projected (T, B, 3H)`` (bias included), ``b_hn (H,)``, ``B`` a multiple of 16
    -> ``(hs (T, B, H), h_T)``."""
    hs, _ = _forward(projected, w_h, b_hn, h0, interpret)
    return hs, hs[-1]


def _forward(projected, w_h, b_hn, h0, interpret):
    T, B, G = projected.shape
    H = G // 3
    b_hn_tile = jnp.broadcast_to(b_hn.astype(projected.dtype), (BLOCK_B, H))
    return call(_forward_kernel, (projected, w_h, b_hn_tile, h0), ("tb", "w", "w", "b"),
                [(T, B, H), (T, B, 4 * H)], ["tb", "tb"], interpret)


def _gru_loop_fwd(projected, w_h, b_hn, h0, interpret):
    hs, acts = _forward(projected, w_h, b_hn, h0, interpret)
    return (hs, hs[-1]), (hs, acts, w_h, h0)


def _gru_loop_bwd(interpret, saved, cotangents):
    hs, acts, w_h, h0 = saved
    d_hs, d_hT = cotangents
    T, B, H = hs.shape
    d_px, dh0 = call(_backward_kernel, (acts, hs, h0, d_hs, d_hT, w_h), ("tb", "tb", "b", "tb", "b", "w"),
                     [(T, B, 3 * H), (B, H)], ["tb", "b"], interpret)
    r = acts[..., H : 2 * H]
    d_a = jnp.concatenate([d_px[..., : 2 * H], d_px[..., 2 * H :] * r], axis=-1)  # gradient of h_{t-1} W_h
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = h_prev.reshape(-1, H).T @ d_a.reshape(-1, 3 * H)
    d_b_hn = d_a[..., 2 * H :].sum(axis=(0, 1))
    return d_px, d_w, d_b_hn, dh0


gru_loop.defvjp(_gru_loop_fwd, _gru_loop_bwd)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for a reset-after GRU: ``projected (T, *batch, 3H)`` -> ``(h_T, ys)``."""
    px, (h0,), untile = tiled(projected, [carry])
    hs, h_T = gru_loop(px, params.w_h.astype(px.dtype), params.b_hn, h0, interpret_default(interpret))
    return untile(h_T), untile(hs)


def reference(projected, w_h, b_hn, h0):
    """The same loop in plain JAX (``lax.scan``), for tests."""
    H = h0.shape[-1]

    def step(h, px):
        a = h @ w_h
        z = jax.nn.sigmoid(px[..., :H] + a[..., :H])
        r = jax.nn.sigmoid(px[..., H : 2 * H] + a[..., H : 2 * H])
        n = jnp.tanh(px[..., 2 * H :] + r * (a[..., 2 * H :] + b_hn))
        h = (1 - z) * h + z * n
        return h, h

    h, hs = jax.lax.scan(step, h0, projected)
    return hs, h
