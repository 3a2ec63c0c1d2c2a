"""Training with optax: one jitted step, clipping, early stopping, checkpoints.

The loop in short::

    tx = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
    for epoch in range(epochs):
        for X, Y in batches(train, seed=(seed, epoch)):          # host-side iterator
            state, loss = train_step(state, X, Y)                # one jit region
        val = mse(apply(params, X_val), Y_val)                   # early stopping
        checkpoint.save(...)                                     # atomic, resumable
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn import checkpoint as ckpt
from jrnn._serializable import serializable
from jrnn.data import batches


@serializable
class TrainState(NamedTuple):
    """``step`` (int32 scalar), ``params`` and ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass
class History:
    """Per-epoch losses (mean squared error in model units, or ``fit``'s ``loss``) and
    bookkeeping; ``val_mae``/``val_rmse`` are recorded for the default loss only."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    val_mae: list[float] = dataclasses.field(default_factory=list)
    val_rmse: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("inf")
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)


def mse(pred, target):
    return jnp.mean((pred - target) ** 2)


def metrics(pred, target) -> dict[str, float]:
    """MAE and RMSE over all entries."""
    err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def make_optimizer(optimizer: optax.GradientTransformation, clip_norm: float | None):
    """``optimizer`` behind gradient clipping by global norm (``None``: no clipping)."""
    if clip_norm is None:
        return optimizer
    if clip_norm <= 0:
        raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, loss_fn=mse, *, mesh=None):
    """One jitted step: forward, loss, gradients and the optax update together.

    With ``mesh``, the loss and gradients run in ``jax.shard_map`` over the mesh's
    first axis: each device computes its own rows of the batch (jrnn's native CPU
    loops are custom calls that XLA would otherwise run on the whole batch on
    every device), the loss is the mean over the devices (``loss_fn`` must be a
    mean over the batch) and the gradients of the params, replicated along that
    axis, are summed over it. The mesh's other axes stay with XLA, so params
    sharded along them keep their sharding. Each device draws its own dropout
    masks (``dropout_key`` folded with its index).
    """
    if mesh is None:
        loss_and_grads = _loss_and_grads(apply_fn, loss_fn)
    else:
        loss_and_grads = _data_parallel(apply_fn, loss_fn, mesh)

    @jax.jit
    def train_step(state: TrainState, X, Y, dropout_key):
        loss, grads = loss_and_grads(state.params, X, Y, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), loss

    return train_step


def _loss_and_grads(apply_fn: Callable, loss_fn, mean_over=None):
    """``(params, X, Y, dropout_key) -> (loss, grads)``; ``mean_over``: a mesh
    axis the loss is averaged over (inside ``shard_map``)."""

    def loss_and_grads(params, X, Y, dropout_key):
        def loss_of(params):
            loss = loss_fn(apply_fn(params, X, dropout_key=dropout_key), Y)
            return loss if mean_over is None else jax.lax.pmean(loss, mean_over)

        return jax.value_and_grad(loss_of)(params)

    return loss_and_grads


def _data_parallel(apply_fn: Callable, loss_fn, mesh):
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    per_device = _loss_and_grads(apply_fn, loss_fn, mean_over=axis)

    def own_masks(params, X, Y, dropout_key):
        if dropout_key is not None:
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis))
        return per_device(params, X, Y, dropout_key)

    return jax.shard_map(own_masks, mesh=mesh, in_specs=(P(), P(axis), P(axis), P()), out_specs=P(),
                         axis_names={axis})


def predict(apply_fn: Callable, params, X, batch_size: int = 512) -> np.ndarray:
    """``apply_fn`` over ``X`` in batches (jitted), as one NumPy array.

    Compiled once per ``apply_fn`` and batch shape and kept, so the validation
    pass of every epoch reuses it."""
    return np.concatenate([np.asarray(_apply(apply_fn, params, X[i : i + batch_size]))
                           for i in range(0, len(X), batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def _apply(apply_fn: Callable, params, X):
    return apply_fn(params, X)


def fit(
    apply_fn: Callable,
    params,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    clip_norm: float | None = 1.0,
    patience: int | None = 10,
    progress: bool = True,
    description: str = "train",
    checkpoint_dir: str | None = None,
    checkpoint_meta: dict | None = None,
    resume: bool = False,
    mesh=None,
    drop_last: bool = False,
    check_numerics: bool = False,
    loss: Callable | None = None,
    on_epoch_end: Callable | None = None,
):
    """Train ``params`` of ``apply_fn(params, X, dropout_key=None) -> predictions``.

    Args:
      apply_fn: the model, e.g. ``Forecaster.apply``.
      params: initial params.
      train, val: ``(X, Y)`` NumPy pairs; ``val`` drives early stopping.
      optimizer: any optax transformation (schedules included); default Adam(1e-3).
      epochs, batch_size: the budget; the last partial batch is used.
      seed: drives shuffling and dropout; the same seed gives the same result.
      clip_norm: gradient clipping by global norm (``None``: off).
      patience: stop after this many epochs without a better validation loss and
        restore the best params (``None``: never stop early; best params still returned).
      progress: show a tqdm bar with the live loss.
      checkpoint_dir: save after every epoch (atomically); with ``resume=True``
        continue from the newest checkpoint there exactly as if uninterrupted.
      checkpoint_meta: extra JSON stored with each checkpoint (model config, scaling).
      mesh: a ``jax.sharding.Mesh``: data parallelism. Each batch is split along
        the mesh's first axis and each device computes the loss and gradients of
        its rows (``jax.shard_map``; see :func:`make_train_step`); params and
        optimizer state are replicated, except arrays that arrive already sharded
        over ``mesh``, which keep their sharding. Without dropout the result
        equals single-device training up to float rounding. ``batch_size`` (and
        the last partial batch, unless ``drop_last``) must divide by that axis' size.
      drop_last: skip the last partial batch of each epoch.
      check_numerics: run each step under ``jax.experimental.checkify`` float
        checks, so the first NaN or Inf raises at the operation that made it
        (slower; for debugging).
      loss: ``loss(predictions, Y) -> scalar``, the mean over the batch's rows, e.g.
        ``lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits,
        labels).mean()`` for sequence classification (``Y`` may then be integer labels
        of any shape the loss takes). It also scores the validation set for early
        stopping. Default: mean squared error, with the validation MAE and RMSE
        recorded too (then ``Y`` must be shaped like the predictions).
      on_epoch_end: ``on_epoch_end(epoch, history, params)`` after every epoch, with
        that epoch's params (before its checkpoint is written), e.g. to log to
        TensorBoard or compute other metrics; returning a true value (``True``,
        ``accuracy > 0.99``) stops training as early stopping does
        (``history.stopped_early``; the best params are returned).

    Returns:
      ``(best_params, history)``.

    Raises:
      NonFiniteLossError: a NaN or Inf loss; names the epoch, batch and step. No
        checkpoint is written for that epoch, so the last good one stays the newest.
      OSError: ``checkpoint_dir`` cannot be created (checked before training).
      ValueError: bad options (``resume`` without ``checkpoint_dir``); ``train`` or
        ``val`` with no rows, unequal rows, or ``Y`` not shaped like the predictions
        (default loss) or not taken by ``loss`` (or ``loss`` not giving a scalar);
        batch sizes that do not divide over ``mesh``.
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience: expected a positive int or None, got {patience!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume: needs a checkpoint_dir to resume from, got None")
    loss_fn = mse if loss is None else loss
    regression = loss_fn is mse  # then Y is shaped like the predictions, and MAE/RMSE are recorded
    _check_pair("train", train, apply_fn, params, None if regression else loss_fn)
    if val is not None:
        _check_pair("val", val, apply_fn, params, None if regression else loss_fn)
    if checkpoint_dir is not None:  # fail now, not after the first epoch
        try:
            os.makedirs(checkpoint_dir, exist_ok=True)
        except OSError as err:
            raise OSError(f"checkpoint_dir: cannot create the folder {checkpoint_dir} ({err.strerror})") from None
    place = _placement(mesh, batch_size, len(train[0]), drop_last)
    tx = make_optimizer(optax.adam(1e-3) if optimizer is None else optimizer, clip_norm)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    best_params, history, start_epoch = params, History(), 0
    if resume and checkpoint_dir is not None and ckpt.latest_step(checkpoint_dir) is not None:
        _, meta = ckpt.read_meta(checkpoint_dir)
        restored = ckpt.restore(checkpoint_dir, {"state": state, "best_params": params})
        state, best_params = restored["state"], restored["best_params"]
        history = History.from_dict(meta["history"])
        start_epoch = meta["epoch"] + 1
    state, best_params = place.replicate(state), place.replicate(best_params)
    # checkify's error state in scan carries breaks shard_map's typing (JAX 0.10):
    # checked steps shard with XLA instead
    train_step = make_train_step(apply_fn, tx, loss_fn, mesh=None if check_numerics else mesh)
    if check_numerics:
        from jax.experimental import checkify

        checked = jax.jit(checkify.checkify(train_step, errors=checkify.float_checks))

        def train_step(*args):
            error, out = checked(*args)
            error.throw()
            return out

    base_key = jax.random.key(seed)
    started = time.perf_counter() - history.seconds
    bar = tqdm(range(start_epoch, epochs), desc=description, disable=not progress, leave=False,
               initial=start_epoch, total=epochs)
    for epoch in bar:
        if history.stopped_early:
            break
        losses, weights = [], []
        first_step = int(state.step)
        for X, Y in batches(*train, batch_size, seed=_epoch_seed(seed, epoch), drop_last=drop_last):
            dropout_key = jax.random.fold_in(base_key, first_step + len(losses))
            state, batch_loss = train_step(state, *place.split(X, Y), dropout_key)
            losses.append(batch_loss)
            weights.append(len(X))
        losses = np.asarray(jax.device_get(losses), np.float64)
        if not np.isfinite(losses).all():
            bad = int(np.flatnonzero(~np.isfinite(losses))[0])
            last = ckpt.latest_step(checkpoint_dir) if checkpoint_dir is not None else None
            kept = f"; the last good checkpoint is epoch {last} in {checkpoint_dir}" if last is not None else ""
            raise NonFiniteLossError(
                f"training: loss is {losses[bad]} at epoch {epoch}, batch {bad} (step {first_step + bad + 1}); "
                f"check the data for NaN/Inf or lower the learning rate{kept}"
            )
        history.train_loss.append(float(np.average(losses, weights=weights)))
        postfix = {"loss": f"{history.train_loss[-1]:.4f}"}
        if val is not None:
            pred = predict(apply_fn, state.params, val[0])
            if regression:
                history.val_loss.append(float(np.mean((pred - val[1]) ** 2)))
                m = metrics(pred, val[1])
                history.val_mae.append(m["mae"])
                history.val_rmse.append(m["rmse"])
            else:
                history.val_loss.append(float(loss_fn(jnp.asarray(pred), jnp.asarray(val[1]))))
            postfix["val"] = f"{history.val_loss[-1]:.4f}"
            if history.val_loss[-1] < history.best_val_loss:
                history.best_val_loss, history.best_epoch = history.val_loss[-1], epoch
                history.epochs_without_improvement = 0
                best_params = state.params
            else:
                history.epochs_without_improvement += 1
                if patience is not None and history.epochs_without_improvement >= patience:
                    history.stopped_early = True
        else:
            best_params, history.best_epoch = state.params, epoch
        bar.set_postfix(postfix)
        history.seconds = time.perf_counter() - started
        if on_epoch_end is not None:
            stop = on_epoch_end(epoch, history, state.params)
            history.stopped_early |= stop is not None and bool(stop)  # NumPy's True too
        if checkpoint_dir is not None:
            meta = {**(checkpoint_meta or {}), "epoch": epoch, "step": int(state.step),
                    "seed": seed, "history": history.to_dict()}
            ckpt.save(checkpoint_dir, epoch, {"state": state, "best_params": best_params}, meta)
    bar.close()
    return best_params, history


def _check_pair(name: str, pair, apply_fn: Callable, params, loss=None) -> None:
    """Raise ``ValueError`` unless ``pair`` is ``(X, Y)`` with as many rows, at least
    one, and ``Y``'s rows shaped like the model's predictions (else the mean squared
    error broadcasts) or, with a ``loss``, taken by it to a scalar."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        got = f"a {type(pair).__name__} of {len(pair)}" if isinstance(pair, (tuple, list)) else type(pair).__name__
        raise ValueError(f"{name}: expected a pair (X, Y), got {got}")
    X, Y = pair
    if len(X) == 0 or len(X) != len(Y):
        raise ValueError(f"{name}: expected X and Y with the same number of rows, at least 1, "
                         f"got {len(X)} and {len(Y)}")
    predicted = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *np.shape(X)[1:]), np.asarray(X[:1]).dtype))
    if loss is not None:
        targets = jax.ShapeDtypeStruct((1, *np.shape(Y)[1:]), np.asarray(Y[:1]).dtype)
        try:
            value = jax.eval_shape(loss, predicted, targets)
        except Exception as err:  # the user's function: report what it was given
            raise ValueError(f"{name}: loss(predictions {tuple(predicted.shape)}, Y {tuple(targets.shape)}) "
                             f"(one row) failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err
        if getattr(value, "shape", None) != ():
            raise ValueError(f"loss: expected a scalar (the mean over the batch), got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
        return
    if tuple(predicted.shape[1:]) != tuple(np.shape(Y)[1:]):
        raise ValueError(f"{name}: expected Y of shape (N, {', '.join(map(str, predicted.shape[1:]))}) like the "
                         f"model's predictions, got {tuple(np.shape(Y))}")


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss."""


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where arrays live: one device, or split/replicated over a mesh."""

    data: Any = None
    replicated: Any = None

    def replicate(self, tree):
        """Put ``tree`` on the mesh, replicated, except arrays already sharded over it."""
        if self.replicated is None:
            return tree
        mesh = self.replicated.mesh

        def place(leaf):
            on_mesh = isinstance(leaf, jax.Array) and getattr(leaf.sharding, "mesh", None) == mesh
            return leaf if on_mesh else jax.device_put(leaf, self.replicated)

        return jax.tree.map(place, tree)

    def split(self, X, Y):
        return (X, Y) if self.data is None else jax.device_put((X, Y), self.data)


def _placement(mesh, batch_size, num_examples, drop_last) -> _Placement:
    if mesh is None:
        return _Placement()
    from jax.sharding import NamedSharding, PartitionSpec

    axis = mesh.axis_names[0]
    devices = mesh.shape[axis]
    last = 0 if drop_last else num_examples % batch_size
    if batch_size % devices or last % devices:
        raise ValueError(
            f"batch_size: with a mesh of {devices} devices along {axis!r}, every batch must divide by "
            f"{devices}; got batch_size {batch_size} and a last batch of {last} "
            "(choose another batch_size or pass drop_last=True)"
        )
    return _Placement(NamedSharding(mesh, PartitionSpec(axis)), NamedSharding(mesh, PartitionSpec()))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
