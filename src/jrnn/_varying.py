"""Inside ``jax.shard_map``: the mesh axes over which arrays vary.

``shard_map`` types each array with the manual mesh axes over which its value
may differ between devices. ``lax.scan`` needs its carry to keep one type, and
both branches of a platform switch must agree, so a zero initial carry, or the
outputs of a foreign function call (which JAX types as varying over no axis),
are cast to vary over the axes of the inputs they are computed from. Outside
``shard_map`` nothing varies and nothing is cast.
"""

from __future__ import annotations

import jax


def varying_axes(x) -> frozenset:
    """The ``jax.shard_map`` mesh axes over which ``x`` varies (none outside one)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10; earlier: ``aval.vma``
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def vary_like(tree, *inputs):
    """``tree`` with each leaf cast (``lax.pcast``, values unchanged) to vary over
    every axis over which any leaf of ``inputs`` varies."""
    axes = frozenset().union(*(varying_axes(x) for x in jax.tree.leaves(inputs)))
    if not axes:
        return tree

    def cast(leaf):
        missing = tuple(sorted(axes - varying_axes(leaf)))
        return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf

    return jax.tree.map(cast, tree)


def sum_like(cotangent, primal):
    """A custom VJP's cotangent for ``primal``, summed (``lax.psum``) over the axes
    over which it varies and ``primal`` does not: a replicated input's gradient is
    the sum of every device's, as JAX's own autodiff computes it."""
    extra = tuple(sorted(varying_axes(cotangent) - varying_axes(primal)))
    return jax.lax.psum(cotangent, extra) if extra else cotangent
