"""The RNN vs LSTM vs GRU forecasting comparison behind ``jrnn compare``.

Each cell is trained with the same data, budget and seed; the table reports
parameters, training time and test errors in the data's own units next to two
baselines: persistence (tomorrow = today) and the seasonal mean (the training
years' average for that day of the year, smoothed over ±7 days).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import numpy as np
import optax

import jrnn
from jrnn import data as jdata
from jrnn._report import figure, save, write_json
from jrnn.forecast import Forecaster
from jrnn.train import fit, metrics, predict

CELL_FACTORIES = {"simple_rnn": jrnn.simple_rnn, "lstm": jrnn.lstm, "gru": jrnn.gru,
                  "min_gru": jrnn.min_gru, "min_lstm": jrnn.min_lstm}
MAX_PLOTTED_SERIES = 4  # forecast.png shows the first few series of a table of several
CELL_LABELS = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU", "min_gru": "minGRU", "min_lstm": "minLSTM"}


def make_cell(name: str, hidden_size: int):
    """A cell by name: ``simple_rnn``, ``lstm`` or ``gru``."""
    if name not in CELL_FACTORIES:
        raise ValueError(f"cell: expected one of {tuple(CELL_FACTORIES)}, got {name!r}")
    return CELL_FACTORIES[name](hidden_size)


def persistence(prepared: jdata.ForecastData, split: str = "test") -> np.ndarray:
    """The last observed target value of each window: ``y_{t+h} = y_t``, ``(n, O)``
    (with ``out_steps=K``: ``y_{t+h+k} = y_t`` for each of the K steps, ``(n, K, O)``)."""
    rows = prepared.target_rows(split) - prepared.horizon
    last = prepared.values[rows][:, prepared.target_index]
    return last if prepared.out_steps is None else np.repeat(last[:, None], prepared.out_steps, axis=1)


def seasonal_mean(prepared: jdata.ForecastData, split: str = "test", half_width: int = 7) -> np.ndarray | None:
    """Each series' training rows' mean target for each day of the year (±``half_width``
    days), at the split's target dates (shaped like :func:`persistence`'s); ``None``
    without dates."""
    if prepared.dates is None:
        return None
    day = (prepared.dates - prepared.dates.astype("datetime64[Y]")).astype(int)  # 0..365
    targets = prepared.values[:, prepared.target_index]
    kernel = np.ones(2 * half_width + 1)
    circular = lambda a: np.convolve(np.concatenate([a[-half_width:], a, a[:half_width]]), kernel, "valid")
    out = []
    later = np.arange(prepared.out_steps or 1)  # the target rows after each window's first
    for ranges, rows in zip(prepared.group_splits, prepared.target_rows_by_series(split)):
        train_rows = np.arange(*ranges[0])
        sums = np.zeros((366, targets.shape[1]))
        counts = np.zeros(366)
        np.add.at(sums, day[train_rows], targets[train_rows])
        np.add.at(counts, day[train_rows], 1)
        smooth = np.stack([circular(sums[:, k]) for k in range(sums.shape[1])], axis=1)
        climate = smooth / np.maximum(circular(counts), 1)[:, None]
        out.append(climate[day[rows]] if prepared.out_steps is None else climate[day[rows[:, None] + later]])
    return np.concatenate(out)


def compare(
    frame,
    *,
    targets: Sequence[str],
    features: Sequence[str] | None = None,
    date_column: str | None = None,
    group_column: str | None = None,
    scale_per_series: bool = False,
    cells: Sequence[str] = ("simple_rnn", "lstm", "gru"),
    seq_len: int = 30,
    horizon: int = 1,
    out_steps: int | None = None,
    hidden_size: int = 32,
    epochs: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    patience: int | None = 20,
    seed: int = 0,
    nan_policy: str = "error",
    progress: bool = True,
) -> dict:
    """Train one forecaster per cell on the same data and budget; evaluate on the test split.

    With ``group_column`` (a table of several series, see :func:`jrnn.data.prepare`)
    each model is one network trained on all series; errors are over all test
    points, and ``series_mae`` gives each series' MAE per model. With
    ``out_steps=K`` each model forecasts the K steps from ``horizon`` on at once;
    errors are over all K, and each row's ``mae_by_step`` gives them step by step.

    Returns a JSON-friendly dict: ``rows`` (one per model and baseline), the
    settings, per-cell loss ``histories`` and test ``predictions``.
    """
    for name in cells:
        make_cell(name, 1)
    prepared = jdata.prepare(frame, targets=targets, features=features, seq_len=seq_len,
                             horizon=horizon, out_steps=out_steps, nan_policy=nan_policy, date_column=date_column,
                             group_column=group_column, scale_per_series=scale_per_series)
    X_test, Y_test = prepared.test
    labels = prepared.target_groups("test")
    actual = prepared.unscale_targets(Y_test, labels)
    rows, histories, forecasts = [], {}, {}
    for name in cells:
        model = Forecaster(make_cell(name, hidden_size), len(prepared.features), len(prepared.targets),
                           out_steps=out_steps)
        params = model.init(jax.random.key(seed))
        started = time.perf_counter()
        params, history = fit(
            model.apply, params, prepared.train, prepared.val,
            optimizer=optax.adam(learning_rate), epochs=epochs, batch_size=batch_size,
            seed=seed, patience=patience, progress=progress, description=CELL_LABELS[name],
        )
        seconds = time.perf_counter() - started
        pred = prepared.unscale_targets(predict(model.apply, params, X_test), labels)
        rows.append({"model": CELL_LABELS[name], "params": jrnn.count_params(params),
                     "train_seconds": round(seconds, 2), "epochs": len(history.train_loss)})
        histories[name] = {"train_loss": history.train_loss, "val_loss": history.val_loss}
        forecasts[name] = pred
    baselines = {"persistence": persistence(prepared), "seasonal mean": seasonal_mean(prepared)}
    for label, pred in baselines.items():
        if pred is not None:
            rows.append({"model": f"{label} (baseline)", "params": 0, "train_seconds": 0.0, "epochs": 0})
            forecasts[label] = pred
    for row, pred in zip(rows, forecasts.values()):
        row.update(metrics(pred, actual))
        if out_steps is not None:
            row["mae_by_step"] = [round(float(e), 4) for e in np.abs(pred - actual).mean(axis=(0, 2))]
    first = (lambda a: a[:, 0]) if out_steps is None else (lambda a: a[:, 0, 0])  # the first target (and step)
    persistence_mae = next(r["mae"] for r in rows if r["model"].startswith("persistence"))
    for row in rows:
        row["mae_vs_persistence"] = round(row["mae"] / persistence_mae, 4)
    test_dates = None if prepared.dates is None else [str(d) for d in prepared.dates[prepared.target_rows("test")]]
    several = len(prepared.groups) > 1
    series = f" of each of {len(prepared.groups)} series ({group_column})" if several else ""
    ahead = f"{horizon} step(s)" if out_steps is None else f"steps {horizon} to {horizon + out_steps - 1}"
    return {
        "task": f"predict {', '.join(prepared.targets)} {ahead} ahead from the last "
                f"{seq_len} steps of {', '.join(prepared.features)}{series}",
        "settings": {"cells": list(cells), "seq_len": seq_len, "horizon": horizon, "out_steps": out_steps,
                     "hidden_size": hidden_size, "epochs": epochs, "batch_size": batch_size,
                     "learning_rate": learning_rate, "patience": patience, "seed": seed,
                     "clip_norm": 1.0, "group_column": group_column, "scale_per_series": scale_per_series,
                     "split_rows": ({str(g): r for g, r in zip(prepared.groups, prepared.group_splits)}
                                    if several else prepared.splits)},
        "machine": {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count()},
        "rows": rows,
        "histories": histories,
        "series_mae": _by_series(labels, actual, forecasts) if several else None,
        "test": {"dates": test_dates, "series": [str(g) for g in labels] if several else None,
                 "actual": first(actual).tolist(),
                 "predictions": {name: first(pred).tolist() for name, pred in forecasts.items()}},
    }


def _by_series(labels: np.ndarray, actual: np.ndarray, forecasts: dict) -> dict:
    """``{series: {model: MAE}}`` over the test points of each series (JSON-friendly)."""
    per_model = {name: series_mae(labels, pred, actual) for name, pred in forecasts.items()}
    return {str(label): {name: round(maes[label], 4) for name, maes in per_model.items()}
            for label in dict.fromkeys(labels)}


def series_mae(labels: np.ndarray, pred, actual) -> dict:
    """``{series: MAE}`` over each series' rows of ``pred`` and ``actual`` (all their entries);
    ``labels (n,)`` names the series of each row (``ForecastData.target_groups``)."""
    errors = np.abs(np.asarray(pred, np.float64) - np.asarray(actual, np.float64)).reshape(len(labels), -1)
    return {label: float(errors[labels == label].mean()) for label in dict.fromkeys(labels)}


def format_table(rows: list[dict], units: str = "") -> str:
    """The result rows as a Markdown table."""
    unit = f" ({units})" if units else ""
    lines = [f"| model | params | train s | epochs | test MAE{unit} | test RMSE{unit} | MAE / persistence |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']} | {r['train_seconds']:.1f} | {r['epochs']} | "
                     f"{r['mae']:.3f} | {r['rmse']:.3f} | {r['mae_vs_persistence']:.3f} |")
    return "\n".join(lines)


def format_step_table(rows: list[dict], units: str = "") -> str | None:
    """Each model's test MAE at each of the K steps (``out_steps``), as a Markdown table; ``None`` without."""
    if "mae_by_step" not in rows[0]:
        return None
    unit = f" ({units})" if units else ""
    steps = len(rows[0]["mae_by_step"])
    lines = [f"| test MAE{unit} at step | {' | '.join(str(k + 1) for k in range(steps))} |",
             "|---|" + "---:|" * steps]
    for r in rows:
        lines.append(f"| {r['model']} | {' | '.join(f'{e:.3f}' for e in r['mae_by_step'])} |")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str, json_path: str | None = None, units: str = "") -> list[str]:
    """Write the JSON table and the two PNG plots; return their paths."""
    paths = [write_json(result, out_dir, json_path, "compare.json")]
    test = result["test"]
    x = np.arange(len(test["actual"])) if test["dates"] is None else np.asarray(test["dates"], "datetime64[D]")
    labels = np.asarray(test.get("series") or [""] * len(x))
    shown = list(dict.fromkeys(labels))[:MAX_PLOTTED_SERIES]
    fig, axes = figure((11, 4.5 * len(shown)), nrows=len(shown))
    for ax, label in zip(np.atleast_1d(axes), shown):
        mine = labels == label
        ax.plot(x[mine], np.asarray(test["actual"])[mine], color="black", lw=2, label="actual")
        for name, pred in test["predictions"].items():
            style = {"ls": ":", "lw": 1} if name in ("persistence", "seasonal mean") else {"lw": 1.2}
            ax.plot(x[mine], np.asarray(pred)[mine], label=CELL_LABELS.get(name, name), **style)
        series = f" ({result['settings'].get('group_column')} = {label})" if label else ""
        out_steps = result["settings"].get("out_steps")
        step = f", the first of {out_steps} steps" if out_steps else ""
        ax.set_title(f"Test period: forecast vs actual{step}{series}")
        ax.set_ylabel(units or "target")
        ax.legend(ncol=3, fontsize=8)
    fig.autofmt_xdate()
    paths.append(save(fig, os.path.join(out_dir, "forecast.png")))

    fig, ax = figure()
    for i, (name, h) in enumerate(result["histories"].items()):
        ax.plot(h["train_loss"], color=f"C{i}", label=f"{CELL_LABELS[name]} train")
        ax.plot(h["val_loss"], color=f"C{i}", ls="--", label=f"{CELL_LABELS[name]} validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled units)")
    ax.set_title("Training and validation loss")
    ax.legend(fontsize=8)
    paths.append(save(fig, os.path.join(out_dir, "loss.png")))
    return paths
