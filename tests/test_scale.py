"""Scale and trust: data-parallel training, non-finite losses, kill and resume, long-sequence stability."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import checkpoint as ckpt
from jrnn.forecast import Forecaster
from jrnn.train import NonFiniteLossError, fit

DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import re, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax, jrnn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jrnn.forecast import Forecaster
    from jrnn.kernels import native
    from jrnn.train import TrainState, fit, make_train_step
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 10, 3)).astype(np.float32)
    Y = X[:, -2:, 0].sum(axis=1, keepdims=True)
    model = Forecaster(jrnn.lstm(8), 3, 1)
    init = model.init(jax.random.key(0))
    options = dict(optimizer=optax.adam(1e-2), epochs=3, batch_size=32, seed=0, progress=False, patience=None)
    single, h1 = fit(model.apply, init, (X, Y), (X[:32], Y[:32]), **options)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    multi, h8 = fit(model.apply, init, (X, Y), (X[:32], Y[:32]), mesh=mesh, **options)
    diff = max(float(np.linalg.norm(a - b) / np.linalg.norm(b))
               for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(single)))
    sharding = str(multi.w_out.sharding)
    try:
        fit(model.apply, init, (X[:100], Y[:100]), mesh=mesh, **options)
        error = None
    except ValueError as err:
        error = str(err)

    # params that arrive sharded over a second mesh axis keep their sharding
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    wide = lambda a: P(None, "model") if a.ndim == 2 and a.shape[1] % 2 == 0 else P()
    sharded = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh2, wide(a))), init)
    multi2, h42 = fit(model.apply, sharded, (X, Y), (X[:32], Y[:32]), mesh=mesh2, **options)
    diff2 = max(float(np.linalg.norm(a - b) / np.linalg.norm(b))
                for a, b in zip(jax.tree.leaves(multi2), jax.tree.leaves(single)))
    specs = [str(a.sharding.spec) for a in jax.tree.leaves(multi2)]
    with tempfile.TemporaryDirectory() as directory:  # stopped after 2 epochs, resumed: the same, sharded alike
        fit(model.apply, sharded, (X, Y), (X[:32], Y[:32]), mesh=mesh2, checkpoint_dir=directory,
            **{**options, "epochs": 2})
        resumed, _ = fit(model.apply, sharded, (X, Y), (X[:32], Y[:32]), mesh=mesh2, checkpoint_dir=directory,
                         resume=True, **options)
    resumed_diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(multi2)))
    resumed_specs = [str(a.sharding.spec) for a in jax.tree.leaves(resumed)]

    # each device's native loops run on its own rows of the batch (32 / 8 = 4)
    state = TrainState(jnp.zeros((), jnp.int32), init, optax.adam(1e-2).init(init))
    Xs, Ys = jax.device_put((X[:32], Y[:32]), NamedSharding(mesh, P("data")))
    step = make_train_step(model.apply, optax.adam(1e-2), mesh=mesh)
    hlo = step.lower(state, Xs, Ys, jax.random.key(0)).compile().as_text()
    loop_batches = sorted({int(m) for m in re.findall(r"f32\\[10,(\\d+),32\\].*custom_call_target=.jrnn_lstm", hlo)})

    dropout_model = Forecaster(jrnn.lstm(8), 3, 1, num_layers=2, dropout=0.5)
    _, h_dropout = fit(dropout_model.apply, dropout_model.init(jax.random.key(0)), (X, Y), mesh=mesh, **options)
    # each device draws its own masks: 8 copies of the same 4 rows do not give the loss of those 4 rows alone
    # (with one key shared by all devices, every device's loss, and so their mean, would be exactly that)
    weights = dropout_model.init(jax.random.key(0))
    state = TrainState(jnp.zeros((), jnp.int32), weights, optax.adam(1e-2).init(weights))
    X4, Y4 = X[:4], Y[:4]
    copies = jax.device_put((np.tile(X4, (8, 1, 1)), np.tile(Y4, (8, 1))), NamedSharding(mesh, P("data")))
    dropout_losses = [float(make_train_step(dropout_model.apply, optax.adam(1e-2), mesh=m)(state, *xy,
                                                                                          jax.random.key(3))[1])
                      for m, xy in ((mesh, copies), (None, (X4, Y4)))]
    # a custom loss (cross-entropy of two classes) trains the same over the mesh
    labels = (Y[:, 0] > 0).astype(np.int32)
    classifier = Forecaster(jrnn.gru(8), 3, 2)
    ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    ce_runs = [fit(classifier.apply, classifier.init(jax.random.key(0)), (X, labels), (X[:32], labels[:32]),
                   mesh=m, loss=ce, **options)[1] for m in (None, mesh)]
    print(json.dumps({"ce_val1": ce_runs[0].val_loss, "ce_val8": ce_runs[1].val_loss,
                      "loss1": h1.train_loss, "loss8": h8.train_loss, "param_rel_diff": diff,
                      "sharding": sharding, "error": error, "loss_4x2": h42.train_loss, "param_rel_diff_4x2": diff2,
                      "specs_4x2": specs, "resumed_diff": resumed_diff, "resumed_specs": resumed_specs,
                      "native": native.available(), "loop_batches": loop_batches,
                      "dropout_loss": h_dropout.train_loss, "dropout_losses": dropout_losses}))
""")


