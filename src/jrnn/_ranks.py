"""Explicit broadcasting, so that jrnn runs where users set
``jax.config.update("jax_numpy_rank_promotion", "raise")`` (as Equinox's tests and
much JAX research code do): arrays of different ranks are never combined implicitly."""

import jax


def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
    """``y (..., N) + b (N,)``, ``b`` broadcast over the leading axes explicitly."""
    return y + jax.lax.broadcast_to_rank(b, y.ndim)
