"""``jrnn.linen.RNN``: any jrnn cell or layer as a ``flax.linen`` module.

The module owns the params (created through Flax's ``self.param`` with the
cell's own initialisers) and calls the same pure core as :func:`jrnn.scan`;
there is no second copy of the equations.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jrnn._named import checked_from_named, from_named, run_layer, to_named
from jrnn.layers import check_layer


class RNN(nn.Module):
    """A jrnn cell (or ``jrnn.stacked`` / ``jrnn.bidirectional`` layer) over a sequence.

    Attributes:
      layer: e.g. ``jrnn.lstm(64)`` or ``jrnn.stacked([...])``.
      time_major: inputs are ``(T, *batch, I)``.
      unroll: as :func:`jrnn.scan` (``None``: 16 time steps per loop iteration on a GPU, else 1).
      dropout, recurrent_dropout: Keras-style variational rates, drawn from the
        ``'dropout'`` RNG stream unless deterministic.
      deterministic: default for ``__call__``'s ``deterministic``.
      param_dtype: dtype of the params.
      implementation: as :func:`jrnn.scan` (``"auto"``).

    Params are one entry, ``"layer"``: a dict ``{"w_x", "w_h", "b", ...}`` (nested
    by layer index or direction for stacked and bidirectional layers).
    :meth:`jrnn_params` and :meth:`flax_params` convert them to and from jrnn's
    params (for :func:`jrnn.scan`, :mod:`jrnn.interop`, or weights trained elsewhere).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jrnn
      >>> model = nn.Sequential([nn.Dense(8), jrnn.linen.RNN(jrnn.gru(16)), nn.Dense(1)])
      >>> variables = model.init(jax.random.key(0), jnp.ones((4, 10, 3)))
      >>> model.apply(variables, jnp.ones((4, 10, 3))).shape
      (4, 10, 1)
    """

    layer: Any
    time_major: bool = False
    unroll: int | None = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    deterministic: bool | None = None
    param_dtype: Any = jnp.float32
    implementation: str = "auto"

    @nn.compact
    def __call__(self, xs, *, seq_lengths=None, initial_carry=None, reverse: bool = False,
                 return_carry: bool = False, deterministic: bool | None = None):
        """Returns ``ys`` (``(*batch, T, H)``), or ``(carry, ys)`` with ``return_carry``."""
        check_layer("layer", self.layer)
        input_size = xs.shape[-1]
        template = jax.eval_shape(lambda: self.layer.init(jax.random.key(0), input_size, self.param_dtype))
        named = self.param("layer", lambda key: to_named(self.layer.init(key, input_size, self.param_dtype)))
        params = from_named(template, named)
        rates = {"dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout}
        uses_dropout = any(rates.values()) or getattr(self.layer, "dropout", 0.0) > 0
        dropout_key = None
        if uses_dropout and not nn.merge_param("deterministic", self.deterministic, deterministic):
            dropout_key = self.make_rng("dropout")
        carry, ys = run_layer(self.layer, params, xs, seq_lengths=seq_lengths, initial_carry=initial_carry,
                              reverse=reverse, time_major=self.time_major, unroll=self.unroll,
                              rates=rates, dropout_key=dropout_key, implementation=self.implementation)
        return (carry, ys) if return_carry else ys

    def jrnn_params(self, params):
        """This module's params (``variables["params"]["RNN_0"]``, say) -> the layer's jrnn params.

        Raises:
          ValueError: not ``{"layer": ...}`` with the layer's entries and shapes.
        """
        if not isinstance(params, dict) or set(params) != {"layer"}:
            found = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params: expected this module's params, a dict with one entry 'layer' "
                             f"(variables['params'][<the module's name>]), got {found}")
        return checked_from_named(self.layer, params["layer"], "params['layer']")

    def flax_params(self, params):
        """The layer's jrnn params -> this module's params ``{"layer": ...}`` (to put in ``variables``)."""
        self.layer.check_params(params)
        return {"layer": to_named(params)}
