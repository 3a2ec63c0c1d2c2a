"""The comparison behind ``jrnn compare``: baselines and tables of several series."""

import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pytest

from jrnn import compare, data


def _seasonal_series(levels=(0.0, 100.0), years=3):
    """Long format: one row per day and series, ``y = level + 10 sin(day of year)``."""
    dates = pd.date_range("2012-01-01", periods=365 * years)
    season = 10 * np.sin(2 * np.pi * dates.day_of_year.to_numpy() / 365.25)
    frames = [pd.DataFrame({"site": f"s{k}", "date": dates, "y": level + season}) for k, level in enumerate(levels)]
    return pd.concat(frames).sort_values("date", kind="stable").reset_index(drop=True)


def test_seasonal_mean_is_each_series_own_climate():
    """A pooled climate would sit between the two levels; each series gets its own."""
    prepared = data.prepare(_seasonal_series(), targets=["y"], seq_len=7, date_column="date", group_column="site")
    climate = compare.seasonal_mean(prepared)[:, 0]
    actual = prepared.values[prepared.target_rows("test"), 0]
    assert climate.shape == actual.shape
    np.testing.assert_allclose(climate, actual, atol=0.5)  # ±7-day smoothing of a yearly sine
    single = data.prepare(_seasonal_series(levels=(100.0,)).drop(columns="site"), targets=["y"], seq_len=7,
                          date_column="date")
    np.testing.assert_allclose(compare.seasonal_mean(single)[:, 0], climate[prepared.target_groups("test") == "s1"])


@pytest.mark.parametrize("scale_per_series", [False, True])
def test_compare_several_series(tmp_path, scale_per_series):
    frame = _seasonal_series(years=2)
    frame["y"] += np.random.default_rng(0).normal(scale=0.3, size=len(frame))
    result = compare.compare(frame, targets=["y"], date_column="date", group_column="site", cells=["gru"],
                             seq_len=7, hidden_size=8, epochs=1, progress=False, scale_per_series=scale_per_series)
    assert result["settings"]["scale_per_series"] is scale_per_series
    assert result["task"].endswith("of each of 2 series (site)")
    assert set(result["settings"]["split_rows"]) == {"s0", "s1"}
    assert [r["model"] for r in result["rows"]] == ["GRU", "persistence (baseline)", "seasonal mean (baseline)"]
    labels = np.asarray(result["test"]["series"])
    actual = np.asarray(result["test"]["actual"])
    np.testing.assert_allclose(actual, frame.set_index(["site", "date"]).y.loc[list(zip(
        labels, pd.to_datetime(result["test"]["dates"])))], atol=1e-4)  # in the data's units, either way
    assert (labels[:5] == "s0").all() and (labels[-5:] == "s1").all()
    for site, errors in result["series_mae"].items():  # each series' own error, from the predictions
        mine = labels == site
        for model, mae in errors.items():
            pred = np.asarray(result["test"]["predictions"][model])
            assert mae == round(float(np.mean(np.abs(pred[mine] - actual[mine]))), 4)
    pooled = next(r["mae"] for r in result["rows"] if r["model"].startswith("persistence"))
    series_maes = [e["persistence"] for e in result["series_mae"].values()]
    assert abs(np.mean(series_maes) - pooled) < 1e-3 and max(series_maes) > min(series_maes)  # equal-length series
    paths = compare.write_outputs(result, str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["compare.json", "forecast.png", "loss.png"]


def test_several_series_benchmark_quick(capsys):
    """``benchmarks/several_series.py --quick`` prints a row per scaling and model."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "several_series.py"
    spec = importlib.util.spec_from_file_location("several_series", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| one", "| per"))]
    assert [row.split(" | ")[:2] for row in rows] == [["| one for all", "GRU"], ["| one for all", "LSTM"],
                                                      ["| per series", "GRU"], ["| per series", "LSTM"]]
    assert all(len(row.split("|")) == 9 for row in rows)


def test_baselines_for_several_steps_at_once():
    """With ``out_steps=K``, step k of each baseline is the one-step baseline of horizon k + 1."""
    frame = _seasonal_series(levels=(3.0,), years=3).drop(columns="site")
    several = data.prepare(frame, targets=["y"], seq_len=7, date_column="date", out_steps=3)
    for k in range(3):
        one = data.prepare(frame, targets=["y"], seq_len=7, date_column="date", horizon=1 + k)
        n = len(several.test[0])
        np.testing.assert_array_equal(compare.seasonal_mean(several)[:, k], compare.seasonal_mean(one)[:n])
        np.testing.assert_array_equal(compare.persistence(several)[:, k], compare.persistence(one)[:n])
    assert compare.persistence(several).shape == compare.seasonal_mean(several).shape == (len(several.test[0]), 3, 1)


def test_compare_out_steps(tmp_path):
    frame = _seasonal_series(levels=(3.0,), years=2).drop(columns="site")
    result = compare.compare(frame, targets=["y"], date_column="date", cells=["gru"], seq_len=7, out_steps=3,
                             hidden_size=8, epochs=1, progress=False)
    assert result["task"].startswith("predict y steps 1 to 3 ahead")
    for row in result["rows"]:
        assert len(row["mae_by_step"]) == 3 and abs(np.mean(row["mae_by_step"]) - row["mae"]) < 1e-3
    persistence = next(r for r in result["rows"] if r["model"].startswith("persistence"))
    assert persistence["mae_by_step"][0] < persistence["mae_by_step"][2]  # a daily sine drifts away from today
    table = compare.format_step_table(result["rows"], "°C").splitlines()
    assert table[0] == "| test MAE (°C) at step | 1 | 2 | 3 |" and table[2].startswith("| GRU | ")
    assert compare.format_step_table(compare.compare(frame, targets=["y"], cells=[], seq_len=7)["rows"]) is None
    compare.write_outputs(result, str(tmp_path))