def test_data_parallel_equals_single_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["loss8"], result["loss1"], rtol=1e-6)
    assert result["param_rel_diff"] < 1e-6  # ‖multi − single‖ / ‖single‖, per array
    assert len(result["ce_val1"]) == 3  # fit(loss=...) over a mesh: the same validation losses
    np.testing.assert_allclose(result["ce_val8"], result["ce_val1"], rtol=1e-5)
    assert "NamedSharding" in result["sharding"]
    assert "batch_size: with a mesh of 8 devices along 'data'" in result["error"]
    assert "last batch of 4" in result["error"]
    np.testing.assert_allclose(result["loss_4x2"], result["loss1"], rtol=1e-6)
    assert result["param_rel_diff_4x2"] < 1e-6
    assert result["specs_4x2"][:2] == ["P(None, 'model')"] * 2  # the LSTM's w_x (3, 32) and w_h (8, 32)
    assert result["resumed_specs"] == result["specs_4x2"] and result["resumed_diff"] == 0
    if result["native"]:
        assert result["loop_batches"] == [4]  # forward and backward calls, on 4 rows each, not the whole 32
    assert np.isfinite(result["dropout_loss"]).all()  # dropout between two layers, inside shard_map
    copies_loss, rows_loss = result["dropout_losses"]
    assert np.isfinite(copies_loss) and abs(copies_loss - rows_loss) > 1e-4 * rows_loss


SHARD_MAP_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import contextlib, jax, jax.numpy as jnp, numpy as np, jrnn
    from jax.sharding import Mesh, PartitionSpec as P
    from jrnn.kernels import native
    mesh = Mesh(np.array(jax.devices()), ("data",))
    net = jrnn.stacked([jrnn.bidirectional(jrnn.lstm(4)), jrnn.gru(3, reset_after=True), jrnn.simple_rnn(2)])
    params = net.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (8, 6, 3))
    lengths = jnp.array([6, 2, 0, 5, 6, 1, 3, 4])

    def loss(params, xs, lengths, implementation):
        return jnp.sum(net(params, xs, seq_lengths=lengths, implementation=implementation)[1] ** 2)

    def per_device(params, xs, lengths, implementation):
        value, grads = jax.value_and_grad(loss)(params, xs, lengths, implementation)
        return jax.lax.psum(value, "data"), grads  # grads of replicated params: summed by JAX

    result = {}
    for name, implementation, loops in [("plain", "plain", contextlib.nullcontext), ("fused", "fused",
                                        contextlib.nullcontext), ("fused-xla", "fused", native.disabled)]:
        with loops():
            sharded = jax.jit(jax.shard_map(lambda p, x, l: per_device(p, x, l, implementation), mesh=mesh,
                                            in_specs=(P(), P("data"), P("data")), out_specs=(P(), P())))
            value, grads = sharded(params, xs, lengths)
            want_value, want_grads = jax.value_and_grad(loss)(params, xs, lengths, implementation)
        result[name] = max([abs(float(value - want_value)) / abs(float(want_value))] + [
            float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in zip(jax.tree.leaves(grads),
                                                                                 jax.tree.leaves(want_grads))])
    result["native"] = native.available()
    print(json.dumps(result))
""")


def test_scan_inside_shard_map_equals_one_device():
    """``jrnn.scan`` (through stacked and bidirectional layers, with lengths) inside
    ``jax.shard_map`` over a batch-sharded mesh: loss and gradients equal one
    device's, for the plain path, the fused path with native loops (one call per
    device, on its shard) and with XLA loops."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", SHARD_MAP_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result.pop("native") or os.environ.get("JRNN_NATIVE") == "0"
    for name, relative_error in result.items():
        assert relative_error < 1e-5, (name, relative_error)


