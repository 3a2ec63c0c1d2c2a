"""The ``jrnn`` command: ``compare`` (the main job), ``train`` and ``predict``.

Bad input prints one line, ``jrnn: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"jrnn: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an int ``>= minimum``, else an error that says ``expected``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")  # numpy's generators refuse negative seeds


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_model_options(p, *, epochs: int, lr: float, patience: int):
    p.add_argument("--seq-len", type=_positive_int, default=30, help="window length in steps (default 30)")
    p.add_argument("--horizon", type=_positive_int, default=1, help="steps ahead to predict (default 1)")
    p.add_argument("--hidden", type=_positive_int, default=32, help="hidden units per layer (default 32)")
    p.add_argument("--epochs", type=_positive_int, default=epochs, help=f"epoch budget (default {epochs})")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=_positive_float, default=lr, help=f"Adam learning rate (default {lr:g})")
    p.add_argument("--patience", type=_positive_int, default=patience,
                   help=f"early stopping: epochs without a better validation loss (default {patience})")
    p.add_argument("--seed", type=_seed, default=0, help="seed for init, shuffling and dropout (default 0)")
    p.add_argument("--nan", choices=("error", "drop", "interpolate"), default="error",
                   help="what to do with missing values (default: error)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_out_steps_option(p):
    p.add_argument("--out-steps", type=_positive_int,
                   help="predict this many consecutive steps at once, from --horizon on (default: one step)")


def _add_data_options(p, *, required: bool):
    p.add_argument("--csv", required=required, help="CSV file, one row per time step, oldest first")
    p.add_argument("--target", action="append", required=required,
                   help="column to predict (repeat for several)")
    p.add_argument("--features", nargs="+", help="input columns (default: every numeric column)")
    p.add_argument("--date-column", help="column of dates (parsed, sorted by, excluded from features)")
    p.add_argument("--group-column", help="column naming the series of each row, for a CSV of several series "
                   "(long format: a store, sensor or city per row); one model learns from all of them")
    p.add_argument("--scale-per-series", action="store_true",
                   help="with --group-column: standardise each series by its own training rows (default: one "
                   "scale for all)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jrnn", description="Recurrent forecasters in JAX: SimpleRNN, LSTM, GRU.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("compare", help="train SimpleRNN, LSTM and GRU forecasters and compare them",
                       description="Train SimpleRNN, LSTM and GRU with the same budget and seed and print "
                       "one table next to persistence and seasonal-mean baselines. Default data: "
                       "Seattle's daily weather 2012-2015 (embedded); task: tomorrow's temp_max from "
                       "the last 30 days of all weather columns.")
    _add_data_options(p, required=False)
    p.add_argument("--cells", default="simple_rnn,lstm,gru",
                   help="comma-separated cells from simple_rnn, lstm, gru, min_gru, min_lstm (default the first three)")
    p.add_argument("--out", default="jrnn-compare", help="folder for plots and JSON (default ./jrnn-compare/)")
    p.add_argument("--json", help="path of the JSON table (default OUT/compare.json)")
    _add_out_steps_option(p)
    _add_model_options(p, epochs=100, lr=1e-3, patience=20)

    p = sub.add_parser("train", help="train a forecaster on your CSV and save a checkpoint",
                       description="Train one recurrent forecaster on a CSV and save checkpoints to --out.")
    _add_data_options(p, required=True)
    p.add_argument("--cell", choices=("simple_rnn", "lstm", "gru", "min_gru", "min_lstm"), default="lstm",
                   help="cell (default lstm)")
    p.add_argument("--layers", type=_positive_int, default=1, help="stacked layers (default 1)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    _add_out_steps_option(p)
    _add_model_options(p, epochs=50, lr=1e-3, patience=20)

    p = sub.add_parser("diagnose", help="gradient flow of SimpleRNN vs LSTM vs GRU on the adding problem",
                       description="Measure vanishing and exploding gradients: ‖∂L/∂h_t‖ over time for SimpleRNN "
                       "(three recurrent-weight scales), LSTM and GRU at equal parameter budgets on the adding "
                       "problem, then train each briefly with and without gradient clipping.")
    p.add_argument("--gradient-steps", type=_positive_int, default=100, help="T for the gradient profile (default 100)")
    p.add_argument("--train-steps", type=_positive_int, default=50, help="T for the training runs (default 50)")
    p.add_argument("--epochs", type=_positive_int, default=12, help="training epochs per run (default 12)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="jrnn-diagnose", help="folder for the plot and JSON (default ./jrnn-diagnose/)")
    p.add_argument("--json", help="path of the JSON file (default OUT/diagnose.json)")

    sub.add_parser("bench", help="time jrnn against PyTorch, Flax, Equinox and Keras (see 'jrnn bench --help')",
                   add_help=False)

    p = sub.add_parser("predict", help="forecast with a saved checkpoint",
                       description="Forecast the steps after the end of a CSV with a checkpoint from 'jrnn train'.")
    p.add_argument("--checkpoint", required=True, help="folder written by 'jrnn train'")
    p.add_argument("--csv", required=True, help="CSV with at least --seq-len rows of the training columns")
    p.add_argument("--steps", type=_positive_int, default=1, help="steps to forecast (default 1)")
    p.add_argument("--nan", choices=("error", "drop", "interpolate"), default="error")
    p.add_argument("--out", help="CSV file for the forecasts (default: standard output)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark suite has its own options
        from jrnn import bench

        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from jrnn.checkpoint import CheckpointError

    try:
        commands = {"compare": run_compare, "train": run_train, "predict": run_predict, "diagnose": run_diagnose}
        return commands[args.command](args)
    except (ValueError, TypeError, OSError, CheckpointError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"jrnn: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("jrnn: interrupted", file=sys.stderr)
        return 130


def _frame(args):
    from jrnn import datasets

    if args.scale_per_series and args.group_column is None:
        raise ValueError("--scale-per-series: needs --group-column (several series to scale one by one)")
    if args.csv is None:
        if args.group_column is not None:
            raise ValueError("--group-column: needs --csv (the default weather data is one series)")
        return datasets.seattle_weather(), ["temp_max"], None, "date", "°C"
    if not args.target:
        raise ValueError("--target: required with --csv")
    frame = datasets.load_csv(args.csv, date_column=args.date_column)
    return frame, args.target, args.features, args.date_column, ""


def _check_outputs(args) -> None:
    """Make ``--out`` and check ``--json``'s folder before the work, not after it."""
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out: cannot create the folder {args.out} ({err.strerror})") from None
    folder = os.path.dirname(args.json) if args.json else ""
    if folder and not os.path.isdir(folder):
        raise OSError(f"--json: no such folder: {folder}")


