"""From a table of measurements to Keras-style sequences: windows, supervised
pairs, chronological splits, scaling and mini-batches.

Everything here is NumPy on the host; arrays go to the device batch by batch.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

NAN_POLICIES = ("error", "drop", "interpolate")
TARGET_MODES = ("last", "sequence")


def windows(array, seq_len: int, stride: int = 1):
    """Every ``seq_len``-long window of a series, Keras style.

    ``(N, F) -> (N - seq_len + 1, seq_len, F)`` (every ``stride``-th window);
    window ``k`` is ``array[k * stride : k * stride + seq_len]``. For NumPy
    arrays (and pandas DataFrames) the result is a read-only view that shares
    the array's memory, so ``L`` times the series costs nothing until a batch
    of it is indexed; for JAX arrays, a JAX array.

    Raises:
      ValueError: ``array`` not 2-D, ``seq_len``/``stride`` not positive, or
        fewer than ``seq_len`` rows.

    Example (the slides' temperature/humidity table):
      >>> X = np.array([[6, 92], [9, 85], [7, 88], [8, 91], [6, 89]])
      >>> w = windows(X, 3)
      >>> w.shape
      (3, 3, 2)
      >>> w[1].tolist()
      [[9, 85], [7, 88], [8, 91]]
    """
    if isinstance(array, (pd.DataFrame, pd.Series)):
        array = array.to_numpy()
    if getattr(array, "ndim", None) != 2:
        hint = "; for one series pass array[:, None]" if getattr(array, "ndim", None) == 1 else ""
        raise ValueError(f"array: expected shape (N, F), got {np.shape(array)}{hint}")
    _check_positive("seq_len", seq_len)
    _check_positive("stride", stride)
    num_rows = array.shape[0]
    if num_rows < seq_len:
        raise ValueError(f"array: expected at least seq_len={seq_len} rows, got {num_rows}")
    if isinstance(array, np.ndarray):
        view = np.lib.stride_tricks.sliding_window_view(array, seq_len, axis=0)  # (n, F, L)
        return np.moveaxis(view, -1, 1)[::stride]
    starts = np.arange(0, num_rows - seq_len + 1, stride)
    return array[starts[:, None] + np.arange(seq_len)[None, :]]


def supervised(
    array,
    seq_len: int,
    *,
    horizon: int = 1,
    inputs: Sequence[int] | None = None,
    targets: Sequence[int] | None = None,
    mode: str = "last",
    stride: int = 1,
    out_steps: int | None = None,
):
    """Input windows and the values ``horizon`` steps after them.

    Window ``k`` covers rows ``s .. s+L-1`` (``s = k * stride``). With
    ``mode="last"`` its target is row ``s+L-1+horizon`` (one output at the end
    of the window), or with ``out_steps=K`` the ``K`` rows from there on
    (single-shot multi-step forecasting); with ``mode="sequence"`` the targets
    are rows ``s+horizon .. s+L-1+horizon`` (one output per step).

    Args:
      array: ``(N, F)``.
      seq_len: L, the window length.
      horizon: how many steps ahead the (first) target lies (>= 1).
      inputs, targets: column indices (default: all columns).
      mode: ``"last"`` or ``"sequence"``.
      out_steps: ``None`` (one target row) or K >= 1 consecutive target rows
        (``mode="last"`` only).

    Returns:
      ``(X, Y)``: ``X (n, L, len(inputs))``; ``Y (n, len(targets))``,
      ``(n, K, len(targets))`` with ``out_steps``, or ``(n, L, len(targets))``
      for ``"sequence"``; ``n = (N - L - horizon - (K - 1)) // stride + 1``
      (K = 1 without ``out_steps``). Read-only views (:func:`windows`), not copies.

    >>> X, Y = supervised(np.arange(6.0)[:, None], 3)
    >>> X[:, :, 0].tolist(), Y[:, 0].tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [3.0, 4.0, 5.0])
    >>> X, Y = supervised(np.arange(6.0)[:, None], 3, out_steps=2)
    >>> X[:, :, 0].tolist(), Y[:, :, 0].tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [[3.0, 4.0], [4.0, 5.0]])
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"array: expected shape (N, F), got {array.shape}")
    _check_positive("horizon", horizon)
    if mode not in TARGET_MODES:
        raise ValueError(f"mode: expected one of {TARGET_MODES}, got {mode!r}")
    _check_positive("seq_len", seq_len)
    check_out_steps(out_steps, mode)
    extra = 0 if out_steps is None else out_steps - 1  # target rows after the first
    num_rows, num_cols = array.shape
    needed = seq_len + horizon + extra
    if num_rows < needed:
        what = "seq_len + horizon" + (" + out_steps - 1" if extra else "")
        raise ValueError(f"array: expected at least {what} = {needed} rows, got {num_rows}")
    inputs = list(range(num_cols)) if inputs is None else list(inputs)
    targets = list(range(num_cols)) if targets is None else list(targets)
    X = windows(array[: num_rows - horizon - extra, inputs], seq_len, stride)
    if out_steps is not None:
        return X, windows(array[seq_len - 1 + horizon :, targets], out_steps)[::stride]
    shifted = windows(array[horizon:, targets], seq_len, stride)
    Y = shifted[:, -1] if mode == "last" else shifted
    return X, Y


