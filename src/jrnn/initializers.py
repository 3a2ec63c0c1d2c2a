"""Parameter initialisers and the presets that reproduce Keras, PyTorch and Flax.

An :class:`Initializer` bundles four pure functions ``(key, shape, dtype) -> array``
plus the LSTM forget-gate bias. Cells call it from ``cell.init``; nothing here
is part of the forward pass.

Presets (``jrnn.lstm(H, init="pytorch")`` etc.):

========== ============================ ============================== ============ ===========
preset     input kernel ``w_x``         recurrent kernel ``w_h``        bias ``b``   LSTM forget
========== ============================ ============================== ============ ===========
default    Glorot-uniform (whole)       orthogonal (whole matrix)       zeros        1.0
keras      same as ``default``          same as ``default``             zeros        1.0
pytorch    U(-1/√H, 1/√H)               U(-1/√H, 1/√H)                  sum of two   0.0
                                                                        such draws
flax       LeCun-normal                 orthogonal per gate block       zeros        0.0
========== ============================ ============================== ============ ===========

PyTorch keeps two biases (``b_ih + b_hh``); jrnn keeps their sum, so the
``pytorch`` preset draws the sum of two independent uniforms, which is the
distribution PyTorch's effective bias has. ``b_hn`` (reset-after GRU) is one
such uniform under ``pytorch`` and zeros otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

ArrayInit = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]


class Initializer(NamedTuple):
    """How a cell draws its parameters.

    Attributes:
      input_kernel: ``(key, (I, G*H), dtype) -> w_x``.
      recurrent_kernel: ``(key, (H, G*H), dtype) -> w_h``.
      bias: ``(key, (G*H,), dtype) -> b``.
      recurrent_bias: ``(key, (H,), dtype) -> b_hn`` (reset-after GRU only).
      forget_bias: value added to the LSTM forget-gate block of ``b`` at init.
    """

    input_kernel: ArrayInit
    recurrent_kernel: ArrayInit
    bias: ArrayInit
    recurrent_bias: ArrayInit
    forget_bias: float


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the key is unused)."""
    del key
    return jnp.zeros(shape, dtype)


def blockwise(init: ArrayInit) -> ArrayInit:
    """Apply ``init`` to each square ``(H, H)`` block of an ``(H, G*H)`` kernel (a
    kernel whose width is not a multiple of its height gets its last block cut to fit)."""

    def init_blocks(key, shape, dtype=jnp.float32):
        rows, cols = shape
        num_blocks = -(-cols // rows)
        keys = jax.random.split(key, num_blocks)
        return jnp.concatenate([init(k, (rows, rows), dtype) for k in keys], axis=-1)[:, :cols]

    return init_blocks


def _uniform(key, shape, dtype, bound):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def pytorch_preset(hidden_size: int) -> Initializer:
    """PyTorch's ``reset_parameters``: every weight and bias U(-1/√H, 1/√H)."""
    bound = 1.0 / math.sqrt(hidden_size)

    def uniform(key, shape, dtype=jnp.float32):
        return _uniform(key, shape, dtype, bound)

    def summed_bias(key, shape, dtype=jnp.float32):
        k_ih, k_hh = jax.random.split(key)
        return uniform(k_ih, shape, dtype) + uniform(k_hh, shape, dtype)

    return Initializer(uniform, uniform, summed_bias, uniform, forget_bias=0.0)


KERAS = Initializer(
    input_kernel=jax.nn.initializers.glorot_uniform(),
    recurrent_kernel=jax.nn.initializers.orthogonal(),
    bias=zeros,
    recurrent_bias=zeros,
    forget_bias=1.0,
)

FLAX = Initializer(
    input_kernel=jax.nn.initializers.lecun_normal(),
    recurrent_kernel=blockwise(jax.nn.initializers.orthogonal()),
    bias=zeros,
    recurrent_bias=zeros,
    forget_bias=0.0,
)

PRESETS = ("default", "keras", "pytorch", "flax")


def resolve(init: str | Initializer, hidden_size: int) -> Initializer:
    """Turn a preset name (or an :class:`Initializer`) into an :class:`Initializer`.

    Raises:
      ValueError: ``init`` is not one of :data:`PRESETS`.
      TypeError: ``init`` is neither a string nor an :class:`Initializer`.
    """
    if isinstance(init, Initializer):
        return init
    if not isinstance(init, str):
        raise TypeError(
            f"init: expected one of {PRESETS} or a jrnn.initializers.Initializer, "
            f"got {type(init).__name__}"
        )
    if init in ("default", "keras"):
        return KERAS
    if init == "flax":
        return FLAX
    if init == "pytorch":
        return pytorch_preset(hidden_size)
    raise ValueError(f"init: expected one of {PRESETS}, got {init!r}")
