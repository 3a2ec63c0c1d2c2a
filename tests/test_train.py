"""fit: loss falls, determinism, early stopping, checkpoints (atomic, exact resume)."""

import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jrnn
import jrnn.train
from jrnn import checkpoint as ckpt
from jrnn.forecast import Forecaster
from jrnn.train import fit


def _task(n=96, seed=0):
    """Predict the sum of a short random sequence (a smooth, learnable target)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8, 2)).astype(np.float32)
    Y = (X[:, -3:, 0].sum(axis=1, keepdims=True) * 0.5).astype(np.float32)
    return (X[:64], Y[:64]), (X[64:], Y[64:])


def _model():
    return Forecaster(jrnn.gru(8), input_size=2, output_size=1)


def _fit(**kw):
    model = _model()
    train, val = _task()
    options = dict(optimizer=optax.adam(1e-2), epochs=6, batch_size=16, seed=1, progress=False)
    options.update(kw)
    return fit(model.apply, model.init(jax.random.key(0)), train, val, **options)


def _equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_loss_falls_and_same_seed_same_result():
    params, history = _fit()
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert len(history.val_mae) == 6 and history.best_epoch >= 0
    again, history2 = _fit()
    _equal(params, again)
    assert history.train_loss == history2.train_loss
    other, _ = _fit(seed=2)
    assert not np.allclose(other.w_out, params.w_out)


def test_validation_pass_compiles_once_per_fit():
    """The per-epoch validation predictions reuse one compiled program (two batch shapes:
    full and last partial) instead of compiling one per epoch, and equal the model's."""
    model = _model()
    params = model.init(jax.random.key(0))
    X = _task()[0][0]
    before = jrnn.train._apply._cache_size()
    got = jrnn.train.predict(model.apply, params, X, batch_size=24)  # batches of 24, 24, 16
    np.testing.assert_allclose(got, model.apply(params, X), rtol=1e-5, atol=1e-6)
    assert jrnn.train._apply._cache_size() == before + 2
    _, history = fit(model.apply, params, *_task(), epochs=5, batch_size=16, progress=False)
    assert len(history.val_loss) == 5
    assert jrnn.train._apply._cache_size() == before + 3  # + the validation set's one batch shape


@pytest.mark.parametrize("option,message", [
    ({"epochs": 0}, "epochs: expected a positive int, got 0"),
    ({"patience": 0}, "patience: expected a positive int or None, got 0"),
    ({"seed": -1}, "seed: expected a non-negative int, got -1"),
    ({"batch_size": 0}, "batch_size: expected a positive int, got 0"),
    ({"resume": True}, "resume: needs a checkpoint_dir to resume from, got None"),
])
def test_bad_options_name_the_argument(option, message):
    with pytest.raises(ValueError, match=message):
        _fit(**option)


@pytest.mark.parametrize("data,message", [
    # Y of shape (N,) against predictions (N, 1) would broadcast the loss to (N, N) and train on nonsense
    (lambda t, v: ((t[0], t[1][:, 0]), v), (r"train: expected Y of shape \(N, 1\) like the model's predictions, "
                                            r"got \(64,\)")),
    (lambda t, v: (t, (v[0], v[1][:, None])), r"val: expected Y of shape \(N, 1\) .*, got \(32, 1, 1\)"),
    (lambda t, v: ((t[0], t[1][:60]), v), ("train: expected X and Y with the same number of rows, at least 1, "
                                          "got 64 and 60")),
    (lambda t, v: (t, (v[0][:0], v[1][:0])), ("val: expected X and Y with the same number of rows, at least 1, "
                                             "got 0 and 0")),
    (lambda t, v: (t, (*v, v[1])), r"val: expected a pair \(X, Y\), got a tuple of 3"),
])
def test_bad_data_names_the_argument(data, message):
    model = _model()
    train, val = data(*_task())
    with pytest.raises(ValueError, match=message):
        fit(model.apply, model.init(jax.random.key(0)), train, val, epochs=1, progress=False)