def test_sharded_benchmark_quick_runs():
    """``benchmarks/sharded.py --quick`` on two emulated CPU devices prints a row per contender."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "sharded.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line.endswith(" |")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "shard_map, native loops", "automatic sharding, native loops", "one device, native loops",
        "automatic sharding, XLA loops", "train step, shard_map (fit with a mesh)", "train step, automatic sharding"]
    assert "devices: 2" in out.stdout


def _task():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6, 2)).astype(np.float32)
    return X, X[:, -1:, 0].copy()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = Forecaster(jrnn.gru(4), 2, 1)
    X, Y = _task()
    options = dict(optimizer=optax.adam(1e-2), batch_size=16, progress=False, patience=None,
                   checkpoint_dir=str(tmp_path))
    fit(model.apply, model.init(jax.random.key(0)), (X, Y), epochs=2, **options)
    bad = X.copy()
    bad[37, 2, 1] = np.nan
    message = r"loss is nan at epoch 2, batch \d \(step \d+\).*last good checkpoint is epoch 1"
    with pytest.raises(NonFiniteLossError, match=message):
        fit(model.apply, model.init(jax.random.key(0)), (bad, Y), epochs=4, resume=True, **options)
    assert ckpt.latest_step(tmp_path) == 1
    ckpt.read_meta(tmp_path)  # still readable


def test_check_numerics_locates_the_operation():
    from jax.experimental import checkify

    model = Forecaster(jrnn.lstm(4), 2, 1)
    X, Y = _task()
    X[3, 1, 0] = np.inf
    with pytest.raises(checkify.JaxRuntimeError, match="nan generated by primitive"):
        fit(model.apply, model.init(jax.random.key(0)), (X, Y), epochs=1, batch_size=16, progress=False,
            check_numerics=True)


KILL_RUN = ["--target", "temp_max", "--date-column", "date", "--features", "temp_max", "temp_min",
            "--epochs", "14", "--hidden", "8", "--seq-len", "10", "--quiet", "--patience", "50"]


def test_sigkill_and_resume_match_uninterrupted_run(tmp_path):
    from jrnn import datasets

    csv = tmp_path / "w.csv"
    datasets.seattle_weather().to_csv(csv, index=False)
    cmd = [sys.executable, "-m", "jrnn", "train", "--csv", str(csv), *KILL_RUN]
    full = subprocess.run([*cmd, "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    killed_dir = tmp_path / "killed"
    for target_epoch in (2, 6):  # kill twice, mid-training, once each checkpoint is on disk
        proc = subprocess.Popen([*cmd, "--out", str(killed_dir), "--resume"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while (ckpt.latest_step(killed_dir) or -1) < target_epoch and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not [n for n in os.listdir(killed_dir) if not n.startswith(("step_", ".tmp-"))]
        ckpt.read_meta(killed_dir)  # the newest complete checkpoint is always readable
    assert ckpt.latest_step(killed_dir) < 13
    done = subprocess.run([*cmd, "--out", str(killed_dir), "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a = np.load(ckpt.step_path(tmp_path / "full", 13))
    b = np.load(ckpt.step_path(killed_dir, 13))
    names = [n for n in a.files if n.startswith("leaf_")]
    assert names and sorted(names) == sorted(n for n in b.files if n.startswith("leaf_"))
    for n in names:
        np.testing.assert_array_equal(a[n], b[n])


@pytest.mark.parametrize("cell", [jrnn.lstm(128), jrnn.gru(128)], ids=["lstm", "gru"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16-f32-carry"])
def test_ten_thousand_steps_stay_finite(cell, dtype, key):
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(key, 16))
    xs = jax.random.normal(key, (8, 10_000, 16)).astype(dtype)

    def loss(params, xs):
        _, ys = jrnn.scan(cell, params, xs, carry_dtype=jnp.float32)
        return jnp.mean(ys.astype(jnp.float32) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)
    assert np.isfinite(value)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("cell", [jrnn.lstm(8), jrnn.gru(8), jrnn.gru(8, reset_after=True), jrnn.simple_rnn(8),
                                  jrnn.min_gru(8), jrnn.min_lstm(8)],
                         ids=["lstm", "gru", "gru_ra", "simple_rnn", "min_gru", "min_lstm"])
def test_saturating_inputs_give_finite_values_and_gradients(cell, key):
    params = cell.init(key, 3)
    xs = jax.random.choice(key, jnp.array([-1e4, 1e4]), (4, 50, 3)).astype(jnp.float32)
    loss = lambda p, x: jnp.mean(jrnn.scan(cell, p, x)[1] ** 2)
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from jrnn import checkpoint as ckpt
    big = {"w": np.random.default_rng(0).normal(size=(4096, 8192)).astype(np.float32)}  # 128 MiB
    ckpt.save(sys.argv[1], 1, {"w": np.ones((3, 3), np.float32)}, {"note": "good"})
    print("saved", flush=True)
    for step in range(2, 100):
        ckpt.save(sys.argv[1], step, big, {"note": "big"}, max_to_keep=None)
""")


def test_sigkill_during_a_checkpoint_write_keeps_the_last_good_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    deadline = time.time() + 120
    while time.time() < deadline and not any(n.startswith(".tmp-") for n in os.listdir(tmp_path)):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)  # while a temporary file is being written
    proc.wait()
    partial = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert partial, "the writer was not caught mid-write"
    newest = ckpt.latest_step(tmp_path)
    _, meta = ckpt.read_meta(tmp_path, newest)  # the newest complete step is intact
    assert meta["note"] in ("good", "big")
    ckpt.save(tmp_path, newest + 1, {"w": np.zeros(2, np.float32)}, {"note": "after"})  # and saving goes on
    assert ckpt.read_meta(tmp_path)[1]["note"] == "after"
