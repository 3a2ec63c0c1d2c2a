"""``jrnn.nnx.RNN``: any jrnn cell or layer as a ``flax.nnx`` module.

Params are ``nnx.Param`` leaves (usable with ``nnx.Optimizer`` and
``nnx.jit``); the computation is the same pure core as :func:`jrnn.scan`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jrnn._named import from_named, run_layer, to_named
from jrnn.layers import check_layer


class RNN(nnx.Module):
    """A jrnn cell (or ``jrnn.stacked`` / ``jrnn.bidirectional`` layer) over a sequence.

    Args:
      layer: e.g. ``jrnn.lstm(64)``.
      input_size: I, the last axis of the inputs.
      rngs: ``nnx.Rngs``; ``params`` initialises, ``dropout`` (if any rate > 0) drives dropout.
      time_major, unroll, dropout, recurrent_dropout: as :func:`jrnn.scan`.
      deterministic: default for ``__call__`` (``nnx.view`` / ``model.eval()`` work too).
      implementation: as :func:`jrnn.scan` (``"auto"``).

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from flax import nnx
      >>> rnn = jrnn.nnx.RNN(jrnn.lstm(8), 3, rngs=nnx.Rngs(0))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(self, layer, input_size: int, *, rngs: nnx.Rngs, time_major: bool = False, unroll: int | None = None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, deterministic: bool = False,
                 param_dtype: Any = jnp.float32, implementation: str = "auto"):
        check_layer("layer", layer)
        self.layer = layer
        self.time_major, self.unroll, self.implementation = time_major, unroll, implementation
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.deterministic = deterministic
        params = layer.init(rngs.params(), input_size, param_dtype)
        self.template = jax.eval_shape(lambda: params)
        self.params = nnx.data(jax.tree.map(nnx.Param, to_named(params)))
        uses_dropout = dropout > 0 or recurrent_dropout > 0 or getattr(layer, "dropout", 0.0) > 0
        self.rngs = rngs["dropout"].fork() if uses_dropout else nnx.data(None)

    def __call__(self, xs, *, seq_lengths=None, initial_carry=None, reverse: bool = False,
                 return_carry: bool = False, deterministic: bool | None = None):
        """Returns ``ys``, or ``(carry, ys)`` with ``return_carry``."""
        params = self.jrnn_params()
        deterministic = self.deterministic if deterministic is None else deterministic
        dropout_key = None if (self.rngs is None or deterministic) else self.rngs()
        carry, ys = run_layer(self.layer, params, xs, seq_lengths=seq_lengths, initial_carry=initial_carry,
                              reverse=reverse, time_major=self.time_major, unroll=self.unroll,
                              rates={"dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout},
                              dropout_key=dropout_key, implementation=self.implementation)
        return (carry, ys) if return_carry else ys

    def jrnn_params(self):
        """The layer's params as jrnn's NamedTuples (for :func:`jrnn.scan`, :mod:`jrnn.interop`)."""
        named = jax.tree.map(lambda p: p[...], self.params, is_leaf=lambda x: isinstance(x, nnx.Param))
        return from_named(self.template, named)

    def set_jrnn_params(self, params) -> None:
        """Load jrnn params (trained elsewhere, or converted by :mod:`jrnn.interop`) into this module.

        Raises:
          TypeError/ValueError: params that do not fit the layer, or of another shape or
            dtype than the module's (the input size and ``param_dtype`` are fixed at construction).
        """
        self.layer.check_params(params)
        for (path, new), old in zip(jax.tree.flatten_with_path(params)[0], jax.tree.leaves(self.template)):
            if (new.shape, new.dtype) != (old.shape, old.dtype):
                raise ValueError(f"params{jax.tree_util.keystr(path)}: expected shape {old.shape} and dtype "
                                 f"{old.dtype} like this module's, got {new.shape} {new.dtype}")

        def assign(param, value):
            param[...] = jnp.asarray(value)

        jax.tree.map(assign, self.params, to_named(params), is_leaf=lambda x: isinstance(x, nnx.Param))
