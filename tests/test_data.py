"""Windows, supervised pairs, splits without leakage, scaling, batches, table checks."""

import numpy as np
import pandas as pd
import pytest

from jrnn import data, datasets


def test_slides_example():
    table = np.array([[6, 92], [9, 85], [7, 88], [8, 91], [6, 89]])
    w = data.windows(table, 3)
    assert w.shape == (3, 3, 2)
    np.testing.assert_array_equal(w[0], table[0:3])
    np.testing.assert_array_equal(w[1], table[1:4])
    np.testing.assert_array_equal(w[2], table[2:5])


def test_windows_stride_and_jax():
    import jax.numpy as jnp

    a = np.arange(20).reshape(10, 2)
    w = data.windows(a, 4, stride=3)
    assert w.shape == (3, 4, 2)
    np.testing.assert_array_equal(w[:, 0, 0], [0, 6, 12])
    assert isinstance(data.windows(jnp.asarray(a), 4), type(jnp.zeros(1)))
    np.testing.assert_array_equal(data.windows(jnp.asarray(a), 4, stride=3), w)


@pytest.mark.parametrize("stride", [1, 3])
def test_numpy_windows_are_read_only_views(stride):
    """No copy of the L-times-larger window tensor: the windows share the series' memory,
    cannot be written through, and equal the gathered copy; prepare's splits too."""
    a = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    w = data.windows(a, 7, stride=stride)
    gathered = a[np.arange(0, 44, stride)[:, None] + np.arange(7)[None, :]]
    np.testing.assert_array_equal(w, gathered)
    assert np.shares_memory(w, a) and not w.flags.writeable
    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(100, 3)), columns=["x", "y", "z"])
    X, Y = data.prepare(frame, seq_len=7, targets=["z"]).train
    assert X.dtype == Y.dtype == np.float32 and not X.flags.owndata and not Y.flags.owndata


@pytest.mark.parametrize("call,error,message", [
    (lambda: data.windows(np.zeros(5), 2), ValueError, r"array: expected shape \(N, F\), got \(5,\)"),
    (lambda: data.windows(np.zeros((2, 1)), 3), ValueError, "array: expected at least seq_len=3 rows, got 2"),
    (lambda: data.windows(np.zeros((5, 1)), 0), ValueError, "seq_len: expected a positive int, got 0"),
    (lambda: data.supervised(np.zeros((5, 1)), 2, mode="all"), ValueError, "mode: expected one of"),
    (lambda: data.supervised(np.zeros((5, 1)), 4, horizon=2), ValueError,
     "array: expected at least seq_len \\+ horizon = 6 rows, got 5"),
    (lambda: data.chronological_split(10, (0.5, 0.5)), ValueError, "fractions"),
    (lambda: data.supervised(np.zeros((8, 1)), 4, horizon=2, out_steps=4), ValueError,
     "array: expected at least seq_len \\+ horizon \\+ out_steps - 1 = 9 rows, got 8"),
    (lambda: data.supervised(np.zeros((9, 1)), 4, out_steps=0), ValueError,
     "out_steps: expected a positive int, got 0"),
    (lambda: data.supervised(np.zeros((9, 1)), 4, out_steps=2, mode="sequence"), ValueError,
     "out_steps: needs mode='last'"),
])
def test_data_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("horizon", [1, 3])
def test_supervised_targets(horizon):
    series = np.stack([np.arange(12.0), 100 + np.arange(12.0)], axis=1)
    X, Y = data.supervised(series, 4, horizon=horizon, inputs=[0, 1], targets=[1])
    assert X.shape == (12 - 4 - horizon + 1, 4, 2) and Y.shape == (X.shape[0], 1)
    np.testing.assert_array_equal(Y[:, 0], X[:, -1, 1] + horizon)  # target = last row + horizon
    Xs, Ys = data.supervised(series, 4, horizon=horizon, targets=[0], mode="sequence")
    assert Ys.shape == (X.shape[0], 4, 1)
    np.testing.assert_array_equal(Ys[..., 0], Xs[..., 0] + horizon)  # one target per step


