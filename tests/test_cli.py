"""The jrnn command, run for real in subprocesses."""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jrnn import datasets


def jrnn_cmd(*args, cwd=None, env=None):
    """``python -m jrnn *args``; ``env``: variables added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "jrnn", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def weather_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "weather.csv"
    datasets.seattle_weather().to_csv(path, index=False)
    return path


def test_help():
    for sub in ("compare", "train", "predict"):
        out = jrnn_cmd(sub, "--help")
        assert out.returncode == 0 and "usage: jrnn " + sub in out.stdout


def test_compare_end_to_end(tmp_path):
    out = jrnn_cmd("compare", "--epochs", 2, "--quiet", "--out", tmp_path / "o", "--json", tmp_path / "t.json")
    assert out.returncode == 0, out.stderr
    for label in ("SimpleRNN", "LSTM", "GRU", "persistence (baseline)", "seasonal mean (baseline)", "test MAE (°C)"):
        assert label in out.stdout
    result = json.loads((tmp_path / "t.json").read_text())
    assert [r["model"] for r in result["rows"]][:3] == ["SimpleRNN", "LSTM", "GRU"]
    assert {r["params"] for r in result["rows"][:3]} == {1217, 4769, 3585}
    persistence = next(r for r in result["rows"] if r["model"].startswith("persistence"))
    assert 2.0 < persistence["mae"] < 2.5  # tomorrow = today on Seattle's 2015 test days
    for png in ("forecast.png", "loss.png"):
        assert (tmp_path / "o" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_out_steps(tmp_path):
    """``jrnn compare --out-steps 3``: every cell and baseline forecasts three days at once;
    a second table gives the error at each step."""
    out = jrnn_cmd("compare", "--out-steps", 3, "--cells", "gru", "--epochs", 1, "--seq-len", 10, "--quiet",
                   "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "predict temp_max steps 1 to 3 ahead" in out.stdout
    assert "| test MAE (°C) at step | 1 | 2 | 3 |" in out.stdout
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [len(r["mae_by_step"]) for r in rows] == [3, 3, 3]


def test_train_predict_resume(tmp_path, weather_csv):
    ck = tmp_path / "ck"
    out = jrnn_cmd("train", "--csv", weather_csv, "--target", "temp_max", "--date-column", "date",
                   "--features", "temp_max", "--epochs", 3, "--quiet", "--out", ck)
    assert out.returncode == 0, out.stderr
    assert "test MAE" in out.stdout and sorted(os.listdir(ck)) == [f"step_0000000{i}.npz" for i in range(3)]
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", weather_csv, "--steps", 3, "--out", tmp_path / "f.csv")
    assert out.returncode == 0, out.stderr
    forecasts = pd.read_csv(tmp_path / "f.csv")
    assert forecasts.columns.tolist() == ["step", "date", "temp_max"] and forecasts.step.tolist() == [1, 2, 3]
    assert forecasts.date.tolist() == ["2016-01-01", "2016-01-02", "2016-01-03"]  # the days after 2015-12-31
    assert forecasts.temp_max.between(-10, 40).all()  # °C, not scaled units
    # Newest row first: predict sorts by the training run's --date-column, so the forecast is the same.
    pd.read_csv(weather_csv).iloc[::-1].to_csv(tmp_path / "newest_first.csv", index=False)
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", tmp_path / "newest_first.csv", "--steps", 3)
    assert out.returncode == 0, out.stderr
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(out.stdout)), forecasts)
    resumed = jrnn_cmd("train", "--csv", weather_csv, "--target", "temp_max", "--date-column", "date",
                       "--features", "temp_max", "--epochs", 4, "--quiet", "--out", ck, "--resume")
    assert resumed.returncode == 0 and "4 epochs" in resumed.stdout
    other = jrnn_cmd("train", "--csv", weather_csv, "--target", "temp_max", "--date-column", "date",
                     "--features", "temp_max", "--hidden", 16, "--epochs", 5, "--quiet", "--out", ck, "--resume")
    assert other.returncode == 2 and other.stderr.strip() == (
        f"jrnn: error: --resume: {ck} was trained with --hidden 32 (this run: 16); pass the same options, "
        "or a new --out to start afresh")
    other = jrnn_cmd("train", "--csv", weather_csv, "--target", "temp_max", "--date-column", "date",
                     "--features", "temp_max", "--horizon", 2, "--epochs", 5, "--quiet", "--out", ck, "--resume")
    assert other.returncode == 2 and "was trained with --horizon 1 (this run: 2)" in other.stderr


def test_train_out_steps_predicts_a_week_at_once(tmp_path, weather_csv):
    """All weather columns in, the next 7 days' temp_max out (no feedback, so any --features)."""
    ck = tmp_path / "week"
    out = jrnn_cmd("train", "--csv", weather_csv, "--target", "temp_max", "--date-column", "date",
                   "--out-steps", 7, "--epochs", 2, "--quiet", "--out", ck)
    assert out.returncode == 0, out.stderr
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", weather_csv)
    assert out.returncode == 0, out.stderr
    forecasts = pd.read_csv(io.StringIO(out.stdout))
    assert forecasts.columns.tolist() == ["step", "date", "temp_max"] and forecasts.step.tolist() == list(range(1, 8))
    assert forecasts.date.tolist() == [f"2016-01-0{d}" for d in range(1, 8)]
    assert forecasts.temp_max.between(-10, 40).all()
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", weather_csv, "--steps", 2)
    assert out.returncode == 2 and "--steps: the model forecasts its next 7 steps at once" in out.stderr


