"""``jax.custom_vjp`` that forward mode can go through as well.

``jax.custom_vjp`` gives a function a hand-written backward pass, but JAX then
refuses forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` on its
own): "can't apply forward-mode autodiff (jvp) to a custom_vjp function".
jrnn's fast paths (the fused loops, cuDNN, Pallas) are such functions.

:class:`custom_vjp` takes the same ``fun``, ``fwd`` and ``bwd``, and builds
them into a ``jax.custom_jvp`` whose rule is

- primal: ``out, residuals = fwd(*args)``;
- tangent: one call of a linear primitive, ``jrnn_linear_with_transpose``,
  whose value is ``jax.jvp(fun, args, tangents)``'s tangent (``fun``'s own
  derivatives: plain JAX, or the references of the kernels it calls, see
  :mod:`jrnn.kernels._with_reference`) and whose transpose is
  ``bwd(residuals, cotangents)``.

Reverse mode (``jax.grad``, ``jax.vjp``) linearizes the rule and transposes
the primitive, so it runs ``fwd`` then ``bwd``, as ``jax.custom_vjp`` does;
the tangent's value is never computed. Forward mode computes the tangent and
never calls ``bwd``. Under ``jax.vmap`` both are batched, like
``jax.custom_vjp``'s ``fwd`` and ``bwd``.

``fun``'s outputs must be floating-point arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jax.interpreters import ad, batching, mlir

from jrnn._varying import vary_like
from jrnn.kernels._with_reference import batched_out_types

_linear_p = core.Primitive("jrnn_linear_with_transpose")
_linear_p.multiple_results = True


class custom_vjp:
    """Drop-in for ``jax.custom_vjp(fun, nondiff_argnums)`` + ``defvjp(fwd, bwd)``
    that also allows forward mode through ``fun``'s own derivatives."""

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self._call = jax.custom_jvp(fun, nondiff_argnums=self.nondiff_argnums)

    def defvjp(self, fwd, bwd):
        """``fwd(*args) -> (out, residuals)``; ``bwd(*nondiff_args, residuals, cotangents)``
        -> one cotangent per differentiable argument, as for ``jax.custom_vjp``."""
        num_static = len(self.nondiff_argnums)

        def rule(*args):
            static, (primals, tangents) = args[:num_static], args[num_static:]
            full = _merge(self.nondiff_argnums, static, primals)
            out, residuals = fwd(*full)
            forward_mode = lambda *primals: self.fun(*_merge(self.nondiff_argnums, static, primals))
            reverse_mode = functools.partial(bwd, *static)
            return out, _linear(forward_mode, reverse_mode, residuals, primals, tangents, out)

        self._call.defjvp(rule)

    def __call__(self, *args):
        return self._call(*args)


def _merge(nondiff_argnums, static, primals):
    """The full argument list from the non-differentiable ones and the others."""
    static, primals = list(static), list(primals)
    return [static.pop(0) if k in nondiff_argnums else primals.pop(0)
            for k in range(len(static) + len(primals))]


def _differentiable(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _linear(forward_mode, reverse_mode, residuals, primals, tangents, out):
    """The tangent of ``out``: ``jrnn_linear_with_transpose`` of the residuals, the
    primals and the tangents of the floating-point primals."""
    res_leaves, res_tree = jax.tree.flatten(residuals)
    primal_leaves, primal_tree = jax.tree.flatten(primals)
    out_tree = jax.tree.structure(out)
    floating = tuple(_differentiable(p) for p in primal_leaves)
    tangent_leaves = [t for t, f in zip(jax.tree.leaves(tangents), floating) if f]

    def tangents_out(*leaves):
        _, primal, tangent = _split(leaves, len(res_leaves), len(primal_leaves))
        tangent = iter(tangent)
        all_tangents = [next(tangent) if f else np.zeros(jnp.shape(p), jax.dtypes.float0)
                        for p, f in zip(primal, floating)]
        _, t_out = jax.jvp(forward_mode, tuple(jax.tree.unflatten(primal_tree, primal)),
                           tuple(jax.tree.unflatten(primal_tree, all_tangents)))
        return jax.tree.leaves(t_out)

    def cotangents_in(*leaves):
        res, cts = leaves[: len(res_leaves)], leaves[len(res_leaves):]
        cts_in = primal_tree.flatten_up_to(
            reverse_mode(jax.tree.unflatten(res_tree, res), jax.tree.unflatten(out_tree, cts)))
        return [ct for ct, f in zip(cts_in, floating) if f]

    args = [*res_leaves, *primal_leaves, *tangent_leaves]
    # the tangents' types are the outputs' (which spares abstract evaluation a trace of fun's jvp)
    out_types = tuple(jax.typeof(o).to_tangent_aval() for o in jax.tree.leaves(out))
    outs = _linear_p.bind(*vary_like(args, *args), num_residuals=len(res_leaves), num_primals=len(primal_leaves),
                          out_types=out_types, tangents_out=tangents_out, cotangents_in=cotangents_in)
    return jax.tree.unflatten(out_tree, outs)


def _split(leaves, num_residuals, num_primals):
    return (leaves[:num_residuals], leaves[num_residuals:num_residuals + num_primals],
            leaves[num_residuals + num_primals:])


def _abstract_eval(*avals, out_types, **_):
    return out_types


def _lower(ctx, *args, tangents_out, **_):
    return mlir.lower_fun(tangents_out, multiple_results=True)(ctx, *args)


def _transpose(cts, *args, num_residuals, num_primals, cotangents_in, **_):
    residuals, _, tangents = _split(args, num_residuals, num_primals)
    cts_in = cotangents_in(*residuals, *(ad.instantiate_zeros(ct) for ct in cts))
    return [None] * (num_residuals + num_primals) + [
        ct if ad.is_undefined_primal(t) else None for t, ct in zip(tangents, cts_in)]


def _jvp(primals, tangents, *, tangents_out, **_):
    # a forward-mode derivative of the tangent (jax.jacfwd(jax.jacfwd(f))): fun's second derivatives
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(tangents_out, tuple(primals), tuple(tangents))


def _batch(args, dims, *, num_residuals, num_primals, out_types, tangents_out, cotangents_in):
    size, batched_types = batched_out_types(args, dims, out_types)
    args, dims = list(args), list(dims)
    # every tangent batched at axis 0: an unbatched one is broadcast, so its cotangent
    # (batched, from the batched bwd) is summed over the batch by the broadcast's transpose
    for k in range(num_residuals + num_primals, len(args)):
        args[k], dims[k] = batching.bdim_at_front(args[k], dims[k], size), 0
    outs = _linear_p.bind(
        *args, num_residuals=num_residuals, num_primals=num_primals,
        out_types=batched_types,
        tangents_out=jax.vmap(tangents_out, tuple(dims)),
        cotangents_in=jax.vmap(cotangents_in, (*dims[:num_residuals], *[0] * len(out_types))))
    return outs, [0] * len(outs)


_linear_p.def_impl(lambda *args, tangents_out, **_: tangents_out(*args))
_linear_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_linear_p, _lower)
ad.primitive_transposes[_linear_p] = _transpose
ad.primitive_jvps[_linear_p] = _jvp
batching.primitive_batchers[_linear_p] = _batch
