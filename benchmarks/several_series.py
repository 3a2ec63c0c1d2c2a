"""Several series in one table: does scaling each series by itself help one model
learn them all? Four shops whose daily sales differ 100-fold in level (2, 20, 60,
200; a 30-day cycle of ±30 %, noise 5 % of the level), 600 days each, in long
format; `jrnn.compare` with one scaler for all and with ``scale_per_series``,
GRU and LSTM, over three seeds. Prints each model's test MAE over all shops and on
each shop, as a ratio to persistence (tomorrow = today), medians over the seeds.

    python benchmarks/several_series.py
    python benchmarks/several_series.py --quick
"""

import argparse
import sys

import numpy as np
import pandas as pd

from jrnn import compare
from jrnn.bench import machine_info

LEVELS = {"a": 2.0, "b": 20.0, "c": 200.0, "d": 60.0}


def shops(days: int, seed: int = 1) -> pd.DataFrame:
    """The four shops' sales, one row per day and shop, sorted by day."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    frames = [pd.DataFrame({"shop": shop, "day": pd.date_range("2020-01-01", periods=days),
                            "sales": level * (1 + 0.3 * np.sin(2 * np.pi * t / 30 + level))
                            + rng.normal(scale=0.05 * level, size=days)})
              for shop, level in LEVELS.items()]
    return pd.concat(frames).sort_values("day", kind="stable").reset_index(drop=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the test suite's smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    days, epochs, seeds = (120, 1, 1) if args.quick else (600, 40, args.seeds)
    frame = shops(days)
    print(f"# machine: {machine_info()}")
    print("| scaling | model | MAE / persistence, all shops | " + " | ".join(
        f"shop {s} (level {LEVELS[s]:g})" for s in LEVELS) + " |")
    print("|---|---|---:|" + "---:|" * len(LEVELS))
    for per_series in (False, True):
        ratios = {}  # (model, "all" or shop) -> one ratio per seed
        for seed in range(seeds):
            result = compare.compare(frame, targets=["sales"], date_column="day", group_column="shop",
                                     scale_per_series=per_series, cells=["gru", "lstm"], seq_len=30 if not
                                     args.quick else 5, epochs=epochs, seed=seed, progress=False)
            for row in result["rows"][:2]:
                ratios.setdefault((row["model"], "all"), []).append(row["mae_vs_persistence"])
            for shop, maes in result["series_mae"].items():
                for cell, label in (("gru", "GRU"), ("lstm", "LSTM")):
                    ratios.setdefault((label, shop), []).append(maes[cell] / maes["persistence"])
        for model in ("GRU", "LSTM"):
            cells = [np.median(ratios[(model, key)]) for key in ("all", *LEVELS)]
            print(f"| {'per series' if per_series else 'one for all'} | {model} | "
                  + " | ".join(f"{r:.3f}" for r in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
