"""The fused CPU path: the scan driver's time loop with a hand-written VJP.

Same function as the plain driver (:func:`jrnn.scan.scan_projected`); the
differences are only in how it is computed:

* every gate is ``tanh`` of a scaled pre-activation,
  ``σ(a) = 0.5·tanh(a/2) + 0.5``; on CPU one ``tanh`` over the whole
  ``(B, 4, H)`` LSTM gate block serves all gates, and on CUDA GPUs each gate's
  ``(B, H)`` slice is activated on its own, so that the gate math, the cell
  update and the saved gate values are one kernel per step (an XLA:GPU loop
  fusion's outputs must share one shape; see :func:`gate_layout`);
* the forward loop saves only what the backward loop needs (gate ``tanh``
  values and states);
* on CUDA GPUs each forward step's carry passes an optimization barrier, so
  that XLA keeps it in memory instead of recomputing earlier steps in every
  kernel (see :func:`step_barrier`);
* the backward loop carries only what is sequential (``dh_{t-1} = dG_t W_hᵀ``
  and the LSTM cell state); the weight gradient ``dW_h = Σ_t h_{t-1}ᵀ dG_t``
  is one large matrix product after the loop, as cuDNN does, and the
  gradients of ``w_x``, ``b`` and ``xs`` follow from the projection by
  ordinary autodiff, each one large product.

On CPU, for float32 cells that :mod:`jrnn.kernels.native` covers, both time
loops run as native code (XLA FFI calls) with the same residuals; the loops
here serve everything else (GPU, TPU, other dtypes).

Inputs are time-major and flattened to one batch axis: ``projected (T, B, G*H)``,
carry leaves ``(B, H)``, ``valid (T, B)`` booleans or ``None``, ``mask (B, H)``
(recurrent dropout) or ``None``.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

from jrnn._ranks import add_bias
from jrnn._varying import sum_like
from jrnn.cells import GRUCell, LSTMCell, LSTMState, SimpleRNNCell
from jrnn.kernels import native
from jrnn.kernels._custom_vjp import custom_vjp
from jrnn.kernels._with_reference import with_reference

# Per-gate constants of the one-tanh form: act = tanh(a * SCALE) * MUL + ADD,
# act' = DERIV * (1 - tanh(a * SCALE)^2).
_LSTM_SCALE = (0.5, 0.5, 1.0, 0.5)  # i, f, g, o
_LSTM_ADD = (0.5, 0.5, 0.0, 0.5)


def _column(values, like):
    """``values`` per gate as a ``(…, 4, 1)`` column of ``like``'s rank and dtype."""
    return jax.lax.broadcast_to_rank(jnp.asarray(values, like.dtype)[:, None], like.ndim)


def _lstm_activation(t):
    """Gate activations from the gate tanh values ``t (B, 4, H)``: ``t·scale + add``."""
    return t * _column(_LSTM_SCALE, t) + _column(_LSTM_ADD, t)


def _lstm_gates(pre, H, split):
    """The gate tanh values ``t (B, 4, H)`` and the activations ``(i, f, g, o)``,
    each ``(B, H)``, of the pre-activations ``pre (B, 4H)``: one tanh over the
    block, or with ``split`` one per gate (the same values)."""
    if split:
        t = [jnp.tanh(pre[..., k * H:(k + 1) * H] * s) for k, s in enumerate(_LSTM_SCALE)]
        return jnp.stack(t, axis=-2), [tk * s + a for tk, s, a in zip(t, _LSTM_SCALE, _LSTM_ADD)]
    gates = pre.reshape(*pre.shape[:-1], 4, H)
    t = jnp.tanh(gates * _column(_LSTM_SCALE, gates))
    act = _lstm_activation(t)
    return t, [act[..., k, :] for k in range(4)]


