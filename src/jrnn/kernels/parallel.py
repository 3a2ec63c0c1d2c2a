"""Parallel-in-time path for cells whose recurrence is linear in the state.

For ``h_t = a_t ⊙ h_{t-1} + b_t`` (minGRU, minLSTM) the pairs ``(a_t, b_t)``
compose associatively: applying ``(a_1, b_1)`` then ``(a_2, b_2)`` is
``(a_1 a_2, a_2 b_1 + b_2)``, so ``jax.lax.associative_scan`` computes every
``h_t`` in O(log T) parallel depth. The decay products are accumulated in log
space (``Σ log a``), so a product over thousands of steps never underflows on
its own; ``exp`` is taken only where a product multiplies a value.

Padding (``seq_lengths``) is the identity pair ``(1, 0)``; a reset at step t
replaces ``(a_t, b_t)`` by ``(0, a_t h_0 + b_t)``, which restarts from the
initial carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _combine(earlier, later):
    log_a1, b1 = earlier
    log_a2, b2 = later
    return log_a1 + log_a2, jnp.exp(log_a2) * b1 + b2


def parallel_scan(cell, params, projected, carry, *, seq_lengths=None, reverse=False, unroll=1,
                  recurrent_mask=None, resets=None, reset_carry=None):
    """Same contract as :func:`jrnn.scan.scan_projected` for minGRU/minLSTM cells.

    ``projected (T, *batch, G*H)`` time-major; ``resets (T, *batch)`` booleans or
    ``None``, restarting from ``reset_carry`` (default: ``carry``).
    """
    del unroll  # no sequential loop to unroll
    dtype = carry.dtype
    if projected.shape[0] == 0:
        return carry, jnp.zeros((0, *carry.shape), dtype)
    log_a, b = cell.log_coefficients(projected.astype(jnp.result_type(projected.dtype, dtype)))
    log_a, b = log_a.astype(dtype), b.astype(dtype)
    if recurrent_mask is not None:
        log_a = log_a + jnp.log(recurrent_mask.astype(dtype))
    valid = None
    if seq_lengths is not None:
        steps = jnp.arange(projected.shape[0], dtype=seq_lengths.dtype)
        valid = (steps.reshape(-1, *([1] * seq_lengths.ndim)) < seq_lengths[None])[..., None]
        log_a = jnp.where(valid, log_a, jnp.zeros_like(log_a))
        b = jnp.where(valid, b, jnp.zeros_like(b))
    if resets is not None:
        restart = resets[..., None]
        if valid is not None:
            restart = restart & valid
        h0 = carry if reset_carry is None else reset_carry
        b = jnp.where(restart, b + jnp.exp(log_a) * h0[None], b)
        log_a = jnp.where(restart, jnp.full_like(log_a, -jnp.inf), log_a)
    total_log_a, total_b = jax.lax.associative_scan(_combine, (log_a, b), reverse=reverse, axis=0)
    hs = jnp.exp(total_log_a) * carry[None] + total_b
    final = hs[0] if reverse else hs[-1]
    ys = hs if valid is None else jnp.where(valid, hs, jnp.zeros_like(hs))
    return final, ys
