"""Derivatives of hand-written VJPs: their kernels differentiated as plain JAX.

jrnn's fast paths (the native CPU loops, the Pallas kernels, cuDNN) pair a
forward kernel with a backward kernel under ``jax.custom_vjp``, so a gradient
runs both. A derivative of that gradient (``jax.grad`` of a gradient penalty,
``jax.jacrev(jax.jacrev(f))``, ``jax.hessian``, a Hessian-vector product as
``jax.jvp(jax.grad(f), ...)``) differentiates the forward and backward
functions themselves, and JAX cannot look inside a custom call or a Pallas
kernel. Each kernel call therefore goes through :func:`differentiated_as`,
with a plain-JAX function that computes the same values from the same inputs.
"""

from __future__ import annotations

import jax


def differentiated_as(reference, kernel):
    """``kernel`` as a function JAX can differentiate: called as usual it runs
    ``kernel``; under differentiation (``jax.jvp``, and ``jax.linearize`` inside
    reverse mode) its values and tangents are ``reference``'s, the same function
    of the same arguments in plain JAX. Both take the same pytrees and return
    the same shapes and dtypes; integer outputs (cuDNN's reserve space) have no
    tangents, so ``reference`` may return any array of their shape and dtype."""
    either = jax.custom_jvp(kernel)
    either.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))
    return either