@pytest.mark.parametrize("horizon,out_steps,stride", [(1, 1, 1), (1, 3, 1), (2, 4, 3)])
def test_supervised_out_steps(horizon, out_steps, stride):
    """Each window's targets are the ``out_steps`` rows from ``horizon`` after its end (a loop as reference)."""
    series = np.stack([np.arange(20.0), 100 + np.arange(20.0)], axis=1)
    X, Y = data.supervised(series, 5, horizon=horizon, targets=[1], out_steps=out_steps, stride=stride)
    starts = range(0, 20 - 5 - horizon - out_steps + 2, stride)
    want_X = np.stack([series[s : s + 5] for s in starts])
    want_Y = np.stack([series[s + 4 + horizon : s + 4 + horizon + out_steps, [1]] for s in starts])
    np.testing.assert_array_equal(X, want_X)
    np.testing.assert_array_equal(Y, want_Y)
    assert Y.shape == (len(starts), out_steps, 1)
    if stride == 1:
        assert want_Y[-1, -1, 0] == 119  # the last window's last target is the last row


def test_prepare_out_steps_target_rows():
    prepared = data.prepare(_frame(), targets=["a"], features=["a", "b"], seq_len=10, out_steps=3)
    for split, (X, Y) in zip(("train", "val", "test"), (prepared.train, prepared.val, prepared.test)):
        first_targets = prepared.unscale_targets(Y)[:, :, 0]  # column "a" is the row number
        np.testing.assert_allclose(first_targets[:, 0], prepared.target_rows(split), atol=1e-3)
        np.testing.assert_allclose(np.diff(first_targets, axis=1), 1.0, atol=1e-3)
    assert prepared.window_config()["out_steps"] == 3


def _frame(n=200):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n),
                         "a": np.arange(n, dtype=float), "b": rng.normal(size=n)})


def test_prepare_no_leakage_and_train_only_scaling():
    frame = _frame()
    prepared = data.prepare(frame, targets=["a"], features=["a", "b"], seq_len=10, date_column="date")
    (s0, e0), (s1, e1), (s2, e2) = prepared.splits
    assert (s0, e2) == (0, 200) and e0 == s1 and e1 == s2
    # Column "a" is the row number, so unscaled windows reveal which rows they read.
    for (X, Y), (start, stop) in zip((prepared.train, prepared.val, prepared.test), prepared.splits):
        rows = prepared.scaler.inverse_transform(X[..., 0], [0])
        targets = prepared.unscale_targets(Y)[:, 0]
        assert rows.min() >= start - 1e-3 and targets.max() <= stop - 1 + 1e-3
        split = ("train", "val", "test")[prepared.splits.index((start, stop))]
        np.testing.assert_allclose(targets, prepared.target_rows(split), atol=1e-3)
    train_rows = frame.loc[: e0 - 1, ["a", "b"]].to_numpy()
    np.testing.assert_allclose(prepared.scaler.mean, train_rows.mean(axis=0))
    np.testing.assert_allclose(prepared.scaler.scale, train_rows.std(axis=0))
    assert abs(prepared.train[0][..., 0].mean()) < 0.1 and prepared.test[0][..., 0].mean() > 1.5