def run_compare(args) -> int:
    from jrnn import compare

    frame, targets, features, date_column, units = _frame(args)
    _check_outputs(args)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    result = compare.compare(
        frame, targets=targets, features=features, date_column=date_column, group_column=args.group_column,
        scale_per_series=args.scale_per_series, cells=cells,
        seq_len=args.seq_len, horizon=args.horizon, out_steps=args.out_steps, hidden_size=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
        nan_policy=args.nan, progress=not args.quiet,
    )
    paths = compare.write_outputs(result, args.out, args.json, units)
    print(f"jrnn compare: {result['task']}")
    print(compare.format_table(result["rows"], units))
    by_step = compare.format_step_table(result["rows"], units)
    if by_step:
        print(by_step)
    print("wrote " + ", ".join(paths))
    return 0


def run_diagnose(args) -> int:
    from jrnn import gradient_study

    if args.gradient_steps < 2 or args.train_steps < 2:
        raise ValueError("--gradient-steps, --train-steps: expected at least 2")
    _check_outputs(args)
    result = gradient_study.run_study(gradient_steps=args.gradient_steps, train_steps=args.train_steps,
                                      epochs=args.epochs, seed=args.seed)
    paths = gradient_study.write_outputs(result, args.out, args.json)
    print(f"jrnn diagnose: {result['task']} (always answering 1: MSE {result['baseline_mse']:.3f})")
    print(gradient_study.format_table(result["rows"]))
    print("wrote " + ", ".join(paths))
    return 0


