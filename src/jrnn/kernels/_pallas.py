"""What the Pallas recurrent kernels share: batch tiling, the ``pallas_call``
wrapper, and padding the batch to whole tiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK_B = 16  # batch rows per program (Triton's dot needs at least 16)
NT = (((1,), (1,)), ((), ()))  # dot_general dimension numbers of d @ wᵀ
HIDDEN_SIZES = (16, 32, 64, 128)  # each gate's (H, H) block is staged in shared memory


def sigmoid(a):
    return 1.0 / (1.0 + jnp.exp(-a))


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


def call(kernel, inputs, kinds, out_shapes, out_kinds, interpret):
    """One program per batch tile of ``BLOCK_B`` rows; ``kinds`` as in :func:`_specs`."""
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


def tiled(projected, carry_leaves):
    """Flatten the batch axes of ``projected (T, *batch, G)`` and the carry leaves
    ``(*batch, H)`` and zero-pad the batch to whole tiles.

    Returns ``(projected (T, B', G), leaves (B', H), untile)``, where ``untile(a)``
    drops the padding rows of ``a (..., B', N)`` and restores ``*batch``.
    """
    T, batch_shape, G = projected.shape[0], projected.shape[1:-1], projected.shape[-1]
    size = 1
    for d in batch_shape:
        size *= d
    padded = -(-max(size, 1) // BLOCK_B) * BLOCK_B
    pad = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, padded - size), (0, 0)])
    px = pad(projected.reshape(T, size, G))
    leaves = [pad(c.reshape(size, c.shape[-1])) for c in carry_leaves]
    untile = lambda a: a[..., :size, :].reshape(*a.shape[:-2], *batch_shape, a.shape[-1])
    return px, leaves, untile


def interpret_default(interpret):
    """Compiled on a GPU, interpreted elsewhere, unless the caller says."""
    return jax.default_backend() != "gpu" if interpret is None else interpret