def check_out_steps(out_steps, mode: str = "last") -> None:
    """Raise ``ValueError`` unless ``out_steps`` is ``None`` or a positive int, with ``mode="last"``."""
    if out_steps is None:
        return
    _check_positive("out_steps", out_steps)
    if mode != "last":
        raise ValueError(f"out_steps: needs mode='last' (one block of outputs per window), got mode={mode!r}")


def parse_dates(frame: pd.DataFrame, date_column: str, source: str) -> pd.Series:
    """``frame[date_column]`` as datetimes. Numbers are read as text (2012 is the year,
    20120131 a day), not as nanoseconds since 1970 as pandas would.

    Raises:
      ValueError: no such column, or values that are not dates (naming ``source``).
    """
    if date_column not in frame.columns:
        raise ValueError(f"date_column: {date_column!r} not in {source}; available: "
                         f"{', '.join(map(str, frame.columns))}")
    column = frame[date_column]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        column = column.astype(str)
    with warnings.catch_warnings():  # pandas warns before giving up on text that is not a date
        warnings.simplefilter("ignore", UserWarning)
        dates = pd.to_datetime(column, errors="coerce")
    if dates.isna().any():
        first = int(np.flatnonzero(dates.isna().to_numpy())[0])
        value = frame[date_column].iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        raise ValueError(
            f"date_column: {date_column!r} has values that are not dates (first at row {first}: {value!r})"
        )
    return dates