def run_train(args) -> int:
    import jax
    import optax

    import jrnn
    from jrnn import data as jdata
    from jrnn.compare import make_cell
    from jrnn.forecast import Forecaster
    from jrnn.train import fit, metrics, predict

    frame, targets, features, date_column, _ = _frame(args)
    prepared = jdata.prepare(frame, targets=targets, features=features, seq_len=args.seq_len,
                             horizon=args.horizon, out_steps=args.out_steps, nan_policy=args.nan,
                             date_column=date_column, group_column=args.group_column,
                             scale_per_series=args.scale_per_series)
    model = Forecaster(make_cell(args.cell, args.hidden), len(prepared.features),
                       len(prepared.targets), num_layers=args.layers, out_steps=args.out_steps)
    meta = {"model": model.config(), "data": prepared.window_config(),
            **_scaler_meta(prepared), "columns": prepared.columns, "date_column": date_column,
            "optimizer": {"name": "adam", "learning_rate": args.lr, "clip_norm": 1.0}}
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: {args.out} is a file; expected a folder for the checkpoints")
    if args.resume:
        _check_resume(args.out, meta)
    params, history = fit(
        model.apply, model.init(jax.random.key(args.seed)), prepared.train, prepared.val,
        optimizer=optax.adam(args.lr), epochs=args.epochs, batch_size=args.batch_size,
        seed=args.seed, patience=args.patience, progress=not args.quiet, description=args.cell,
        checkpoint_dir=args.out, checkpoint_meta=meta, resume=args.resume,
    )
    X_test, Y_test = prepared.test
    labels = prepared.target_groups("test")
    pred = prepared.unscale_targets(predict(model.apply, params, X_test), labels)
    actual = prepared.unscale_targets(Y_test, labels)
    test = metrics(pred, actual)
    print(f"jrnn train: {args.cell}, {jrnn.count_params(params)} parameters, "
          f"{len(history.train_loss)} epoch{'s' * (len(history.train_loss) != 1)} (best {history.best_epoch + 1}), "
          f"test MAE {test['mae']:.4f}, RMSE {test['rmse']:.4f}{_series_spread(labels, pred, actual, args)}; "
          f"checkpoint in {args.out}")
    return 0


def _series_spread(labels, pred, actual, args) -> str:
    """For several series: ``" over N series (MAE per series: median m, worst 'x' w)"``; else ``""``."""
    import numpy as np

    from jrnn.compare import series_mae

    mae = series_mae(labels, pred, actual)
    if len(mae) < 2:
        return ""
    worst = max(mae, key=mae.get)
    return (f" over {len(mae)} series (MAE per series: median {np.median(list(mae.values())):.4f}, "
            f"worst {args.group_column}={worst!r} {mae[worst]:.4f})")


def _scaler_meta(prepared) -> dict:
    """The checkpoint's scaling: ``{"scaler": ...}``, or ``{"series_scalers": {series: ...}}``
    (series named as text, as a CSV gives them back) with ``--scale-per-series``."""
    if prepared.series_scalers is None:
        return {"scaler": prepared.scaler.to_dict()}
    return {"series_scalers": {str(label): s.to_dict() for label, s in prepared.series_scalers.items()}}


def _check_resume(directory, meta) -> None:
    """Refuse ``--resume`` onto a checkpoint of another model or other columns, naming what differs."""
    from jrnn import checkpoint as ckpt

    if not os.path.isdir(directory) or ckpt.latest_step(directory) is None:
        return
    _, saved = ckpt.read_meta(directory)

    def options(m):
        model, data = m.get("model", {}), m.get("data", {})
        cell = model.get("cell", {})
        return {"--cell": cell.get("kind"), "--hidden": cell.get("hidden_size"), "--layers": model.get("num_layers"),
                "--features": data.get("features"), "--target": data.get("targets"),
                "--seq-len": data.get("seq_len"), "--horizon": data.get("horizon"),
                "--out-steps": model.get("out_steps"), "--group-column": data.get("group_column"),
                "--scale-per-series": data.get("scale_per_series", False)}

    was, now = options(saved), options(meta)
    differ = [f"{name} {_shown(was[name])} (this run: {_shown(now[name])})" for name in was if was[name] != now[name]]
    if differ:
        raise ValueError(f"--resume: {directory} was trained with {'; '.join(differ)}; "
                         "pass the same options, or a new --out to start afresh")