def test_table_checks():
    frame = _frame(60)
    with pytest.raises(ValueError, match=r"columns: 'zz' not in the data; available: date, a, b"):
        data.prepare(frame, targets=["zz"])
    with pytest.raises(TypeError, match=r"column 'c': expected numbers, got dtype"):
        data.prepare(frame.assign(c=["x"] * 60), targets=["c"])
    nan = frame.copy()
    nan.loc[7, "b"] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['b'\] \(first at row 7\)"):
        data.prepare(nan, targets=["a"], seq_len=5, date_column="date")
    dropped = data.prepare(nan, targets=["a"], seq_len=5, date_column="date", nan_policy="drop")
    assert len(dropped.values) == 59 and len(dropped.dates) == 59
    kept = nan.drop(index=7)  # the dates stay with their rows (column "a" is the row number)
    np.testing.assert_array_equal(dropped.dates, kept.date.to_numpy(dtype="datetime64[D]"))
    np.testing.assert_array_equal(dropped.values[:, 0], kept.a)
    filled = data.prepare(nan, targets=["a"], seq_len=5, date_column="date", nan_policy="interpolate")
    assert filled.values[7, 1] == pytest.approx((nan.b[6] + nan.b[8]) / 2)
    infinite = frame.assign(b=frame.b.where(frame.index != 9, -np.inf))  # counts as missing
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['b'\] \(first at row 9\)"):
        data.prepare(infinite, targets=["a"], seq_len=5)
    filled = data.prepare(infinite, targets=["a"], seq_len=5, nan_policy="interpolate")
    assert filled.values[9, 1] == pytest.approx((frame.b[8] + frame.b[10]) / 2)
    with pytest.raises(ValueError, match=r"data: expected at least 31 rows \(seq_len 30 \+ horizon 1\), got 20"):
        data.prepare(frame.head(20), targets=["a"], seq_len=30)
    with pytest.raises(ValueError, match=r"the val split has 9 rows, fewer than seq_len \+ horizon = 11"):
        data.prepare(frame, targets=["a"], seq_len=10)


def test_batches_seeded_and_partial():
    X, Y = np.arange(10)[:, None], np.arange(10)
    first = [y.tolist() for _, y in data.batches(X, Y, 4, seed=3)]
    again = [y.tolist() for _, y in data.batches(X, Y, 4, seed=3)]
    assert first == again and [len(b) for b in first] == [4, 4, 2]
    order = [y for batch in first for y in batch]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert [len(y) for _, y in data.batches(X, Y, 4, seed=3, drop_last=True)] == [4, 4]


def test_seattle_weather_offline():
    frame = datasets.seattle_weather()
    assert frame.shape == (1461, 5)
    assert str(frame.date.min().date()) == "2012-01-01" and str(frame.date.max().date()) == "2015-12-31"
    assert frame.drop(columns="date").notna().all().all()


def test_load_csv(tmp_path):
    path = tmp_path / "x.csv"
    _frame(5).iloc[::-1].to_csv(path, index=False)
    frame = datasets.load_csv(path, date_column="date")
    assert frame.a.tolist() == [0, 1, 2, 3, 4]  # sorted by date
    with pytest.raises(FileNotFoundError, match="csv: no such file"):
        datasets.load_csv(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="csv: cannot read"):
        datasets.load_csv(tmp_path / "empty.csv")


def test_numeric_date_columns_are_read_as_text(tmp_path):
    """Years and yyyymmdd numbers are dates; other numbers are refused, not read as
    nanoseconds since 1970 (pandas' reading, which sorted rows by the numbers' values)."""
    path = tmp_path / "years.csv"
    pd.DataFrame({"year": [2014, 2012, 2013], "v": [3.0, 1.0, 2.0]}).to_csv(path, index=False)
    frame = datasets.load_csv(path, date_column="year")
    assert frame.year.dt.year.tolist() == [2012, 2013, 2014] and frame.v.tolist() == [1.0, 2.0, 3.0]
    day = pd.DataFrame({"day": [20200102, 20200101], "v": [2.0, 1.0]})
    assert data.parse_dates(day, "day", "x").dt.strftime("%Y-%m-%d").tolist() == ["2020-01-02", "2020-01-01"]
    with pytest.raises(ValueError, match=r"date_column: 'b' has values that are not dates \(first at row 0: "):
        datasets.load_csv(_write(tmp_path, _frame(5)), date_column="b")
    with pytest.raises(ValueError, match=r"date_column: 'a' has values that are not dates"):
        data.prepare(_frame(), targets=["b"], date_column="a")


def _write(tmp_path, frame):
    path = tmp_path / "frame.csv"
    frame.to_csv(path, index=False)
    return path