# Where the XLA loops run as for a GPU: the LSTM activates each gate on its own,
# which takes its training forward loop from 3.5 to 2.6 kernels per step (H100
# target, ``benchmarks/step_kernels.py --target``), and each step's carry passes
# a barrier (:func:`step_barrier`). CPU loops keep the LSTM's block, on which
# XLA:CPU runs the forward loop 14-22 % faster (RESULTS.md), and no barrier.
_GPU_LOOP_PLATFORMS = ("cuda",)
# the settings that gate_layout() and step_barrier() force (None: by platform)
_FORCED = {"split_gates": None, "barrier": None}


@contextlib.contextmanager
def _forcing(setting, value):
    before, _FORCED[setting] = _FORCED[setting], bool(value)
    try:
        yield
    finally:
        _FORCED[setting] = before


def gate_layout(split: bool):
    """Trace the LSTM's XLA loops with each gate activated on its own
    (``split=True``) or as one block (``False``) on every platform, instead of
    by platform. For tests and side-by-side benchmarks; it applies to what is
    traced inside the ``with`` block."""
    return _forcing("split_gates", split)


# On a GPU each forward step's carry passes an optimization barrier. Without it
# XLA:GPU fused step k of an unrolled loop body with steps 1..k-1 and recomputed
# their cell updates from the products' outputs in every kernel: the LSTM's
# forward loop read 36 products per 8 steps instead of 8 (optimised HLO for an
# H100, ``step_kernels.py --target``), and on an H200 the barrier took its
# forward at (16, 768, 1024) from 9.3 to 6.8 ms (RESULTS.md). The reverse loop
# has none: there one made more kernels (the split-K partial products of ``dh``
# were then summed in a kernel of their own).
def step_barrier(on: bool):
    """Trace the XLA loops with each step's carry behind an optimization barrier
    (``on=True``) or without one (``False``) on every platform, instead of by
    platform. For tests and side-by-side benchmarks, like :func:`gate_layout`."""
    return _forcing("barrier", on)


def _by_platform(run, cell):
    """``run(split_gates, barrier)`` with the settings of the platform it is lowered for
    (CUDA: both on; elsewhere off), or as :func:`gate_layout` / :func:`step_barrier` force them."""
    is_lstm = isinstance(cell, LSTMCell)

    def settings(on_cuda):
        split, barrier = (on_cuda if _FORCED[k] is None else _FORCED[k] for k in ("split_gates", "barrier"))
        return is_lstm and split, barrier

    if settings(True) == settings(False):
        return run(*settings(False))
    branches = {platform: functools.partial(run, *settings(True)) for platform in _GPU_LOOP_PLATFORMS}
    return jax.lax.platform_dependent(**branches, default=functools.partial(run, *settings(False)))


class _LSTM:
    """LSTM step and its reverse, on a ``(h, c)`` carry."""

    @staticmethod
    def forward(cell, p, carry, px, mask, split_gates=False):
        h, c = carry
        h_in = h if mask is None else h * mask
        t, (i, f, g, o) = _lstm_gates(px + h_in @ p["w_h"], cell.hidden_size, split_gates)
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        return (h_new, c_new), h_new, (h_in, c, t, tc)

    @staticmethod
    def backward(cell, p, res, d_carry, dy, mask):
        _, c_prev, t, tc = res
        dh, dc = d_carry
        dh = dh + dy
        scale = _column(_LSTM_SCALE, t)
        act = _lstm_activation(t)
        i, f, g, o = act[..., 0, :], act[..., 1, :], act[..., 2, :], act[..., 3, :]
        dc = dc + dh * o * (1 - tc * tc)
        d_act = jnp.stack([dc * g, dc * c_prev, dc * i, dh * tc], axis=-2)
        dpre = (d_act * (scale * scale) * (1 - t * t)).reshape(*t.shape[:-2], 4 * t.shape[-1])
        dh_prev = dpre @ p["w_h_t"]
        if mask is not None:
            dh_prev = dh_prev * mask
        return (dh_prev, dc * f), dpre

    @staticmethod
    def weight_grads(cell, res, dpx):
        return {"w_h": _outer_sum(res[0], dpx)}