def test_checkpoint_dir_that_cannot_be_made_fails_before_training(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(jrnn.train, "make_train_step", None)  # training would fail differently
    with pytest.raises(OSError, match="checkpoint_dir: cannot create the folder .*a_file"):
        _fit(checkpoint_dir=str(tmp_path / "a_file"))


def test_early_stopping_restores_best():
    params, history = _fit(optimizer=optax.sgd(0.0), epochs=20, patience=3)  # never improves
    assert history.stopped_early and len(history.train_loss) == 4 and history.best_epoch == 0
    model = _model()
    _equal(params, model.init(jax.random.key(0)))


def test_clipping_is_on_by_default():
    huge = optax.sgd(1.0)
    model = _model()
    (X, Y), val = _task()
    init = model.init(jax.random.key(0))
    params, _ = fit(model.apply, init, (X, Y * 1e6), val, optimizer=huge, epochs=1, batch_size=64,
                    progress=False, patience=None)
    delta = optax.tree.norm(jax.tree.map(lambda a, b: a - b, params, init))
    assert float(delta) <= 1.0 + 1e-5  # one step of lr 1 with gradients clipped to norm 1


def test_exact_resume(tmp_path):
    full, full_history = _fit(checkpoint_dir=str(tmp_path / "full"))
    _fit(epochs=3, checkpoint_dir=str(tmp_path / "part"))
    assert ckpt.latest_step(tmp_path / "part") == 2
    resumed, history = _fit(checkpoint_dir=str(tmp_path / "part"), resume=True)
    _equal(resumed, full)
    assert history.train_loss == full_history.train_loss
    assert ckpt.steps(tmp_path / "full") == [3, 4, 5]  # keeps the newest three


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    params = model.init(jax.random.key(3))
    ckpt.save(tmp_path, 7, {"params": params}, {"model": model.config(), "note": "x"})
    step, meta = ckpt.read_meta(tmp_path)
    assert step == 7 and meta["note"] == "x" and Forecaster.from_config(meta["model"]) == model
    _equal(ckpt.restore(tmp_path, {"params": model.init(jax.random.key(0))})["params"], params)
    with pytest.raises(ckpt.CheckpointError, match="holds 5 arrays, expected 4"):
        ckpt.restore(tmp_path, {"params": params._replace(b_out=None)})
    wider = Forecaster(jrnn.gru(16), input_size=2, output_size=1)
    with pytest.raises(ckpt.CheckpointError, match=r"array 0 \(params.rnn.0.w_x\) in .* has shape \(2, 24\), "
                                                   r"expected \(2, 48\)"):
        ckpt.restore(tmp_path, {"params": wider.init(jax.random.key(0))})


def test_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    model = _model()
    good = model.init(jax.random.key(1))
    ckpt.save(tmp_path, 1, good, {"step": 1})

    def crash(file, **arrays):  # write part of a file, then die mid-save
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, model.init(jax.random.key(2)), {"step": 2})
    monkeypatch.undo()
    assert ckpt.steps(tmp_path) == [1] and os.listdir(tmp_path) == ["step_00000001.npz"]
    _equal(ckpt.restore(tmp_path, good), good)


def test_damaged_or_foreign_checkpoints(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such directory"):
        ckpt.read_meta(tmp_path / "nowhere")
    with pytest.raises(ckpt.CheckpointError, match=r"no jrnn checkpoint \(step_\*.npz\)"):
        ckpt.read_meta(tmp_path)
    params = _model().init(jax.random.key(0))
    path = ckpt.save(tmp_path, 1, params, {})
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.restore(tmp_path, params)
    np.savez(tmp_path / "step_00000002.npz", x=np.zeros(3))  # foreign npz
    with pytest.raises(ckpt.CheckpointError, match="damaged or not a jrnn checkpoint"):
        ckpt.read_meta(tmp_path)


def test_custom_loss_trains_a_sequence_classifier():
    """Sequence classification with cross-entropy on integer labels: whether a sequence's
    first feature sums to more than zero. The validation loss is that loss; no MAE."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(256, 6, 2)).astype(np.float32)
    labels = (X[:, :, 0].sum(axis=1) > 0).astype(np.int32)
    model = Forecaster(jrnn.gru(8), input_size=2, output_size=2)  # logits of 2 classes

    def cross_entropy(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params = model.init(jax.random.key(0))
    best, history = fit(model.apply, params, (X[:192], labels[:192]), (X[192:], labels[192:]),
                        optimizer=optax.adam(1e-2), epochs=15, batch_size=32, progress=False, loss=cross_entropy)
    accuracy = float((np.argmax(model.apply(best, X[192:]), axis=-1) == labels[192:]).mean())
    assert accuracy > 0.85, accuracy
    initial = float(cross_entropy(model.apply(params, X[192:]), labels[192:]))
    assert history.best_val_loss == min(history.val_loss) < 0.5 * initial
    assert history.val_mae == [] and len(history.val_loss) == len(history.train_loss)


@pytest.mark.parametrize("loss,message", [
    (lambda pred, y: ((pred - y) ** 2).mean(axis=-1),
     r"loss: expected a scalar \(the mean over the batch\), got \(1,\)"),
    (lambda pred, y: (pred.reshape(3) - y).mean(),
     r"train: loss\(predictions \(1, 1\), Y \(1, 1\)\) \(one row\) failed: TypeError: cannot reshape"),
])
def test_custom_loss_errors_name_it(loss, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        fit(model.apply, model.init(jax.random.key(0)), *_task(), epochs=1, progress=False, loss=loss)


def test_on_epoch_end_sees_every_epoch_and_can_stop(tmp_path):
    seen = []

    def log(epoch, history, params):
        seen.append((epoch, len(history.train_loss), history.val_loss[-1], params.w_out.shape))
        return np.int64(epoch) == 2  # stop after the third epoch (a NumPy bool, as comparisons give)

    _, history = _fit(epochs=6, on_epoch_end=log, checkpoint_dir=str(tmp_path))
    assert [s[:2] for s in seen] == [(0, 1), (1, 2), (2, 3)] and seen[0][3] == (8, 1)
    assert history.stopped_early and len(history.train_loss) == 3
    assert ckpt.read_meta(str(tmp_path))[1]["history"]["stopped_early"]  # so --resume does not go on
    _, resumed = _fit(epochs=6, resume=True, checkpoint_dir=str(tmp_path))
    assert len(resumed.train_loss) == 3
