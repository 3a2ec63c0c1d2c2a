"""Gradient-flow diagnostics: why LSTM and GRU exist, measured.

* :func:`gradient_norms` — ``‖∂L/∂h_t‖`` for every step t (vanishing and
  exploding gradients through time);
* :func:`jacobian_spectrum` — largest singular value and spectral radius of
  the recurrent Jacobian ``∂s_t/∂s_{t-1}`` of the whole state along a trajectory;
* :func:`state_statistics` — carry norms and gate saturation (the fraction of
  sigmoid/tanh outputs within ``eps`` of their limits) per step.

All three run the cell's own ``step``/``gates``; no equation is written twice.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jrnn._checks import as_array
from jrnn.cells import LSTMCell, LSTMState, check_cell


def _checked(cell, params, xs):
    """``xs`` as an array, after the checks :func:`jrnn.scan` makes of a cell, its params and inputs."""
    check_cell(cell, "diagnostics take one cell of a layer (e.g. layer.forward, layer.layers[0])")
    xs = as_array("xs", xs)
    if xs.ndim < 2:
        raise ValueError(f"xs: expected rank >= 2 (*batch, T, input_size), got shape {tuple(xs.shape)}")
    cell.check_input("xs", xs, params)
    return xs


def _time_major(xs):
    return jnp.moveaxis(xs, -2, 0)


def _with_hidden(cell, carry, h):
    return LSTMState(h, carry.c) if isinstance(cell, LSTMCell) else h


def gradient_norms(cell, params, xs, loss_fn: Callable, carry=None):
    """``‖∂L/∂h_t‖`` for t = 1..T, per sequence.

    ``∂L/∂h_t`` is the total derivative of the loss with respect to the hidden
    state after step t (through the output at t and through every later step),
    taken by adding a zero perturbation to each ``h_t`` and differentiating
    (``jax.vjp`` through the scan).

    Args:
      cell, params: a jrnn cell and its params.
      xs: ``(*batch, T, I)``.
      loss_fn: ``ys (*batch, T, H) -> scalar``.
      carry: initial carry (zeros by default).

    Returns:
      ``(*batch, T)`` gradient norms (Euclidean over the hidden units).

    >>> import jax, jax.numpy as jnp, jrnn
    >>> cell = jrnn.simple_rnn(4)
    >>> p = cell.init(jax.random.key(0), 2)
    >>> gradient_norms(cell, p, jnp.ones((3, 10, 2)), lambda ys: ys[:, -1].sum()).shape
    (3, 10)
    """
    xs = _checked(cell, params, xs)
    batch_shape = xs.shape[:-2]
    carry = cell.initial_carry(batch_shape, xs.dtype) if carry is None else carry
    projected = _time_major(cell.project_input(params, xs))

    def loss_of(deltas):
        def body(state, inputs):
            px, delta = inputs
            state, h = cell.recurrent_step(params, state, px)
            h = h + delta
            return _with_hidden(cell, state, h), h

        _, ys = jax.lax.scan(body, carry, (projected, deltas))
        return loss_fn(jnp.moveaxis(ys, 0, -2))

    zeros = jnp.zeros((xs.shape[-2], *batch_shape, cell.hidden_size), xs.dtype)
    grads = jax.grad(loss_of)(zeros)
    return jnp.moveaxis(jnp.linalg.norm(grads, axis=-1), 0, -1)


def _flat_state(cell, carry):
    return jnp.concatenate(jax.tree.leaves(carry), axis=-1)


def _unflat_state(cell, flat):
    H = cell.hidden_size
    return LSTMState(flat[:H], flat[H:]) if isinstance(cell, LSTMCell) else flat


def jacobian_spectrum(cell, params, xs, carry=None):
    """Largest singular value and spectral radius of ``∂s_t/∂s_{t-1}`` along the trajectory.

    ``s`` is the whole state (LSTM: ``[h, c]``, size 2H; others: ``h``). Values
    above 1 let perturbations (and gradients) grow over time; below 1 they shrink.

    Args:
      xs: ``(T, I)`` for one sequence, or ``(*batch, T, I)``.

    Returns:
      ``(sigma_max, rho)``, each ``(*batch, T)``.
    """
    xs = _checked(cell, params, xs)
    if xs.ndim > 2:
        flat = xs.reshape(-1, *xs.shape[-2:])
        init = None if carry is None else jax.tree.map(lambda c: c.reshape(-1, c.shape[-1]), carry)
        run = jax.vmap(lambda x, c: jacobian_spectrum(cell, params, x, c), in_axes=(0, None if init is None else 0))
        sigma, rho = run(flat, init)
        return sigma.reshape(*xs.shape[:-2], -1), rho.reshape(*xs.shape[:-2], -1)
    carry = cell.initial_carry((), xs.dtype) if carry is None else carry
    projected = cell.project_input(params, xs)

    def body(state, px):
        def step_flat(s):
            return _flat_state(cell, cell.recurrent_step(params, _unflat_state(cell, s), px)[0])

        flat = _flat_state(cell, state)
        jac = jax.jacfwd(step_flat)(flat)
        sigma = jnp.linalg.svd(jac, compute_uv=False)[0]
        rho = jnp.max(jnp.abs(jnp.linalg.eigvals(jac)))
        return _unflat_state(cell, step_flat(flat)), (sigma, rho)

    _, (sigma, rho) = jax.lax.scan(body, carry, projected)
    return sigma, rho


_SIGMOID_GATES = {"i", "f", "o", "z", "r"}


def state_statistics(cell, params, xs, carry=None, eps: float = 1e-3):
    """Per-step carry norms and gate saturation.

    Returns a dict of ``(T,)`` arrays (averaged over the batch):
    ``carry_norm`` (‖h_t‖; LSTM also ``cell_norm`` ‖c_t‖) and, for every gate
    (LSTM i, f, g, o; GRU z, r, n; SimpleRNN h), ``saturation_<gate>``: the
    fraction of its outputs within ``eps`` of the activation's limits (0 or 1
    for sigmoid gates, ±1 for tanh).
    """
    xs = _checked(cell, params, xs)
    batch_shape = xs.shape[:-2]
    carry = cell.initial_carry(batch_shape, xs.dtype) if carry is None else carry
    projected = _time_major(cell.project_input(params, xs))

    def body(state, px):
        gates = cell.gates(params, state, px)
        new_state, h = cell.recurrent_step(params, state, px)
        stats = {"carry_norm": jnp.linalg.norm(h, axis=-1).mean()}
        if isinstance(cell, LSTMCell):
            stats["cell_norm"] = jnp.linalg.norm(new_state.c, axis=-1).mean()
        for name, value in gates.items():
            if name in _SIGMOID_GATES:
                saturated = (value < eps) | (value > 1 - eps)
            else:
                saturated = jnp.abs(value) > 1 - eps
            stats[f"saturation_{name}"] = saturated.mean()
        return new_state, stats

    return jax.lax.scan(body, carry, projected)[1]


def gradient_ratio(norms) -> jax.Array:
    """``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` from :func:`gradient_norms` (mean over the batch)."""
    norms = norms.reshape(-1, norms.shape[-1])
    return jnp.mean(norms[:, 0]) / jnp.mean(norms[:, -1])


def first_nonfinite_step(cell, params, xs, carry=None):
    """Index of the first time step whose state holds a NaN or Inf, per sequence (-1: none).

    Args:
      xs: ``(*batch, T, I)``.

    Returns:
      ``(*batch,)`` int32.

    >>> import jax, jax.numpy as jnp, jrnn
    >>> cell = jrnn.gru(2)
    >>> p = cell.init(jax.random.key(0), 1)
    >>> xs = jnp.zeros((1, 6, 1)).at[0, 3, 0].set(jnp.nan)
    >>> first_nonfinite_step(cell, p, xs).tolist()
    [3]
    """
    xs = _checked(cell, params, xs)
    carry = cell.initial_carry(xs.shape[:-2], xs.dtype) if carry is None else carry

    def body(state, px):
        state, _ = cell.recurrent_step(params, state, px)
        finite = jnp.stack([jnp.isfinite(leaf).all(axis=-1) for leaf in jax.tree.leaves(state)]).all(axis=0)
        return state, finite

    _, finite = jax.lax.scan(body, carry, _time_major(cell.project_input(params, xs)))
    bad = ~finite  # (T, *batch)
    return jnp.where(bad.any(axis=0), jnp.argmax(bad, axis=0), -1).astype(jnp.int32)