class _GRU:
    """GRU step (both reset placements) and its reverse."""

    @staticmethod
    def forward(cell, p, h, px, mask):
        H = cell.hidden_size
        h_in = h if mask is None else h * mask
        if cell.reset_after:
            hw = h_in @ p["w_h"]
            zr = jax.nn.sigmoid(px[..., : 2 * H] + hw[..., : 2 * H])
            z, r = zr[..., :H], zr[..., H:]
            hn = add_bias(hw[..., 2 * H :], p["b_hn"])
            n = jnp.tanh(px[..., 2 * H :] + r * hn)
            aux = hn
        else:
            zr = jax.nn.sigmoid(px[..., : 2 * H] + h_in @ p["w_h"][:, : 2 * H])
            z, r = zr[..., :H], zr[..., H:]
            n = jnp.tanh(px[..., 2 * H :] + (r * h_in) @ p["w_h"][:, 2 * H :])
            aux = None
        h_new = (1 - z) * h + z * n
        return h_new, h_new, (h, h_in, z, r, n, aux)

    @staticmethod
    def backward(cell, p, res, dh, dy, mask):
        H = cell.hidden_size
        h, h_in, z, r, n, hn = res
        dh = dh + dy
        da_z = dh * (n - h) * z * (1 - z)
        da_n = dh * z * (1 - n * n)
        if cell.reset_after:
            da_r = da_n * hn * r * (1 - r)
            d_h_in = jnp.concatenate([da_z, da_r, da_n * r], axis=-1) @ p["w_h_t"]
        else:
            d_rh = da_n @ p["w_h_t"][2 * H :]
            da_r = d_rh * h_in * r * (1 - r)
            d_h_in = d_rh * r + jnp.concatenate([da_z, da_r], axis=-1) @ p["w_h_t"][: 2 * H]
        if mask is not None:
            d_h_in = d_h_in * mask
        dpx = jnp.concatenate([da_z, da_r, da_n], axis=-1)
        return dh * (1 - z) + d_h_in, dpx

    @staticmethod
    def weight_grads(cell, res, dpx):
        H = cell.hidden_size
        _, h_in, _, r, _, _ = res
        d_zr, da_n = dpx[..., : 2 * H], dpx[..., 2 * H :]
        if cell.reset_after:  # the n block of h @ w_h sits inside r ⊙ (...)
            d_hw = jnp.concatenate([d_zr, da_n * r], axis=-1)
            return {"w_h": _outer_sum(h_in, d_hw), "b_hn": (da_n * r).sum(axis=(0, 1))}
        return {"w_h": jnp.concatenate([_outer_sum(h_in, d_zr), _outer_sum(r * h_in, da_n)], axis=-1)}


class _SimpleRNN:
    @staticmethod
    def forward(cell, p, h, px, mask):
        h_in = h if mask is None else h * mask
        pre = px + h_in @ p["w_h"]
        h_new = jnp.tanh(pre) if cell.activation == "tanh" else jax.nn.relu(pre)
        return h_new, h_new, (h_in, h_new)

    @staticmethod
    def backward(cell, p, res, dh, dy, mask):
        _, h_new = res
        dh = dh + dy
        if cell.activation == "tanh":
            dpre = dh * (1 - h_new * h_new)
        else:
            dpre = jnp.where(h_new > 0, dh, jnp.zeros_like(dh))
        d_h_in = dpre @ p["w_h_t"]
        if mask is not None:
            d_h_in = d_h_in * mask
        return d_h_in, dpre

    @staticmethod
    def weight_grads(cell, res, dpx):
        return {"w_h": _outer_sum(res[0], dpx)}


_IMPLS = {LSTMCell: _LSTM, GRUCell: _GRU, SimpleRNNCell: _SimpleRNN}


def supports(cell) -> bool:
    """Whether the fused path implements this cell."""
    return type(cell) in _IMPLS


def _outer_sum(inputs, grads):
    """``Σ_t inputs_tᵀ grads_t`` as one matrix product: ``(T, B, K), (T, B, N) -> (K, N)``."""
    return inputs.reshape(-1, inputs.shape[-1]).T @ grads.reshape(-1, grads.shape[-1])


