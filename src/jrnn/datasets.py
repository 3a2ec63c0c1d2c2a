"""Data that ships offline: Seattle's daily weather 2012–2015, and user CSVs.

The weather table comes from the ``vega_datasets`` package, which carries it
on disk, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os

import pandas as pd

from jrnn.data import parse_dates

WEATHER_COLUMNS = ["precipitation", "temp_max", "temp_min", "wind"]


def seattle_weather() -> pd.DataFrame:
    """Seattle's daily weather, 2012-01-01 to 2015-12-31 (1461 rows).

    Columns: ``date`` (datetime), ``precipitation`` (mm), ``temp_max`` and
    ``temp_min`` (°C), ``wind`` (m/s). The text column ``weather`` is dropped.

    >>> df = seattle_weather()
    >>> df.shape, list(df.columns)
    ((1461, 5), ['date', 'precipitation', 'temp_max', 'temp_min', 'wind'])
    """
    from vega_datasets import data

    frame = data.seattle_weather()
    frame["date"] = pd.to_datetime(frame["date"])
    return frame[["date", *WEATHER_COLUMNS]].reset_index(drop=True)


def load_csv(path: str | os.PathLike, *, date_column: str | None = None) -> pd.DataFrame:
    """Read a CSV of measurements (one row per time step, oldest first).

    With ``date_column`` the rows are parsed as dates and sorted by them.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an empty or unreadable file, or a missing/unparsable date column.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"csv: no such file: {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"csv: cannot read {path}: {str(err).splitlines()[0]}") from None
    if frame.empty:
        raise ValueError(f"csv: {path} has no rows")
    if date_column is not None:
        dates = parse_dates(frame, date_column, path)
        frame = frame.assign(**{date_column: dates}).sort_values(date_column, kind="stable")
        frame = frame.reset_index(drop=True)
    return frame


def adding_problem(num_sequences: int, seq_len: int, *, seed: int = 0):
    """The adding problem (Hochreiter & Schmidhuber, 1997), generated from a seed.

    Each sequence has two input channels: numbers drawn from U(0, 1), and a
    marker that is 1 at two steps (one in the first half, one in the second)
    and 0 elsewhere. The target is the sum of the two marked numbers, so a
    model must carry information across up to ``seq_len`` steps. Always
    answering 1 gives a mean squared error of 1/6.

    Returns:
      ``X (num_sequences, seq_len, 2)`` and ``Y (num_sequences, 1)``, float32.

    >>> X, Y = adding_problem(3, 10)
    >>> X.shape, Y.shape, X[..., 1].sum(axis=1).tolist()
    ((3, 10, 2), (3, 1), [2.0, 2.0, 2.0])
    """
    import numpy as np

    if seq_len < 2:
        raise ValueError(f"seq_len: expected at least 2, got {seq_len}")
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, (num_sequences, seq_len))
    half = seq_len // 2
    first = rng.integers(0, half, num_sequences)
    second = rng.integers(half, seq_len, num_sequences)
    marks = np.zeros((num_sequences, seq_len))
    rows = np.arange(num_sequences)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    X = np.stack([values, marks], axis=-1).astype(np.float32)
    Y = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
    return X, Y
