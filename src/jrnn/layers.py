"""Layers built from the scan driver: bidirectional and stacked networks.

A *layer* is anything with ``init(key, input_size)``, ``initial_carry(batch_shape)``,
``output_size(input_size)`` and ``__call__(params, xs, carry=None, **options)``
returning ``(carry, ys)``. Cells are layers (``cell(params, xs)`` is
``jrnn.scan(cell, params, xs)``); :func:`bidirectional` and :func:`stacked`
build bigger ones and nest freely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import check_key, check_rate
from jrnn._serializable import serializable
from jrnn.cells import Cell
from jrnn.scan import dropout_mask

MERGE_MODES = {
    "concat": lambda f, b: jnp.concatenate([f, b], axis=-1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: (f + b) / 2,
    "product": lambda f, b: f * b,
}


def check_layer(name: str, layer) -> None:
    """Raise ``TypeError`` unless ``layer`` is a jrnn cell or layer (see the module docstring)."""
    if not all(hasattr(layer, method) for method in ("init", "initial_carry", "output_size")):
        flax_cell = type(layer).__module__.startswith("flax")
        hint = "; a Flax cell's params convert with jrnn.interop.from_flax" if flax_cell else ""
        raise TypeError(f"{name}: expected a jrnn cell or layer, got {type(layer).__name__}{hint}")


@serializable
class BidirectionalParams(NamedTuple):
    """Params of the forward and backward cells."""

    forward: Any
    backward: Any


@jax.tree_util.register_static  # no leaves: passes through jit like a cell
@dataclasses.dataclass(frozen=True)
class Bidirectional:
    """Forward and backward cells over the same sequence, outputs merged.

    ``ys = merge(forward(xs), reverse(xs))`` where the backward pass runs each
    sequence's valid part from its last valid step to its first (padding-aware)
    and writes outputs at their original positions. The carry is
    ``(forward_carry, backward_carry)``; the backward one is its state after
    reading the first step.
    """

    forward: Cell
    backward: Cell
    merge: str = "concat"

    def __post_init__(self):
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge: expected one of {tuple(MERGE_MODES)}, got {self.merge!r}")
        if not isinstance(self.forward, Cell) or not isinstance(self.backward, Cell):
            raise TypeError(
                "bidirectional: expected jrnn cells for forward and backward, got "
                f"{type(self.forward).__name__} and {type(self.backward).__name__}"
            )
        self.output_size()  # a merge other than concat needs equal hidden sizes

    def init(self, key, input_size: int, dtype=jnp.float32) -> BidirectionalParams:
        check_key(key)
        k_f, k_b = jax.random.split(key)
        return BidirectionalParams(
            self.forward.init(k_f, input_size, dtype), self.backward.init(k_b, input_size, dtype)
        )

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        return (
            self.forward.initial_carry(batch_shape, dtype),
            self.backward.initial_carry(batch_shape, dtype),
        )

    def output_size(self, input_size: int | None = None) -> int:
        f, b = self.forward.output_size(), self.backward.output_size()
        if self.merge == "concat":
            return f + b
        if f != b:
            raise ValueError(
                f"merge: {self.merge!r} needs equal output sizes, got {f} (forward) and {b} (backward)"
            )
        return f

    def check_params(self, params) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``params`` fit both directions."""
        if not isinstance(params, BidirectionalParams):
            raise TypeError(f"params: expected BidirectionalParams, got {type(params).__name__}")
        self.forward.check_params(params.forward)
        self.backward.check_params(params.backward)

    def __call__(self, params, xs, carry=None, *, dropout_key=None, **options):
        """Run both directions; ``options`` go to :func:`jrnn.scan` (not ``reverse``).

        Returns ``((forward_carry, backward_carry), ys)``.
        """
        if "reverse" in options:
            raise TypeError("reverse: not an option of a bidirectional layer")
        self.output_size()
        self.check_params(params)
        carry_f, carry_b = (None, None) if carry is None else carry
        key_f = key_b = None
        if dropout_key is not None:
            key_f, key_b = jax.random.split(dropout_key)
        carry_f, ys_f = self.forward(params.forward, xs, carry_f, dropout_key=key_f, **options)
        carry_b, ys_b = self.backward(
            params.backward, xs, carry_b, reverse=True, dropout_key=key_b, **options
        )
        return (carry_f, carry_b), MERGE_MODES[self.merge](ys_f, ys_b)


def bidirectional(forward: Cell, backward: Cell | None = None, *, merge: str = "concat"):
    """A bidirectional layer; ``backward`` defaults to a cell configured like ``forward``.

    Args:
      forward: the cell read left to right.
      backward: the cell read right to left (own params either way).
      merge: ``"concat"`` (default, width ``2H``), ``"sum"``, ``"mean"`` or ``"product"``.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> layer = jrnn.bidirectional(jrnn.gru(4))
      >>> params = layer.init(jax.random.key(0), 3)
      >>> (c_fwd, c_bwd), ys = layer(params, jnp.ones((2, 7, 3)))
      >>> ys.shape
      (2, 7, 8)
    """
    return Bidirectional(forward, forward if backward is None else backward, merge)