def chronological_split(num_rows: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)):
    """Row ranges ``[(0, a), (a, b), (b, N)]`` for train, validation and test.

    Splitting rows before windowing means no window crosses a boundary.

    >>> chronological_split(100)
    [(0, 70), (70, 85), (85, 100)]
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions: expected three non-negative numbers summing to 1, got {fractions}")
    a = round(num_rows * fractions[0])
    b = a + round(num_rows * fractions[1])
    return [(0, a), (a, b), (b, num_rows)]


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Per-column standardisation ``(x - mean) / scale``, fitted on training rows only."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, array) -> Scaler:
        array = np.asarray(array, np.float64)
        std = array.std(axis=0)
        return cls(array.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, array, columns: Sequence[int] | None = None):
        cols = slice(None) if columns is None else list(columns)
        return (np.asarray(array) - self.mean[cols]) / self.scale[cols]

    def inverse_transform(self, array, columns: Sequence[int] | None = None):
        cols = slice(None) if columns is None else list(columns)
        return np.asarray(array) * self.scale[cols] + self.mean[cols]

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["scale"], np.float64))


def batches(
    X, Y, batch_size: int, *, seed: int | None = 0, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches of ``(X, Y)``; shuffled by ``seed`` (``None``: in order).

    The last partial batch is yielded unless ``drop_last``.

    >>> [len(x) for x, _ in batches(np.zeros((10, 2)), np.zeros(10), 4, seed=None)]
    [4, 4, 2]
    """
    _check_positive("batch_size", batch_size)
    n = len(X)
    if len(Y) != n:
        raise ValueError(f"Y: expected {n} rows to match X, got {len(Y)}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], Y[idx]


def kept_rows(frame: pd.DataFrame, columns: Sequence[str], nan_policy: str) -> np.ndarray:
    """``(N,)`` booleans: the rows :func:`numeric_frame` keeps (all but, under ``"drop"``,
    those with NaN or Inf in ``columns``); for lining other columns, e.g. dates, up with it."""
    if nan_policy != "drop":
        return np.ones(len(frame), bool)
    return np.isfinite(frame[list(columns)].to_numpy(np.float64)).all(axis=1)


def numeric_frame(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    nan_policy: str = "error",
    min_rows: int = 1,
    min_rows_reason: str = "",
) -> pd.DataFrame:
    """The named columns as float64, checked: present, numeric, NaN-free, long enough.

    Args:
      frame: the table.
      columns: the columns to keep, in order.
      nan_policy: ``"error"`` (default), ``"drop"`` (remove rows with NaN) or
        ``"interpolate"`` (linear in row order, ends filled from the nearest value).
      min_rows: fewest rows the result may have.

    Raises:
      ValueError: a missing column, NaN values under ``"error"``, or fewer than ``min_rows`` rows.
      TypeError: a column that is not numeric.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"columns: {', '.join(map(repr, missing))} not in the data; available: "
            f"{', '.join(map(str, frame.columns))}"
        )
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns: expected distinct names, got {list(columns)}")
    for c in columns:
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]):
            raise TypeError(f"column {c!r}: expected numbers, got dtype {frame[c].dtype}")
    out = frame[list(columns)].astype(np.float64)
    finite = np.isfinite(out.to_numpy())
    if not finite.all():
        out = out.where(finite)  # infinities count as missing
        if nan_policy == "error":
            bad = out.columns[out.isna().any()].tolist()
            first = int(np.flatnonzero(out.isna().any(axis=1).to_numpy())[0])
            raise ValueError(
                f"data: NaN or infinite values in {bad} (first at row {first}); "
                "pass nan_policy='drop' or 'interpolate' (CLI: --nan drop|interpolate)"
            )
        if nan_policy == "drop":
            out = out.dropna().reset_index(drop=True)
        else:
            out = out.interpolate(limit_direction="both")
            if out.isna().any().any():
                raise ValueError("data: a column is entirely NaN; nothing to interpolate from")
    if len(out) < min_rows:
        reason = f" ({min_rows_reason})" if min_rows_reason else ""
        raise ValueError(f"data: expected at least {min_rows} rows{reason}, got {len(out)}")
    return out


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ForecastData:
    """A table turned into scaled supervised pairs for each chronological split.

    ``columns`` = features, then any target not among them; ``values`` holds
    them unscaled ``(N, C)``. A table of several series (``group_column``) has
    their rows one series after another, in the order the series first appear,
    ``groups`` their labels; one series has ``groups == [None]``.
    ``group_splits[g]`` are series ``g``'s train, validation and test row
    ranges (its first 70 %, next 15 %, last 15 % by default); ``train``,
    ``val`` and ``test`` are scaled ``(X, Y)`` pairs built inside each range,
    series after series, so no window crosses a split or a series. ``scaler``
    was fitted on the training rows only (of all series together); with
    ``scale_per_series`` it is ``None`` and ``series_scalers[label]`` was
    fitted on that series' training rows.
    """

    columns: list[str]
    features: list[str]
    targets: list[str]
    seq_len: int
    horizon: int
    mode: str
    out_steps: int | None
    values: np.ndarray
    dates: np.ndarray | None
    group_splits: list[list[tuple[int, int]]]
    scaler: Scaler | None
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    group_column: str | None = None
    groups: list = dataclasses.field(default_factory=lambda: [None])
    series_scalers: dict | None = None

    @property
    def splits(self) -> list[tuple[int, int]]:
        """The train, validation and test row ranges of a single series."""
        if len(self.groups) != 1:
            raise ValueError(f"splits: the data holds {len(self.groups)} series ({self.group_column!r}); "
                             "use group_splits or split_rows(split)")
        return self.group_splits[0]

    @property
    def feature_index(self) -> list[int]:
        return [self.columns.index(c) for c in self.features]

    @property
    def target_index(self) -> list[int]:
        return [self.columns.index(c) for c in self.targets]

    def split_rows(self, split: str) -> np.ndarray:
        """Row numbers (into ``values``) of a split, series after series."""
        k = _split_number(split)
        return np.concatenate([np.arange(*ranges[k]) for ranges in self.group_splits])

    def target_rows(self, split: str) -> np.ndarray:
        """Row numbers (into ``values``) of the ``mode="last"`` targets of a split
        (with ``out_steps``: of each window's first target), in the order of its pairs."""
        return np.concatenate(self.target_rows_by_series(split))

    def target_rows_by_series(self, split: str) -> list[np.ndarray]:
        """:meth:`target_rows` cut into one array per series (in the order of ``groups``)."""
        k = _split_number(split)
        skip = self.seq_len - 1 + self.horizon
        last = (self.out_steps or 1) - 1
        return [np.arange(ranges[k][0] + skip, ranges[k][1] - last) for ranges in self.group_splits]

    def target_groups(self, split: str) -> np.ndarray:
        """The series label of each of a split's pairs, ``(n,)`` (all ``None`` for one series)."""
        labels = np.empty(len(self.groups), object)
        labels[:] = self.groups
        return np.repeat(labels, [len(rows) for rows in self.target_rows_by_series(split)])

    def scaler_of(self, label=None) -> Scaler:
        """The scaler of a series' values (``label``: its name; only looked at with
        ``scale_per_series``)."""
        if self.series_scalers is None:
            return self.scaler
        if label not in self.series_scalers:
            raise ValueError(f"label: expected a series of the training data ({listed(self.groups)}), "
                             f"got {label!r}")
        return self.series_scalers[label]

    def unscale_targets(self, Y, groups=None) -> np.ndarray:
        """Targets or predictions ``(n, ...)`` back in the data's own units. ``groups``:
        the series of each row (``target_groups(split)``), needed with ``scale_per_series``."""
        if self.series_scalers is None:
            return self.scaler.inverse_transform(Y, self.target_index)
        if groups is None or len(groups) != len(Y):
            raise ValueError(f"groups: expected the series of each of the {len(Y)} rows (target_groups(split)), "
                             f"the data being scaled per series; got {None if groups is None else len(groups)}")
        Y, groups = np.asarray(Y), np.asarray(groups, object)
        out = np.empty(Y.shape, np.float64)
        for label in dict.fromkeys(groups):
            mine = groups == label
            out[mine] = self.scaler_of(label).inverse_transform(Y[mine], self.target_index)
        return out

    def window_config(self) -> dict:
        return {"features": self.features, "targets": self.targets, "seq_len": self.seq_len,
                "horizon": self.horizon, "mode": self.mode, "out_steps": self.out_steps,
                "group_column": self.group_column, "scale_per_series": self.series_scalers is not None}


SPLIT_NAMES = ("train", "val", "test")


def listed(names, limit: int = 10, show=repr) -> str:
    """``names`` for an error message: the first ``limit``, then how many more.

    >>> listed(["a", "b", "c"], limit=2)
    "'a', 'b' and 1 more"
    """
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(show, names[:limit])) + more


def _split_number(split: str) -> int:
    if split not in SPLIT_NAMES:
        raise ValueError(f"split: expected one of {SPLIT_NAMES}, got {split!r}")
    return SPLIT_NAMES.index(split)


def series_parts(frame: pd.DataFrame, group_column: str | None) -> list[tuple[object, pd.DataFrame]]:
    """``[(label, rows)]``: the table's series in the order they first appear, each in
    its row order; ``[(None, frame)]`` without ``group_column``.

    Raises:
      ValueError: no such column, or a row without a label.

    >>> table = pd.DataFrame({"store": ["a", "b", "a", "b"], "units": [1, 2, 3, 4]})
    >>> [(label, rows.units.tolist()) for label, rows in series_parts(table, "store")]
    [('a', [1, 3]), ('b', [2, 4])]
    """
    if group_column is None:
        return [(None, frame)]
    if group_column not in frame.columns:
        raise ValueError(f"group_column: {group_column!r} not in the data; available: "
                         f"{', '.join(map(str, frame.columns))}")
    labels = frame[group_column]
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise ValueError(f"group_column: {group_column!r} has no value at row {first}; every row needs its series")
    parts = frame.groupby(labels, sort=False, dropna=False, observed=True)  # categories in use only
    return [(label.item() if isinstance(label, np.generic) else label, rows) for label, rows in parts]


def check_date_order(dates: pd.Series, date_column: str, where: str = "") -> None:
    """Raise ``ValueError`` unless ``dates`` strictly increase (a repeated date hints
    at several series in one table)."""
    d = dates.to_numpy()
    back = np.flatnonzero(d[1:] <= d[:-1])
    if not back.size:
        return
    i = int(back[0]) + 1
    shown = [str(pd.Timestamp(d[k])).removesuffix(" 00:00:00") for k in (i - 1, i)]
    if d[i] == d[i - 1]:
        raise ValueError(f"date_column: {date_column!r} repeats {shown[1]} (rows {i - 1} and {i}{where}); "
                         "several series in one table? pass group_column (CLI: --group-column)")
    raise ValueError(f"date_column: {date_column!r} must be oldest first{where}; row {i} ({shown[1]}) comes "
                     f"after {shown[0]}; sort the table by date (datasets.load_csv(..., date_column=...) does)")


def prepare(
    frame: pd.DataFrame,
    *,
    targets: Sequence[str],
    features: Sequence[str] | None = None,
    seq_len: int = 30,
    horizon: int = 1,
    mode: str = "last",
    out_steps: int | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    nan_policy: str = "error",
    date_column: str | None = None,
    group_column: str | None = None,
    scale_per_series: bool = False,
) -> ForecastData:
    """Check, split, scale and window a table for forecasting.

    Args:
      frame: the measurements, one row per time step, oldest first (within each series).
      targets: columns to predict.
      features: input columns (default: every numeric column but ``date_column``
        and ``group_column``).
      seq_len, horizon, mode, out_steps: as in :func:`supervised`.
      fractions: train, validation and test shares of the rows (of each series).
      nan_policy: see :func:`numeric_frame` (applied to each series on its own).
      date_column: optional column of dates, kept for plots and seasonal baselines;
        they must increase within each series.
      group_column: optional column naming the series of each row (a store, a
        sensor, a city), for a table of several series in long format: each
        series is split and windowed on its own and one model learns from all.
      scale_per_series: standardise each series with its own training rows'
        mean and spread (needs ``group_column``), so series of different
        levels look alike to the model; default: one scaler for all series.

    Raises:
      ValueError / TypeError: as :func:`numeric_frame`; a split too short for one
        window; dates out of order or repeated within a series (naming the series).
    """
    if isinstance(targets, str):
        targets = [targets]
    if features is None:
        features = [c for c in frame.columns
                    if c not in (date_column, group_column) and pd.api.types.is_numeric_dtype(frame[c])]
    features, targets = list(features), list(targets)
    if not targets:
        raise ValueError("targets: expected at least one column, got none")
    if not features:
        raise ValueError("features: expected at least one column, got none")
    check_out_steps(out_steps, mode)
    needed = seq_len + horizon + (out_steps or 1) - 1
    needed_what = f"seq_len {seq_len} + horizon {horizon}" + (f" + out_steps {out_steps} - 1" if out_steps else "")
    columns = features + [t for t in targets if t not in features]
    if group_column is not None and group_column in columns:
        raise ValueError(f"group_column: {group_column!r} is also a feature or target; it names the series")
    if scale_per_series and group_column is None:
        raise ValueError("scale_per_series: needs group_column (several series to scale one by one)")
    parts = series_parts(frame, group_column)
    values, dates, group_splits = [], [], []
    for label, rows in parts:
        series = "" if label is None else f"series {group_column}={label!r}"
        where = f", {series}" if series else ""
        part_values, part_dates = _checked_series(rows, columns, nan_policy, date_column, needed,
                                                  needed_what, series)
        offset = sum(len(v) for v in values)
        ranges = [(start + offset, stop + offset) for start, stop in chronological_split(len(part_values), fractions)]
        for name, (start, stop) in zip(SPLIT_NAMES, ranges):
            if stop - start < needed:
                raise ValueError(
                    f"data: the {name} split{where}{',' * bool(where)} has {stop - start} rows, fewer than "
                    f"seq_len + horizon{' + out_steps - 1' if out_steps else ''} = {needed}; use more data "
                    "or a shorter --seq-len"
                )
        values.append(part_values)
        dates.append(part_dates)
        group_splits.append(ranges)
    values = np.concatenate(values)
    labels = [label for label, _ in parts]
    train_rows = [values[ranges[0][0] : ranges[0][1]] for ranges in group_splits]
    series_scalers = scaler = None
    if scale_per_series:
        series_scalers = {label: Scaler.fit(rows) for label, rows in zip(labels, train_rows)}
        scaled = np.concatenate([series_scalers[label].transform(values[ranges[0][0] : ranges[2][1]])
                                 for label, ranges in zip(labels, group_splits)])
    else:
        scaler = Scaler.fit(np.concatenate(train_rows))
        scaled = scaler.transform(values)
    scaled = scaled.astype(np.float32)  # one series: the windows below are views of it
    f_idx = [columns.index(c) for c in features]
    t_idx = [columns.index(c) for c in targets]
    pairs = []
    for k in range(3):
        per_series = [supervised(scaled[ranges[k][0] : ranges[k][1]], seq_len, horizon=horizon, inputs=f_idx,
                                 targets=t_idx, mode=mode, out_steps=out_steps) for ranges in group_splits]
        pairs.append(per_series[0] if len(per_series) == 1 else
                     tuple(np.concatenate(arrays) for arrays in zip(*per_series)))
    return ForecastData(
        columns, features, targets, seq_len, horizon, mode, out_steps, values,
        None if date_column is None else np.concatenate(dates),
        group_splits, scaler, *pairs, group_column=group_column, groups=labels, series_scalers=series_scalers,
    )


def _checked_series(rows, columns, nan_policy, date_column, needed, needed_what, series):
    """One series' ``(values (n, C), dates (n,) or None)``, checked as :func:`numeric_frame`
    does; ``series`` names it in errors (``""``: the only one)."""
    dates = None
    if date_column is not None:
        dates = parse_dates(rows, date_column, "the data")
        check_date_order(dates, date_column, f", {series}" if series else "")
    try:
        checked = numeric_frame(rows.reset_index(drop=True), columns, nan_policy=nan_policy, min_rows=needed,
                                min_rows_reason=needed_what)
    except ValueError as err:
        if not series:
            raise
        raise ValueError(f"{series} (rows numbered within it): {err}") from None
    if dates is not None:
        dates = np.asarray(dates[kept_rows(rows, columns, nan_policy)], dtype="datetime64[D]")
    return checked.to_numpy(), dates
