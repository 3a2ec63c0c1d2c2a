"""Parallel-in-time cells: minGRU/minLSTM with the associative scan ("parallel")
and step by step ("plain"), against jrnn's GRU and LSTM, at T = 512 and 4096.

    python benchmarks/parallel.py            # B=16, I=64, H=128
    python benchmarks/parallel.py --quick
"""

import argparse
import sys

import jax
import jax.numpy as jnp

import jrnn
from jrnn.bench import _jrnn, machine_info, time_interleaved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    B, I, H = (2, 8, 16) if args.quick else (16, 64, 128)
    lengths = (64,) if args.quick else (512, 4096)
    print(f"# machine: {machine_info()}")
    print("| T | contender | fwd ms | fwd+bwd ms | fwd+bwd / jrnn GRU | compile s |\n|---:|---|---:|---:|---:|---:|")
    for T in lengths:
        xs = jax.random.normal(jax.random.key(1), (B, T, I), jnp.float32)
        items = [
            _jrnn(jrnn.gru(H, reset_after=True), I, xs), _jrnn(jrnn.lstm(H), I, xs),
            _jrnn(jrnn.min_gru(H), I, xs, "parallel"), _jrnn(jrnn.min_gru(H), I, xs, "plain"),
            _jrnn(jrnn.min_lstm(H), I, xs, "parallel"), _jrnn(jrnn.min_lstm(H), I, xs, "plain"),
        ]
        labels = ["GRU (fused)", "LSTM (fused)", "minGRU parallel", "minGRU sequential",
                  "minLSTM parallel", "minLSTM sequential"]
        for item, label in zip(items, labels):
            item.name = label
        medians = time_interleaved(items, 3 if args.quick else args.repeats)
        gru = medians["GRU (fused)"]["backward"]
        for item in items:
            m = medians[item.name]
            print(f"| {T} | {item.name} | {m['forward']:.2f} | {m['backward']:.2f} | "
                  f"{m['backward'] / gru:.3f} | {item.compile_seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