@jax.tree_util.register_static  # no leaves: passes through jit like a cell
@dataclasses.dataclass(frozen=True)
class Stacked:
    """Layers applied one after another; layer k reads the outputs of layer k-1.

    ``dropout`` (PyTorch-style) drops elements of every layer's outputs except
    the last one's; ``recurrent_dropout`` and ``input_dropout`` are the
    variational (Keras-style) rates passed to each layer. All dropout needs a
    ``dropout_key`` at call time; without one the network is deterministic.
    """

    layers: tuple
    dropout: float = 0.0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0

    def __post_init__(self):
        if len(self.layers) == 0:
            raise ValueError("layers: expected at least one layer, got none")
        for i, layer in enumerate(self.layers):
            check_layer(f"layers[{i}]", layer)
        check_rate("dropout", self.dropout)
        check_rate("input_dropout", self.input_dropout)
        check_rate("recurrent_dropout", self.recurrent_dropout)

    def init(self, key, input_size: int, dtype=jnp.float32) -> tuple:
        """Params of every layer, a tuple; layer k's input size is layer k-1's output size."""
        check_key(key)
        keys = jax.random.split(key, len(self.layers))
        params = []
        for layer, k in zip(self.layers, keys):
            params.append(layer.init(k, input_size, dtype))
            input_size = layer.output_size(input_size)
        return tuple(params)

    def initial_carry(self, batch_shape=(), dtype=jnp.float32) -> tuple:
        return tuple(layer.initial_carry(batch_shape, dtype) for layer in self.layers)

    def check_params(self, params) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``params`` is one fitting entry per layer."""
        if not isinstance(params, (tuple, list)) or len(params) != len(self.layers):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"params: expected a tuple of {len(self.layers)} layer params, got {got}")
        for layer, layer_params in zip(self.layers, params):
            layer.check_params(layer_params)

    def output_size(self, input_size: int | None = None) -> int:
        for layer in self.layers:
            input_size = layer.output_size(input_size)
        return input_size

    def __call__(self, params, xs, carry=None, *, dropout_key=None, **options):
        """Run every layer; ``options`` (``seq_lengths``, ``time_major``, ``unroll``)
        go to each one. Returns ``(tuple of per-layer carries, ys of the last layer)``."""
        self.check_params(params)
        if carry is not None and (not isinstance(carry, (tuple, list)) or len(carry) != len(self.layers)):
            raise ValueError(f"carry: expected a tuple of {len(self.layers)} layer carries")
        carries = (None,) * len(self.layers) if carry is None else carry
        keys = (None,) * len(self.layers)
        if dropout_key is not None:
            keys = tuple(jax.random.split(dropout_key, 2 * len(self.layers)))
        rates = {"dropout": self.input_dropout, "recurrent_dropout": self.recurrent_dropout}
        final = []
        for i, (layer, layer_params, layer_carry) in enumerate(zip(self.layers, params, carries)):
            layer_key = keys[2 * i] if dropout_key is not None else None
            layer_carry, xs = layer(
                layer_params, xs, layer_carry, dropout_key=layer_key, **rates, **options
            )
            final.append(layer_carry)
            last = i == len(self.layers) - 1
            if dropout_key is not None and self.dropout > 0 and not last:
                xs = xs * dropout_mask(keys[2 * i + 1], self.dropout, xs.shape, xs.dtype)
        return tuple(final), xs


def stacked(
    layers,
    *,
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
) -> Stacked:
    """A multi-layer network from a sequence of cells or bidirectional layers.

    Args:
      layers: cells or layers, first to last.
      dropout: rate of (element-wise) dropout on each layer's outputs except the
        last's, as ``torch.nn.LSTM(dropout=...)``.
      input_dropout: variational dropout on each layer's inputs (Keras ``dropout``).
      recurrent_dropout: variational dropout on ``h_{t-1}`` (Keras ``recurrent_dropout``).

    Raises:
      TypeError: ``layers`` not a sequence of cells or layers.
      ValueError: no layers, or a rate outside [0, 1).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> net = jrnn.stacked([jrnn.lstm(16), jrnn.bidirectional(jrnn.gru(8))], dropout=0.1)
      >>> params = net.init(jax.random.key(0), 3)
      >>> carries, ys = net(params, jnp.ones((4, 10, 3)), dropout_key=jax.random.key(1))
      >>> ys.shape
      (4, 10, 16)
    """
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"layers: expected a sequence of cells or layers, got {type(layers).__name__}")
    return Stacked(tuple(layers), dropout, input_dropout, recurrent_dropout)