def test_train_predict_several_series(tmp_path):
    """A CSV of three cities in long format: one model, each city scaled by its own
    training rows; a forecast per city, after that city's own last rows (its level,
    its dates)."""
    dates = pd.date_range("2021-01-01", periods=150).strftime("%Y-%m-%d")
    season = 5 * np.sin(2 * np.pi * np.arange(150) / 30)
    cities = pd.concat([pd.DataFrame({"date": dates, "city": city, "temp": level + season})
                        for city, level in (("north", 5.0), ("south", 25.0), ("east", 15.0))])
    cities.sort_values("date", kind="stable").to_csv(tmp_path / "cities.csv", index=False)
    ck = tmp_path / "ck"
    train = ["train", "--csv", tmp_path / "cities.csv", "--target", "temp", "--date-column", "date",
             "--group-column", "city", "--seq-len", 10, "--quiet", "--out", ck]
    out = jrnn_cmd(*train, "--epochs", 30, "--scale-per-series")
    assert out.returncode == 0, out.stderr
    assert re.search(r"test MAE [\d.]+, RMSE [\d.]+ over 3 series \(MAE per series: median [\d.]+, "
                     r"worst city='(north|south|east)' [\d.]+\)", out.stdout), out.stdout
    latest = cities[cities.date <= "2021-05-20"]
    latest.to_csv(tmp_path / "latest.csv", index=False)
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", tmp_path / "latest.csv", "--steps", 2)
    assert out.returncode == 0, out.stderr
    forecasts = pd.read_csv(io.StringIO(out.stdout))
    assert forecasts.columns.tolist() == ["city", "step", "date", "temp"]
    assert forecasts.city.tolist() == ["north", "north", "south", "south", "east", "east"]
    assert forecasts.date.tolist() == ["2021-05-21", "2021-05-22"] * 3
    truth = cities.set_index(["city", "date"]).temp.loc[list(zip(forecasts.city, forecasts.date))]
    np.testing.assert_allclose(forecasts.temp, truth.to_numpy(), atol=2.0)  # levels 5, 25, 15 kept apart
    short = latest[(latest.city != "south") | (latest.date >= "2021-05-15")]
    short.to_csv(tmp_path / "short.csv", index=False)
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", tmp_path / "short.csv")
    assert out.returncode == 2 and out.stderr.strip() == (
        "jrnn: error: series city='south': data: expected at least 10 rows (the model reads windows of 10 rows), "
        "got 6")
    latest.assign(city=latest.city.replace({"east": "west"})).to_csv(tmp_path / "west.csv", index=False)
    out = jrnn_cmd("predict", "--checkpoint", ck, "--csv", tmp_path / "west.csv")
    assert out.returncode == 2 and out.stderr.strip() == (
        "jrnn: error: series city='west': not in the training data; a model trained with --scale-per-series "
        "knows the scales of north, south, east only")
    out = jrnn_cmd(*train, "--epochs", 31, "--resume")
    assert out.returncode == 2 and "--scale-per-series on (this run: off)" in out.stderr
    single = ck.parent / "single"  # a model of one series refuses a table of several (a date repeats)
    out = jrnn_cmd("train", "--csv", tmp_path / "cities.csv", "--target", "temp", "--date-column", "date",
                   "--seq-len", 10, "--epochs", 1, "--quiet", "--out", single)
    assert out.returncode == 2 and "date_column: 'date' repeats 2021-01-01 (rows 0 and 1)" in out.stderr
    cities[cities.city == "north"].to_csv(tmp_path / "north.csv", index=False)
    out = jrnn_cmd("train", "--csv", tmp_path / "north.csv", "--target", "temp", "--date-column", "date",
                   "--seq-len", 10, "--epochs", 1, "--quiet", "--out", single)
    assert out.returncode == 0, out.stderr
    out = jrnn_cmd("predict", "--checkpoint", single, "--csv", tmp_path / "cities.csv")
    assert out.returncode == 2 and "several series in one table? pass group_column" in out.stderr