def _shown(value) -> str:
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def run_predict(args) -> int:
    import numpy as np
    import pandas as pd

    from jrnn import data as jdata
    from jrnn import datasets
    from jrnn.forecast import forecast, load_checkpoint

    if not os.path.isdir(args.checkpoint):
        raise OSError(f"--checkpoint: no such folder: {args.checkpoint}")
    model, params, meta = load_checkpoint(args.checkpoint)
    window, columns = meta["data"], meta["columns"]
    if args.steps > 1 and window["horizon"] != 1:
        raise ValueError(f"--steps: {args.steps} needs a model trained with --horizon 1, got {window['horizon']}")
    if args.steps > 1 and model.out_steps is not None:
        raise ValueError(f"--steps: the model forecasts its next {model.out_steps} steps at once "
                         f"(trained with --out-steps {model.out_steps}); leave --steps out")
    date_column = meta.get("date_column")  # None: no --date-column, or an older checkpoint
    group_column = window.get("group_column")  # None: one series, or an older checkpoint
    frame = datasets.load_csv(args.csv, date_column=date_column)
    labels, histories, scalers, window_dates = [], [], [], []
    for label, rows in jdata.series_parts(frame, group_column):
        try:
            scalers.append(_scaler_for(meta, label))
            history, dates = _series_history(args, meta, rows.reset_index(drop=True))
        except ValueError as err:
            if label is None:
                raise
            raise ValueError(f"series {group_column}={label!r}: {err}") from None
        labels.append(label)
        histories.append(history)
        window_dates.append(dates)
    out = forecast(model, params, np.stack(histories), steps=args.steps, scaler=scalers,
                   feature_index=[columns.index(c) for c in window["features"]],
                   target_index=[columns.index(c) for c in window["targets"]])  # (G, steps or K, targets)
    if model.out_steps is None:
        steps_ahead = np.arange(1, args.steps + 1) * window["horizon"]
    else:
        steps_ahead = window["horizon"] + np.arange(model.out_steps)
    parts = []
    for label, forecasts, dates in zip(labels, out, window_dates):
        part = pd.DataFrame(forecasts, columns=window["targets"])
        part.insert(0, "step", steps_ahead)
        future = None if dates is None else _forecast_dates(dates, steps_ahead)
        if future is not None:
            part.insert(1, date_column, future)
        if label is not None:
            part.insert(0, group_column, label)
        parts.append(part)
    result = pd.concat(parts, ignore_index=True)
    if args.out:
        result.to_csv(args.out, index=False)
        print(f"jrnn predict: wrote {len(result)} forecast(s) to {args.out}")
    else:
        result.to_csv(sys.stdout, index=False)
    return 0


def _scaler_for(meta, label):
    """The checkpoint's scaler for one series (``label``; ``None``: the only one)."""
    from jrnn import data as jdata

    if "series_scalers" not in meta:
        return jdata.Scaler.from_dict(meta["scaler"])
    known = meta["series_scalers"]
    if str(label) not in known:
        raise ValueError(f"not in the training data; a model trained with --scale-per-series knows the scales of "
                         f"{jdata.listed(known, show=str)} only")
    return jdata.Scaler.from_dict(known[str(label)])


def _series_history(args, meta, frame):
    """One series' last window ``(seq_len, features)`` in the data's units, and its
    dates (``None`` without a date column)."""
    from jrnn import data as jdata

    window, date_column = meta["data"], meta.get("date_column")
    if date_column is not None:  # a repeated date: rows of several series, which one window must not mix
        jdata.check_date_order(frame[date_column], date_column)
    table = jdata.numeric_frame(frame, window["features"], nan_policy=args.nan, min_rows=window["seq_len"],
                                min_rows_reason=f"the model reads windows of {window['seq_len']} rows")
    dates = None
    if date_column is not None:
        dates = frame[date_column][jdata.kept_rows(frame, window["features"], args.nan)].iloc[-window["seq_len"]:]
    return table.to_numpy()[-window["seq_len"]:], dates


def _forecast_dates(window_dates, steps_ahead):
    """Dates ``steps_ahead`` steps after the last of ``window_dates``, if they are evenly spaced; else None."""
    import pandas as pd

    freq = pd.infer_freq(window_dates) if len(window_dates) >= 3 else None
    if freq is None:
        return None
    return [window_dates.iloc[-1] + k * pd.tseries.frequencies.to_offset(freq) for k in steps_ahead]


if __name__ == "__main__":
    sys.exit(main())
