"""A Pallas LSTM time loop: the whole sequence in one kernel launch.

A ``lax.scan`` on a GPU launches several kernels per time step; this kernel
runs the time loop inside one program per batch tile, so the per-step launch
cost disappears (the recurrent weights are re-read from L2 each step). The
backward kernel runs the reverse loop the same way and emits the gate
gradients; ``dW_h = Σ_t h_{t-1}ᵀ dG_t`` is then one matrix product, as in
:mod:`jrnn.kernels.fused`. Layout as JAX's own Pallas ops: kernels, a wrapper
with ``interpret=`` (so CPU tests run the same kernel), a custom VJP, and the
plain reference (:func:`reference`).

Supported: LSTM, hidden size a power of two from 16 to 128, no ``seq_lengths``,
``reverse``, resets or recurrent dropout (``jrnn.scan`` refuses those with
``implementation="pallas"``). Each gate's ``(H, H)`` weight block is a dot
operand staged in shared memory: at H = 512 the H100 refused the kernel
(8.9 MB requested, 227 KB available), hence the bound.

Status (2026-11-26): values and gradients equal the plain path on an H100 at
H = 64 and in interpret mode on CPU; not yet timed on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.kernels._pallas import HIDDEN_SIZES, NT, call, interpret_default, sigmoid, tiled


def supports(cell) -> bool:
    """Whether the kernel implements this cell (an LSTM with H in 16, 32, 64, 128)."""
    from jrnn.cells import LSTMCell

    return isinstance(cell, LSTMCell) and cell.hidden_size in HIDDEN_SIZES


def _forward_kernel(px_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, gates_ref):
    from jax.experimental import pallas as pl

    num_steps = px_ref.shape[0]
    H = h0_ref.shape[-1]
    block = lambda k: pl.ds(k * H, H)

    def step(t, carry):
        h, c = carry
        pre = [px_ref[t, :, block(k)] + jnp.dot(h, w_ref[:, block(k)]) for k in range(4)]
        i, f, o = sigmoid(pre[0]), sigmoid(pre[1]), sigmoid(pre[3])
        g = jnp.tanh(pre[2])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        for k, act in enumerate((i, f, g, o)):
            gates_ref[t, :, block(k)] = act
        hs_ref[t] = h
        cs_ref[t] = c
        return h, c

    jax.lax.fori_loop(0, num_steps, step, (h0_ref[...], c0_ref[...]))


def _backward_kernel(gates_ref, cs_ref, c0_ref, dys_ref, dhT_ref, dcT_ref, w_ref, dpre_ref, dh0_ref, dc0_ref):
    from jax.experimental import pallas as pl

    num_steps = gates_ref.shape[0]
    H = c0_ref.shape[-1]
    block = lambda k: pl.ds(k * H, H)

    def step(s, carry):
        dh, dc = carry
        t = num_steps - 1 - s
        i, f, g, o = (gates_ref[t, :, block(k)] for k in range(4))
        c = cs_ref[t]
        c_prev = jnp.where(t > 0, cs_ref[jnp.maximum(t - 1, 0)], c0_ref[...])
        dh = dh + dys_ref[t]
        tc = jnp.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        d_pre = (dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o))
        dh_prev = jnp.zeros_like(dh)
        for k, d in enumerate(d_pre):
            dpre_ref[t, :, block(k)] = d
            dh_prev = dh_prev + jax.lax.dot_general(d, w_ref[:, block(k)], NT)
        return dh_prev, dc * f

    dh0, dc0 = jax.lax.fori_loop(0, num_steps, step, (dhT_ref[...], dcT_ref[...]))
    dh0_ref[...] = dh0
    dc0_ref[...] = dc0


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_loop(projected, w_h, h0, c0, interpret=False):
    """``projected (T, B, 4H)`` (bias included), ``B`` a multiple of 16 -> ``(hs (T, B, H), (h_T, c_T))``."""
    hs, cs, _ = _forward(projected, w_h, h0, c0, interpret)
    return hs, (hs[-1], cs[-1])


def _forward(projected, w_h, h0, c0, interpret):
    T, B, G = projected.shape
    H = G // 4
    return call(_forward_kernel, (projected, w_h, h0, c0), ("tb", "w", "b", "b"),
                 [(T, B, H), (T, B, H), (T, B, G)], ["tb", "tb", "tb"], interpret)


def _lstm_loop_fwd(projected, w_h, h0, c0, interpret):
    hs, cs, gates = _forward(projected, w_h, h0, c0, interpret)
    return (hs, (hs[-1], cs[-1])), (hs, cs, gates, w_h, h0, c0)


def _lstm_loop_bwd(interpret, saved, cotangents):
    hs, cs, gates, w_h, h0, c0 = saved
    d_hs, (d_hT, d_cT) = cotangents
    T, B, G = gates.shape
    dpre, dh0, dc0 = call(_backward_kernel, (gates, cs, c0, d_hs, d_hT, d_cT, w_h),
                           ("tb", "tb", "b", "tb", "b", "b", "w"),
                           [(T, B, G), (B, G // 4), (B, G // 4)], ["tb", "b", "b"], interpret)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = h_prev.reshape(-1, h_prev.shape[-1]).T @ dpre.reshape(-1, G)
    return dpre, d_w, dh0, dc0


lstm_loop.defvjp(_lstm_loop_fwd, _lstm_loop_bwd)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for an LSTM: ``projected (T, *batch, 4H)`` -> ``(LSTMState, ys)``."""
    from jrnn.cells import LSTMState

    px, (h0, c0), untile = tiled(projected, carry)
    hs, (h_T, c_T) = lstm_loop(px, params.w_h.astype(px.dtype), h0, c0, interpret_default(interpret))
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