@custom_vjp
def project(x, w_x):
    """``x @ w_x`` for ``x (..., I)``; its VJP's two products are plain 2-D GEMMs.

    The bias is added inside the time loop, where it fuses with the gate math:
    XLA:CPU runs a dot fused with a bias add, or a batched transposed
    contraction, several times slower than a plain GEMM.
    """
    return x @ w_x


def _project_fwd(x, w_x):
    # the product itself: ``project`` here would call its own derivative rule again
    return x @ w_x, (x, w_x)


def _project_bwd(saved, g):
    x, w_x = saved
    d_w = sum_like(x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1]), w_x)
    return (g @ w_x.T).astype(x.dtype), d_w.astype(w_x.dtype)


project.defvjp(_project_fwd, _project_bwd)


def _to_tuple(cell, carry):
    return tuple(carry) if isinstance(cell, LSTMCell) else carry


def _from_tuple(cell, carry):
    return LSTMState(*carry) if isinstance(cell, LSTMCell) else carry


def _select(valid, new, old):
    return jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, old)


@functools.partial(custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _loop(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask):
    return _forward(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask, save=False)[0]


def _native_or(native_fn, xla_fn, cell, checked, *args):
    """``native_fn(*args)`` on CPU where :mod:`jrnn.kernels.native` computes this
    cell for the ``checked`` arrays, else ``xla_fn(*args)``, the same function.

    The native call's derivatives are ``xla_fn``'s (:mod:`jrnn.kernels._with_reference`).
    """
    if not native.applies(cell, *checked):
        return xla_fn(*args)
    either = lambda *args: jax.lax.platform_dependent(*args, cpu=native_fn, default=xla_fn)
    return with_reference(either, xla_fn)(*args)


def _forward(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask, *, save):
    """The time loop; with ``save`` it also returns each step's residuals for the VJP.
    ``ys`` is ``(B, T, H)`` with ``batch_major``, else ``(T, B, H)``."""
    return _native_or(
        functools.partial(native.forward, cell, reverse, batch_major, save=save),
        functools.partial(_scan_forward, cell, reverse, unroll, batch_major, save=save),
        cell, (projected, *p.values(), *jax.tree.leaves(carry)), p, projected, carry, valid, mask)


def _scan_forward(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask, *, save):
    run = lambda split, barrier: _scan_loop(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask,
                                            save=save, split_gates=split, barrier=barrier)
    return _by_platform(run, cell)


def _scan_loop(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask, *, save, split_gates,
               barrier):
    impl = _IMPLS[type(cell)]
    step = functools.partial(impl.forward, split_gates=True) if split_gates else impl.forward

    def body(carry, inputs):
        px, ok = inputs
        new, y, res = step(cell, p, carry, add_bias(px, p["b"]), mask)
        if ok is not None:
            ok = ok[:, None]
            new = _select(ok, new, carry)
            y = jnp.where(ok, y, jnp.zeros_like(y))
        if barrier:
            new = jax.lax.optimization_barrier(new)
        return new, ((y, res) if save else (y, None))

    final, (ys, res) = jax.lax.scan(body, carry, (projected, valid), reverse=reverse, unroll=unroll)
    return (final, jnp.swapaxes(ys, 0, 1) if batch_major else ys), res


def _loop_fwd(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask):
    out, res = _forward(cell, reverse, unroll, batch_major, p, projected, carry, valid, mask, save=True)
    return out, (p, valid, mask, res)


def _loop_bwd(cell, reverse, unroll, batch_major, saved, cotangents):
    p, valid, mask, res = saved
    d_final, d_ys = cotangents
    d_carry, d_projected = _native_or(
        functools.partial(native.backward, cell, reverse, batch_major),
        functools.partial(_scan_backward, cell, reverse, unroll, batch_major),
        cell, (d_ys, *p.values(), *jax.tree.leaves(d_final)), p, res, d_final, d_ys, valid, mask)
    impl = _IMPLS[type(cell)]
    d_p = impl.weight_grads(cell, res, d_projected)
    d_p["b"] = d_projected.sum(axis=(0, 1))
    d_p = jax.tree.map(sum_like, d_p, p)
    d_valid = None if valid is None else jnp.zeros(valid.shape, jax.dtypes.float0)
    d_mask = None if mask is None else jnp.zeros_like(mask)
    return d_p, d_projected, d_carry, d_valid, d_mask


def _scan_backward(cell, reverse, unroll, batch_major, p, res, d_final, d_ys, valid, mask):
    """The reverse time loop: ``(d_initial_carry, d_projected)``; ``d_ys`` laid out as ``ys``."""
    impl = _IMPLS[type(cell)]
    if batch_major:
        d_ys = jnp.swapaxes(d_ys, 0, 1)
    p_bwd = {**p, "w_h_t": p["w_h"].T}  # transposed once, outside the loop

    def body(d_carry, inputs):
        dy, res_t, ok = inputs
        if ok is not None:
            ok = ok[:, None]
            d_new = jax.tree.map(lambda d: jnp.where(ok, d, jnp.zeros_like(d)), d_carry)
            dy = jnp.where(ok, dy, jnp.zeros_like(dy))
        else:
            d_new = d_carry
        d_prev, dpx = impl.backward(cell, p_bwd, res_t, d_new, dy, mask)
        if ok is not None:  # padding passes the carry's cotangent straight through
            d_prev = _select(ok, d_prev, d_carry)
        return d_prev, dpx

    return jax.lax.scan(body, d_final, (d_ys, res, valid), reverse=not reverse, unroll=unroll)


_loop.defvjp(_loop_fwd, _loop_bwd)


def fused_scan(cell, params, projected, carry, *, seq_lengths=None, reverse=False, unroll=1, recurrent_mask=None,
               batch_major_ys=False):
    """Drop-in for :func:`jrnn.scan.scan_projected` for the cells :func:`supports` lists,
    except that ``projected (T, *batch, G*H)`` is :func:`project`'s ``x @ w_x``
    without the bias (``params.b`` is added inside the loop).

    Returns ``(carry, ys (T, *batch, H))``, or ``ys (*batch, T, H)`` with
    ``batch_major_ys`` (the native loops write that layout directly).
    """
    num_steps, batch_shape = projected.shape[0], projected.shape[1:-1]
    size = 1
    for d in batch_shape:
        size *= d
    flat = lambda a: a.reshape(size, a.shape[-1])
    p = {"w_h": params.w_h, "b": params.b}
    if getattr(params, "b_hn", None) is not None:
        p["b_hn"] = params.b_hn
    carry_dtypes = jax.tree.map(lambda a: a.dtype, carry)
    flat_carry = _to_tuple(cell, jax.tree.map(flat, carry))
    valid = None
    if seq_lengths is not None:
        steps = jnp.arange(num_steps, dtype=seq_lengths.dtype)
        valid = steps[:, None] < seq_lengths.reshape(1, size)
    mask = None if recurrent_mask is None else flat(recurrent_mask)
    dtype = jnp.result_type(projected.dtype, *jax.tree.leaves(carry_dtypes), params.w_h.dtype)
    flat_carry = jax.tree.map(lambda a: a.astype(dtype), flat_carry)
    final, ys = _loop(cell, reverse, unroll, batch_major_ys, p,
                      projected.reshape(num_steps, size, projected.shape[-1]).astype(dtype), flat_carry, valid, mask)
    final = jax.tree.map(lambda a, d: a.reshape(*batch_shape, a.shape[-1]).astype(d),
                         _from_tuple(cell, final), carry_dtypes)
    hidden_dtype = jax.tree.leaves(carry_dtypes)[0]
    ys_shape = (*batch_shape, num_steps) if batch_major_ys else (num_steps, *batch_shape)
    return final, ys.reshape(*ys_shape, cell.hidden_size).astype(hidden_dtype)
