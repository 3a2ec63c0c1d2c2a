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

BLOCK_B = 16  # batch rows per program (Triton's dot needs at least 16)
_NT = (((1,), (1,)), ((), ()))  # d @ wᵀ


def supports(cell) -> bool:
    """Whether the kernel implements this cell (an LSTM with H in 16, 32, 64, 128)."""
    from jrnn.cells import LSTMCell

    return isinstance(cell, LSTMCell) and cell.hidden_size in (16, 32, 64, 128)


def _sigmoid(a):
    return 1.0 / (1.0 + jnp.exp(-a))


def _forward_kernel(px_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, gates_ref):
    from jax.experimental import pallas as pl

    num_steps = px_ref.shape[0]
    H = h0_ref.shape[-1]
    block = lambda k: pl.ds(k * H, H)

    def step(t, carry):
        h, c = carry
        pre = [px_ref[t, :, block(k)] + jnp.dot(h, w_ref[:, block(k)]) for k in range(4)]
        i, f, o = _sigmoid(pre[0]), _sigmoid(pre[1]), _sigmoid(pre[3])
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
            dh_prev = dh_prev + jax.lax.dot_general(d, w_ref[:, block(k)], _NT)
        return dh_prev, dc * f

    dh0, dc0 = jax.lax.fori_loop(0, num_steps, step, (dhT_ref[...], dcT_ref[...]))
    dh0_ref[...] = dh0
    dc0_ref[...] = dc0


def _specs(shapes_and_kinds):
    """BlockSpecs: 'tb' arrays (T, B, N) and 'b' arrays (B, N) are tiled over batch; 'w' is whole."""
    from jax.experimental import pallas as pl

    specs = []
    for shape, kind in shapes_and_kinds:
        if kind == "tb":
            specs.append(pl.BlockSpec((shape[0], BLOCK_B, shape[2]), lambda b: (0, b, 0)))
        elif kind == "b":
            specs.append(pl.BlockSpec((BLOCK_B, shape[1]), lambda b: (b, 0)))
        else:
            specs.append(pl.BlockSpec(shape, lambda b: (0, 0)))
    return specs


def _call(kernel, inputs, kinds, out_shapes, out_kinds, interpret):
    from jax.experimental import pallas as pl

    num_blocks = inputs[0].shape[1] // BLOCK_B if kinds[0] == "tb" else inputs[0].shape[0] // BLOCK_B
    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(s, inputs[0].dtype) for s in out_shapes],
        grid=(num_blocks,),
        in_specs=_specs([(x.shape, k) for x, k in zip(inputs, kinds)]),
        out_specs=_specs(list(zip(out_shapes, out_kinds))),
        interpret=interpret,
    )(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_loop(projected, w_h, h0, c0, interpret=False):
    """``projected (T, B, 4H)`` (bias included), ``B`` a multiple of 16 -> ``(hs (T, B, H), (h_T, c_T))``."""
    hs, cs, _ = _forward(projected, w_h, h0, c0, interpret)
    return hs, (hs[-1], cs[-1])


def _forward(projected, w_h, h0, c0, interpret):
    T, B, G = projected.shape
    H = G // 4
    return _call(_forward_kernel, (projected, w_h, h0, c0), ("tb", "w", "b", "b"),
                 [(T, B, H), (T, B, H), (T, B, G)], ["tb", "tb", "tb"], interpret)


def _lstm_loop_fwd(projected, w_h, h0, c0, interpret):
    hs, cs, gates = _forward(projected, w_h, h0, c0, interpret)
    return (hs, (hs[-1], cs[-1])), (hs, cs, gates, w_h, h0, c0)


def _lstm_loop_bwd(interpret, saved, cotangents):
    hs, cs, gates, w_h, h0, c0 = saved
    d_hs, (d_hT, d_cT) = cotangents
    T, B, G = gates.shape
    dpre, dh0, dc0 = _call(_backward_kernel, (gates, cs, c0, d_hs, d_hT, d_cT, w_h),
                           ("tb", "tb", "b", "tb", "b", "b", "w"),
                           [(T, B, G), (B, G // 4), (B, G // 4)], ["tb", "b", "b"], interpret)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    d_w = h_prev.reshape(-1, h_prev.shape[-1]).T @ dpre.reshape(-1, G)
    return dpre, d_w, dh0, dc0


lstm_loop.defvjp(_lstm_loop_fwd, _lstm_loop_bwd)


def pallas_scan(cell, params, projected, carry, *, interpret=None):
    """``jrnn.scan``'s time loop for an LSTM: ``projected (T, *batch, 4H)`` -> ``(LSTMState, ys)``."""
    from jrnn.cells import LSTMState

    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    T, batch_shape, G = projected.shape[0], projected.shape[1:-1], projected.shape[-1]
    H = G // 4
    size = 1
    for d in batch_shape:
        size *= d
    padded = -(-max(size, 1) // BLOCK_B) * BLOCK_B
    pad = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, padded - size), (0, 0)])
    px = pad(projected.reshape(T, size, G))
    h0, c0 = (pad(c.reshape(size, H)) for c in carry)
    hs, (h_T, c_T) = lstm_loop(px, params.w_h.astype(px.dtype), h0, c0, interpret)
    unpad = lambda a: a[..., :size, :]
    final = LSTMState(unpad(h_T).reshape(*batch_shape, H), unpad(c_T).reshape(*batch_shape, H))
    return final, unpad(hs).reshape(T, *batch_shape, H)


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