def _bad_inputs(tmp_path, weather_csv):
    frame = pd.read_csv(weather_csv)
    nan = frame.copy()
    nan.loc[3, "wind"] = np.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    frame.head(20).to_csv(tmp_path / "short.csv", index=False)
    frame.assign(wind="calm").to_csv(tmp_path / "text.csv", index=False)
    (tmp_path / "foreign").mkdir()
    np.savez(tmp_path / "foreign" / "step_00000001.npz", x=np.zeros(2))
    base = ["train", "--out", tmp_path / "o", "--quiet", "--target"]
    return [
        (["train", "--csv", tmp_path / "missing.csv", "--target", "a", "--out", tmp_path / "o"], "csv: no such file"),
        ([*base, "nope", "--csv", weather_csv], "columns: 'nope' not in the data"),
        ([*base, "wind", "--csv", tmp_path / "text.csv"], "column 'wind': expected numbers"),
        ([*base, "wind", "--csv", tmp_path / "nan.csv"], "NaN or infinite values in ['wind'] (first at row 3)"),
        ([*base, "wind", "--csv", tmp_path / "short.csv", "--features", "wind"],
         "data: expected at least 31 rows (seq_len 30 + horizon 1), got 20"),
        ([*base, "wind", "--csv", weather_csv, "--cell", "transformer"], "argument --cell: invalid choice"),
        ([*base, "wind", "--csv", weather_csv, "--lr", "-1"], "argument --lr: expected a positive number, got -1"),
        (["compare", "--lr", "nan"], "argument --lr: expected a positive number, got nan"),
        (["diagnose", "--seed", "-1"], "argument --seed: expected a non-negative integer, got -1"),
        (["diagnose", "--out", weather_csv], "--out: cannot create the folder"),
        (["compare", "--json", tmp_path / "missing" / "t.json"], "--json: no such folder"),
        (["train", "--csv", weather_csv, "--target", "wind", "--out", weather_csv], "is a file; expected a folder"),
        (["predict", "--checkpoint", tmp_path / "nowhere", "--csv", weather_csv], "--checkpoint: no such folder"),
        (["predict", "--checkpoint", tmp_path / "foreign", "--csv", weather_csv], "damaged or not a jrnn checkpoint"),
        (["compare", "--cells", "lstm,transformer"], "cell: expected one of"),
        (["compare", "--group-column", "city"], "--group-column: needs --csv"),
        (["compare", "--scale-per-series"], "--scale-per-series: needs --group-column"),
        ([*base, "temp_max", "--csv", weather_csv, "--date-column", "date", "--group-column", "weather"],
         "group_column: 'weather' not in the data; available: date, precipitation"),
        (["frobnicate"], "argument COMMAND: invalid choice"),
        (["bench", "--sizes", "C3,Z9"], "argument --sizes: expected names from C1, C3, C4, C5, got 'C3,Z9'"),
        (["bench", "--repeats", "0"], "argument --repeats: expected a positive integer, got 0"),
        (["bench", "--jsonl", tmp_path / "no" / "such" / "r.jsonl"], "argument --jsonl: cannot write"),
        (["bench", "--cells", "lstm,rnn"],
         "argument --cells: expected names from lstm, gru, simple_rnn, got 'lstm,rnn'"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path, weather_csv):
    for args, message in _bad_inputs(tmp_path, weather_csv):
        out = jrnn_cmd(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jrnn: error: "), (args, out.stderr)
        assert message in lines[0], (args, lines[0])
        assert "Traceback" not in out.stderr


def test_nan_policy_option(tmp_path, weather_csv):
    frame = pd.read_csv(weather_csv)
    frame.loc[3, "wind"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    out = jrnn_cmd("train", "--csv", tmp_path / "nan.csv", "--target", "temp_max", "--date-column", "date",
                   "--nan", "interpolate", "--epochs", 1, "--quiet", "--out", tmp_path / "ck")
    assert out.returncode == 0, out.stderr


def test_diagnose_small(tmp_path):
    out = jrnn_cmd("diagnose", "--gradient-steps", 12, "--train-steps", 8, "--epochs", 1, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    for label in ("SimpleRNN |w|=0.5", "SimpleRNN |w|=1.5", "LSTM", "GRU", "‖∂L/∂h_1‖/‖∂L/∂h_T‖"):
        assert label in out.stdout
    result = json.loads((tmp_path / "diagnose.json").read_text())
    assert len(result["gradient_profiles"]["LSTM"]) == 12
    assert (tmp_path / "gradient_norms.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_quick_smoke(tmp_path):
    """Also where the user's environment sets jax_numpy_rank_promotion="raise":
    the peers whose layers broadcast implicitly (Flax, Keras) are timed too."""
    out = jrnn_cmd("bench", "--quick", "--cells", "lstm", "--jsonl", tmp_path / "r.jsonl",
                   env={"JAX_NUMPY_RANK_PROMOTION": "raise"})
    assert out.returncode == 0, out.stderr
    # the peers installed here are timed (``pip install -e ".[test]"`` brings them all)
    peers = {"torch": "torch.nn.LSTM", "flax": "flax nn.RNN(LSTMCell)", "keras": "keras.layers.LSTM (jax)",
             "haiku": "haiku hk.LSTM"}
    installed = {name for module, name in peers.items() if importlib.util.find_spec(module)}
    expected = {"jrnn (auto)", "jrnn (plain)"} | installed
    assert all(name in out.stdout for name in expected)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["contender"] for r in rows} >= expected
    assert all(r["forward_backward_ms"] > 0 for r in rows)
    assert all(r["xla_temp_mib"] is not None for r in rows if r["contender"].startswith("jrnn"))
