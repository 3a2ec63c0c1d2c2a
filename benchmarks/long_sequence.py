"""Long sequences: time and memory of LSTM BPTT over T = 10,000 steps, with and
without the memory options of ``jrnn.scan``.

    python benchmarks/long_sequence.py            # B=32, H=256, I=32, T=10,000
    python benchmarks/long_sequence.py --quick    # T=500

Each configuration runs in its own subprocess so that its peak resident
memory (``ru_maxrss``) is its own; XLA's planned temporary memory for the
jitted forward+backward is printed beside it.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "full BPTT": {},
    "checkpoint_every=100": {"checkpoint_every": 100},
    "checkpoint_every=1000": {"checkpoint_every": 1000},
    "truncate_every=100": {"truncate_every": 100},
}


def measure(options: dict, B: int, T: int, I: int, H: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import jrnn

    cell = jrnn.lstm(H)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    loss = lambda p, x: jnp.mean(jrnn.scan(cell, p, x, **options)[1] ** 2)
    grad = jax.jit(jax.grad(loss))
    started = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_s = time.perf_counter() - started
    jax.block_until_ready(compiled(params, xs))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, xs))
        times.append(time.perf_counter() - started)
    return {"fwd_bwd_s": round(statistics.median(times), 3), "compile_s": round(compile_s, 2),
            "xla_temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    B, T, I, H = (32, 500, 32, 256) if args.quick else (32, 10_000, 32, 256)
    if args.child:
        print(json.dumps(measure(json.loads(args.child), B, T, I, H, args.repeats)))
        return 0
    print(f"LSTM forward+backward, B={B}, T={T}, I={I}, H={H}, float32, median of {args.repeats}\n")
    print("| configuration | fwd+bwd s | compile s | XLA temp MiB | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for name, options in CONFIGS.items():
        cmd = [sys.executable, __file__, "--child", json.dumps(options), "--repeats", str(args.repeats)]
        if args.quick:
            cmd.append("--quick")
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(f"| {name} | {r['fwd_bwd_s']} | {r['compile_s']} | {r['xla_temp_mib']} | {r['peak_rss_mib']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
