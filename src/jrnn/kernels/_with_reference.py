"""Kernels paired with plain-JAX references that stand in for them where a kernel cannot go.

jrnn's fast paths (the native CPU loops, the Pallas kernels, cuDNN) call
kernels that JAX cannot look inside: custom calls and Pallas kernels. Each
such call goes through :func:`with_reference`, with a plain-JAX function that
computes the same values from the same inputs. The reference stands in for
the kernel in two places:

- **Differentiation.** The kernels pair a forward with a backward under a
  custom VJP (:mod:`jrnn.kernels._custom_vjp`), so a gradient runs both.
  Forward mode (``jax.jvp``) and a derivative of that gradient (``jax.grad``
  of a gradient penalty, ``jax.hessian``, a Hessian-vector product as
  ``jax.jvp(jax.grad(f), ...)``) differentiate the forward and backward
  functions themselves: JAX differentiates the references.
- **``jax.export``.** Export refuses custom calls that have no compatibility
  guarantee: jrnn's native loops, its cuDNN binding and Pallas' Triton
  kernels. Code lowered for export gets the reference's XLA operations, which
  any later JAX on any machine can run.

Everywhere else (``jax.jit``, eager calls, ``jax.vmap``) the kernel runs.
"""

from __future__ import annotations

import jax
from jax.extend import core
from jax.interpreters import ad, batching, mlir

from jrnn._varying import vary_like

_call_p = core.Primitive("jrnn_kernel_with_reference")
_call_p.multiple_results = True


def with_reference(kernel, reference):
    """``kernel`` with ``reference`` standing in for it under differentiation
    (``jax.jvp``, and ``jax.linearize`` inside reverse mode) and in code
    lowered by ``jax.export``. Both take the same pytrees and return the same
    shapes and dtypes; integer outputs (cuDNN's reserve space) have no
    tangents, so ``reference`` may return any array of their shape and dtype."""

    def call(*args):
        # inside jax.shard_map, every input varies over the same mesh axes, so that
        # the outputs' type is the inputs' (the kernels' outputs vary like their inputs)
        flat_args, in_tree = jax.tree.flatten(vary_like(args, *args))
        # the kernel traced once, for its outputs' types (shard_map's varying axes included) and tree
        on_leaves = lambda *leaves: kernel(*jax.tree.unflatten(in_tree, leaves))
        typed, out_shapes = jax.make_jaxpr(on_leaves, return_shape=True)(*flat_args)
        outs = _call_p.bind(*flat_args, out_types=tuple(typed.out_avals), kernel=_flat(kernel, in_tree),
                            reference=_flat(reference, in_tree))
        return jax.tree.unflatten(jax.tree.structure(out_shapes), outs)

    return call


def _flat(fn, in_tree):
    """``fn`` on the flat leaves of its arguments, returning its outputs' flat leaves."""
    return lambda *leaves: jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, leaves)))


def _abstract_eval(*avals, out_types, **_):
    return out_types


def _lower(ctx, *args, kernel, reference, **_):
    # JAX sets ``for_export`` in ``jax.export`` alone (an internal parameter: if a later
    # JAX drops it, the kernels are lowered as before and only export refuses them)
    exporting = getattr(getattr(ctx.module_context, "lowering_parameters", None), "for_export", False)
    return mlir.lower_fun(reference if exporting else kernel, multiple_results=True)(ctx, *args)


def _jvp(primals, tangents, *, reference, **_):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(reference, tuple(primals), tuple(tangents))


def batched_out_types(args, dims, out_types) -> tuple[int, tuple]:
    """For a batching rule: the batch size of ``args`` (batched at ``dims``, ``None``
    where not) and ``out_types`` with that axis in front. Shared with ``_custom_vjp``."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    return size, tuple(core.unmapped_aval(size, 0, t) for t in out_types)


def _batch(args, dims, *, out_types, kernel, reference):
    in_axes = tuple(dims)  # an int, or None where an argument is not batched
    _, types = batched_out_types(args, dims, out_types)
    outs = _call_p.bind(*args, out_types=types,
                        kernel=jax.vmap(kernel, in_axes), reference=jax.vmap(reference, in_axes))
    return outs, [0] * len(outs)


_call_p.def_impl(lambda *args, kernel, **_: kernel(*args))
_call_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_call_p, _lower)
ad.primitive_jvps[_call_p] = _jvp
batching.primitive_batchers[_call_p] = _batch
