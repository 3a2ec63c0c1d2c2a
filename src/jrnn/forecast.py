"""A recurrent forecaster (stacked cells + a dense head) and autoregressive forecasts.

``Forecaster.apply`` runs the scanned network over whole windows (training);
``Forecaster.step`` advances the state one step (streaming inference);
:func:`forecast` scans the network over a history and then feeds each
forecast back through ``step``, and equals the step-by-step computation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import checkpoint as ckpt
from jrnn._checks import check_key
from jrnn._ranks import add_bias
from jrnn._serializable import serializable
from jrnn.cells import Cell, from_config
from jrnn.data import TARGET_MODES, Scaler, check_out_steps
from jrnn.layers import stacked


@serializable
class ForecasterParams(NamedTuple):
    """``rnn``: per-layer cell params; ``w_out (H, O)``, ``b_out (O,)``: the dense head."""

    rnn: tuple
    w_out: jax.Array
    b_out: jax.Array


@jax.tree_util.register_static  # no leaves: passes through jit like a cell
@dataclasses.dataclass(frozen=True)
class Forecaster:
    """``num_layers`` cells like ``cell`` stacked, then ``y = h @ w_out + b_out``.

    ``mode="last"`` predicts from the last hidden state: ``(n, L, I) -> (n, O)``,
    or with ``out_steps=K`` the next K steps at once (single-shot multi-step:
    the head has ``K * O`` outputs): ``(n, L, I) -> (n, K, O)``;
    ``mode="sequence"`` predicts at every step: ``(n, L, I) -> (n, L, O)``.

    >>> import jax, jax.numpy as jnp, jrnn
    >>> model = Forecaster(jrnn.gru(8), input_size=4, output_size=1)
    >>> params = model.init(jax.random.key(0))
    >>> model.apply(params, jnp.ones((5, 30, 4))).shape
    (5, 1)
    """

    cell: Cell
    input_size: int
    output_size: int
    num_layers: int = 1
    mode: str = "last"
    dropout: float = 0.0
    out_steps: int | None = None

    def __post_init__(self):
        if self.mode not in TARGET_MODES:
            raise ValueError(f"mode: expected one of {TARGET_MODES}, got {self.mode!r}")
        check_out_steps(self.out_steps, self.mode)
        for name in ("input_size", "output_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")

    @property
    def network(self):
        return stacked([self.cell] * self.num_layers, dropout=self.dropout)

    def init(self, key, dtype=jnp.float32) -> ForecasterParams:
        check_key(key)
        k_rnn, k_out = jax.random.split(key)
        H, outputs = self.cell.output_size(), self.output_size * (self.out_steps or 1)
        w_out = jax.nn.initializers.glorot_uniform()(k_out, (H, outputs), dtype)
        return ForecasterParams(self.network.init(k_rnn, self.input_size, dtype), w_out, jnp.zeros(outputs, dtype))

    def _head(self, params: ForecasterParams, hidden):
        """``hidden (..., H) -> (..., O)``, or ``(..., K, O)`` with ``out_steps``."""
        y = add_bias(hidden @ params.w_out, params.b_out)
        return y if self.out_steps is None else y.reshape(*y.shape[:-1], self.out_steps, self.output_size)

    def apply(self, params: ForecasterParams, X, *, dropout_key=None):
        """Predictions for windows ``X (*batch, L, I)``."""
        _, ys = self.network(params.rnn, X, dropout_key=dropout_key)
        return self._head(params, ys[..., -1, :] if self.mode == "last" else ys)

    # -- streaming -------------------------------------------------------------
    def initial_state(self, batch_shape=(), dtype=jnp.float32) -> tuple:
        return self.network.initial_carry(batch_shape, dtype)

    def step(self, params: ForecasterParams, state: tuple, x_t):
        """One streaming step through every layer: ``x_t (*batch, I) -> (state, y_t (*batch, O))``
        (``(*batch, K, O)`` with ``out_steps``)."""
        new_state = []
        h = x_t
        for layer_params, carry in zip(params.rnn, state):
            carry, h = self.cell.step(layer_params, carry, h)
            new_state.append(carry)
        return tuple(new_state), self._head(params, h)

    def config(self) -> dict[str, Any]:
        return {"cell": self.cell.config(), "input_size": self.input_size,
                "output_size": self.output_size, "num_layers": self.num_layers,
                "mode": self.mode, "dropout": self.dropout, "out_steps": self.out_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Forecaster:
        config = dict(config)
        return cls(from_config(config.pop("cell")), **config)


def forecast(
    model: Forecaster,
    params: ForecasterParams,
    history,
    *,
    steps: int = 1,
    scaler: Scaler | Sequence[Scaler] | None = None,
    feature_index=None,
    target_index=None,
) -> np.ndarray:
    """Forecast ``steps`` values after ``history``: the network runs over
    ``history (L, F)`` from a zero state, then each forecast is fed back as the
    next input (``model.step``; autoregressive), which needs the targets to be
    the features. ``history (G, L, F)`` forecasts G series at once (one
    compiled call for all). One compiled call, reused by later calls with the
    same model configuration, history shape and ``steps`` (rolling forecasts).

    With a ``scaler``, ``history`` and the result are in original units
    (``feature_index``/``target_index`` pick the scaler's columns; ``None``: all
    of them, when the scaler has as many columns as the model has inputs or
    outputs); G series may have a scaler each (a sequence of G scalers, e.g.
    ``[prepared.scaler_of(g) for g in groups]``); without one both are in
    model units.

    Returns:
      ``(steps, O)`` forecasts; for a model with ``out_steps=K``, its ``(K, O)``
      forecasts of the next K steps; with G series, ``(G, steps, O)`` or ``(G, K, O)``.

    Raises:
      ValueError: ``history`` of the wrong shape or with no rows, ``steps < 1``,
        column indexes that do not fit the scaler and the model, G scalers for
        another number of series, or ``steps > 1`` when the model's outputs
        cannot be its next inputs or it has ``out_steps``.
    """
    history = np.asarray(history, np.float64)
    if history.ndim not in (2, 3) or history.shape[-1] != model.input_size or 0 in history.shape[:-1]:
        raise ValueError(f"history: expected shape (L, {model.input_size}) or (G, L, {model.input_size}) "
                         f"with G, L >= 1, got {history.shape}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    scalers = _scalers_per_series(scaler, history)
    if scalers:
        feature_index = _scaler_columns("feature_index", feature_index, scalers[0], model.input_size)
        target_index = _scaler_columns("target_index", target_index, scalers[0], model.output_size)
    autoregressive_ok = model.output_size == model.input_size and (not scalers or feature_index == target_index)
    if steps > 1 and model.out_steps is not None:
        raise ValueError(f"steps: {steps} with a model that forecasts its next {model.out_steps} steps at once "
                         "(out_steps); use steps=1")
    if steps > 1 and not autoregressive_ok:
        raise ValueError(
            f"steps: {steps} needs the targets to be the features (outputs fed back as "
            "inputs); train with the same --features and --target, or use --steps 1"
        )
    series = history.reshape(-1, *history.shape[-2:])  # (G, L, F)
    if scalers:
        series = np.stack([s.transform(h, feature_index) for s, h in zip(scalers, series)])
    out = np.asarray(_forecast(model, params, jnp.asarray(series, params.w_out.dtype), steps), np.float64)
    if scalers:
        out = np.stack([s.inverse_transform(y, target_index) for s, y in zip(scalers, out)])
    return out if history.ndim == 3 else out[0]


def _scalers_per_series(scaler, history: np.ndarray) -> list[Scaler]:
    """One scaler per series of ``history`` (``[]`` without a scaler)."""
    if scaler is None:
        return []
    count = history.shape[0] if history.ndim == 3 else 1
    if isinstance(scaler, Scaler):
        return [scaler] * count
    scalers = list(scaler)
    if history.ndim != 3 or len(scalers) != count or not all(isinstance(s, Scaler) for s in scalers):
        raise ValueError(f"scaler: expected a Scaler, or one per series of history (G, L, F) = {history.shape}, "
                         f"got {len(scalers)} of {sorted({type(s).__name__ for s in scalers})}")
    if len({len(s.mean) for s in scalers}) != 1:
        raise ValueError(f"scaler: expected scalers of as many columns each, got {[len(s.mean) for s in scalers]}")
    return scalers


@functools.partial(jax.jit, static_argnames="steps")
def _forecast(model: Forecaster, params: ForecasterParams, history, steps: int):
    """``(G, steps, O)`` (``(G, K, O)`` with ``out_steps``) after ``history (G, L, I)``, in
    one compiled call: the network scanned over ``history``, then ``steps - 1`` steps
    fed back. Compiled once per model configuration, history shape and ``steps``."""
    state, ys = model.network(params.rnn, history)
    y = model._head(params, ys[:, -1])
    if model.out_steps is not None:
        return y
    if steps == 1:  # (outputs may not fit as inputs: nothing to feed back)
        return y[:, None]

    def feed_back(carry, _):
        state, y = model.step(params, *carry)
        return (state, y), y

    _, later = jax.lax.scan(feed_back, (state, y), length=steps - 1)  # (steps - 1, G, O)
    return jnp.concatenate([y[:, None], jnp.swapaxes(later, 0, 1)], axis=1)


def _scaler_columns(name: str, index, scaler: Scaler, size: int) -> list[int]:
    """``index`` as a list of ``size`` scaler columns; ``None``: all of them, if there are ``size``."""
    columns = len(scaler.mean)
    if index is None:
        if columns != size:
            raise ValueError(f"{name}: expected {size} of the scaler's {columns} columns, got None")
        return list(range(columns))
    index = [int(i) for i in index]
    if len(index) != size or not all(0 <= i < columns for i in index):
        raise ValueError(f"{name}: expected {size} column indexes in [0, {columns}), got {index}")
    return index


def load_checkpoint(directory):
    """``(model, best_params, meta)`` from a checkpoint folder written by ``jrnn train``
    (or :func:`jrnn.train.fit` with a ``{"model": model.config(), ...}`` meta).

    Raises:
      CheckpointError: missing, unreadable or foreign checkpoint.
    """
    import optax

    from jrnn.train import TrainState, make_optimizer

    _, meta = ckpt.read_meta(directory)
    try:
        model = Forecaster.from_config(meta["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ckpt.CheckpointError(f"checkpoint: {directory} has no usable model configuration ({err})") from None
    opt = meta.get("optimizer", {})
    tx = make_optimizer(optax.adam(opt.get("learning_rate", 1e-3)), opt.get("clip_norm", 1.0))

    def saved_tree():
        params = model.init(jax.random.key(0))
        return {"state": TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), "best_params": params}

    like = jax.eval_shape(saved_tree)  # shapes and dtypes only: nothing is initialised or compiled
    return model, ckpt.restore(directory, like)["best_params"], meta