def _several_series(lengths=(120, 90, 150), seed=0):
    """Three series in long format, rows interleaved by date as a CSV sorted by date has them.
    Column ``a`` = 1000 * series number + row number in the series, so a window shows
    which series and rows it read."""
    rng = np.random.default_rng(seed)
    frames = [pd.DataFrame({"store": name, "date": pd.date_range("2020-01-01", periods=n),
                            "a": 1000.0 * g + np.arange(n), "b": rng.normal(size=n)})
              for g, (name, n) in enumerate(zip("ABC", lengths))]
    return pd.concat(frames).sort_values("date", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("out_steps", [None, 3])
def test_prepare_several_series(out_steps):
    """Each series is split and windowed on its own (no window crosses a series or a
    split), the scaler sees every series' training rows and nothing else, and
    ``target_rows``/``target_groups`` say where each pair comes from."""
    from jrnn.compare import persistence

    frame = _several_series()
    prepared = data.prepare(frame, targets=["a"], seq_len=5, date_column="date", group_column="store",
                            out_steps=out_steps)
    assert prepared.groups == ["A", "B", "C"] and prepared.features == ["a", "b"]  # not the labels
    assert prepared.group_splits == [[(0, 84), (84, 102), (102, 120)], [(120, 183), (183, 197), (197, 210)],
                                     [(210, 315), (315, 337), (337, 360)]]
    np.testing.assert_array_equal(prepared.values[:, 0] // 1000, np.repeat([0, 1, 2], [120, 90, 150]))
    np.testing.assert_array_equal(prepared.dates[120:123], np.arange("2020-01-01", "2020-01-04", dtype="datetime64[D]"))
    for k, split in enumerate(data.SPLIT_NAMES):
        X, Y = (prepared.train, prepared.val, prepared.test)[k]
        rows = np.rint(prepared.scaler.inverse_transform(X[..., 0], [0]))  # (n, L): the "a" of each row read
        targets = np.rint(prepared.unscale_targets(Y)).reshape(len(Y), -1)
        assert (np.diff(rows, axis=1) == 1).all()  # consecutive rows of one series
        np.testing.assert_array_equal(targets[:, 0], rows[:, -1] + 1)
        labels = prepared.target_groups(split)
        np.testing.assert_array_equal(rows[:, 0] // 1000, [ord(g) - ord("A") for g in labels])
        np.testing.assert_array_equal(prepared.values[prepared.target_rows(split), 0], targets[:, 0])
        for g, ranges in enumerate(prepared.group_splits):  # inside the series' own split
            mine = labels == "ABC"[g]
            start, stop = ranges[k]
            assert rows[mine].min() == 1000 * g + start - ranges[0][0]
            assert targets[mine].max() == 1000 * g + stop - 1 - ranges[0][0]
        if out_steps is None:  # tomorrow = today, within the series
            np.testing.assert_array_equal(persistence(prepared, split)[:, 0], rows[:, -1])
    train_rows = np.concatenate([prepared.values[a:b] for (a, b), _, _ in prepared.group_splits])
    np.testing.assert_allclose(prepared.scaler.mean, train_rows.mean(axis=0))
    np.testing.assert_array_equal(prepared.split_rows("val"), np.r_[84:102, 183:197, 315:337])
    assert prepared.window_config()["group_column"] == "store"
    with pytest.raises(ValueError, match=r"splits: the data holds 3 series \('store'\); use group_splits"):
        _ = prepared.splits
    one = data.prepare(frame[frame.store == "B"], targets=["a"], seq_len=5, group_column="store")
    plain = data.prepare(frame[frame.store == "B"].drop(columns="store"), targets=["a"], seq_len=5)
    assert one.groups == ["B"] and one.splits == plain.splits
    for got, want in zip(one.train + one.test, plain.train + plain.test):
        np.testing.assert_array_equal(got, want)


def test_several_series_checks():
    frame = _several_series()
    nan = frame.copy()
    first_c = frame.index[frame.store == "C"][0]
    nan.loc[first_c, "b"] = np.nan  # C's first row: filled from C's next value, not from B's
    filled = data.prepare(nan, targets=["a"], seq_len=5, group_column="store", nan_policy="interpolate")
    assert filled.values[210, 1] == frame.b[frame.store == "C"].iloc[1]
    with pytest.raises(ValueError, match=r"series store='C' \(rows numbered within it\): data: NaN or infinite "
                                         r"values in \['b'\] \(first at row 0\)"):
        data.prepare(nan, targets=["a"], seq_len=5, group_column="store")
    with pytest.raises(ValueError, match=r"the val split, series store='B', has 14 rows, fewer than "
                                         r"seq_len \+ horizon = 16"):
        data.prepare(frame, targets=["a"], seq_len=15, group_column="store")
    with pytest.raises(ValueError, match=r"date_column: 'date' repeats 2020-01-01 \(rows 0 and 1\); several "
                                         r"series in one table\? pass group_column"):
        data.prepare(frame, targets=["a"], seq_len=5, date_column="date")
    shuffled = frame.iloc[np.r_[0:6, 9, 6:9, 10:len(frame)]]  # A's 4th day before its 3rd
    with pytest.raises(ValueError, match=r"date_column: 'date' must be oldest first, series store='A'; row 3 "
                                         r"\(2020-01-03\) comes after 2020-01-04; sort the table by date"):
        data.prepare(shuffled, targets=["a"], seq_len=5, date_column="date", group_column="store")
    with pytest.raises(ValueError, match=r"group_column: 'shop' not in the data; available: store, date, a, b"):
        data.prepare(frame, targets=["a"], group_column="shop")
    unlabelled = frame.assign(store=frame.store.where(frame.index != 4))
    with pytest.raises(ValueError, match=r"group_column: 'store' has no value at row 4"):
        data.prepare(unlabelled, targets=["a"], group_column="store")
    with pytest.raises(ValueError, match=r"group_column: 'a' is also a feature or target"):
        data.prepare(frame, targets=["b"], features=["a", "b"], group_column="a")
    categorical = frame.assign(store=pd.Categorical(frame.store, categories=["A", "B", "C", "unused"]))
    assert data.prepare(categorical, targets=["a"], seq_len=5, group_column="store").groups == ["A", "B", "C"]


def test_scale_per_series():
    """Each series standardised by its own training rows; targets come back with the
    series of each row; single-scaler helpers refuse to guess."""
    frame = _several_series()
    prepared = data.prepare(frame, targets=["a"], seq_len=5, group_column="store", scale_per_series=True)
    assert prepared.scaler is None and list(prepared.series_scalers) == ["A", "B", "C"]
    assert prepared.window_config()["scale_per_series"] is True
    X, Y = prepared.train
    labels = prepared.target_groups("train")
    for label, ranges in zip(prepared.groups, prepared.group_splits):
        own = prepared.values[ranges[0][0] : ranges[0][1]]
        np.testing.assert_allclose(prepared.scaler_of(label).mean, own.mean(axis=0))
        first_rows = X[labels == label][:, 0]  # each training row but the last few, once
        np.testing.assert_allclose(first_rows.mean(axis=0), 0.0, atol=0.2)
        assert abs(X[labels == label][..., 0].std() - 1) < 0.1
    for split, (X, Y) in zip(data.SPLIT_NAMES, (prepared.train, prepared.val, prepared.test)):
        np.testing.assert_allclose(prepared.unscale_targets(Y, prepared.target_groups(split))[:, 0],
                                   prepared.values[prepared.target_rows(split), 0], atol=1e-3)
    with pytest.raises(ValueError, match=r"groups: expected the series of each of the \d+ rows"):
        prepared.unscale_targets(Y)
    with pytest.raises(ValueError, match=r"label: expected a series of the training data \('A', 'B', 'C'\), got 'D'"):
        prepared.scaler_of("D")
    with pytest.raises(ValueError, match="scale_per_series: needs group_column"):
        data.prepare(_frame(), targets=["a"], scale_per_series=True)


def test_many_series_are_named_briefly():
    """An error about a series of a table of many names the first ten, then how many more."""
    frame = pd.concat([pd.DataFrame({"id": f"s{k:02d}", "v": np.arange(40.0) * (k + 1)}) for k in range(12)])
    prepared = data.prepare(frame, targets=["v"], seq_len=3, group_column="id", scale_per_series=True)
    assert len(prepared.groups) == 12
    with pytest.raises(ValueError, match=r"\('s00', 's01', .*, 's09' and 2 more\), got 'new'"):
        prepared.scaler_of("new")
