"""Speed benchmark: jrnn against PyTorch, Flax, Equinox, Keras-on-JAX and Haiku.

Every contender runs the same cell on the same shapes in one process. After
warm-up, the contenders are timed in turns (A, B, C, A, B, C, ...) and the
median of each is reported, forward alone and forward+backward (gradient of
the sum of all outputs with respect to the weights and the inputs) separately.
Compile time (first call of the jitted function, JAX contenders) is reported
on its own, as is XLA's temporary memory for the jitted forward+backward.

Run ``python benchmarks/speed.py`` (or ``jrnn bench``); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from jrnn._report import xla_temp_bytes
from jrnn.kernels import native

SIZES = {  # (B, T, I, H)
    "C1": (1, 1000, 128, 128),
    "C3": (64, 100, 123, 320),
    "C4": (32, 150, 256, 256),
    "C5": (64, 25, 512, 512),
}
QUICK_SIZES = {"Q": (4, 12, 8, 16)}
CELLS = ("lstm", "gru", "simple_rnn")


@dataclasses.dataclass
class Contender:
    name: str
    forward: Callable[[], object]
    backward: Callable[[], object]
    compile_seconds: float | None = None
    temp_bytes: int | None = None


def _jax_contender(name, loss_of_params, params, xs):
    """A JAX contender from ``loss_of_params(params, xs) -> (loss, ys)``."""
    fwd = jax.jit(lambda p, x: loss_of_params(p, x)[1]).lower(params, xs).compile()
    grad = jax.jit(jax.grad(lambda p, x: loss_of_params(p, x)[0], argnums=(0, 1)))
    started = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_seconds = time.perf_counter() - started
    return Contender(name, lambda: jax.block_until_ready(fwd(params, xs)),
                     lambda: jax.block_until_ready(compiled(params, xs)), compile_seconds,
                     xla_temp_bytes(compiled))


def _jrnn(cell, I, xs, implementation="auto", native_loops=True):
    """jrnn; ``native_loops=False`` times the fused path with its XLA loops (as on GPU)."""
    params = cell.init(jax.random.key(0), I)

    def loss(p, x):
        ys = jrnn.scan(cell, p, x, implementation=implementation)[1]
        return jnp.sum(ys), ys

    if native_loops:
        return _jax_contender(f"jrnn ({implementation})", loss, params, xs)
    with native.disabled():
        return _jax_contender(f"jrnn ({implementation}, XLA loops)", loss, params, xs)


def _torch(kind, B, T, I, H, x_np):
    import torch

    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[kind](I, H, batch_first=True)
    x = torch.from_numpy(x_np).requires_grad_(True)

    def forward():
        with torch.no_grad():
            return module(x)[0]

    def backward():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x)[0].sum().backward()

    return Contender(f"torch.nn.{module.__class__.__name__}", forward, backward)


def _flax(kind, I, H, xs, optimized=False):
    import flax.linen as nn

    cell = {"lstm": nn.OptimizedLSTMCell if optimized else nn.LSTMCell, "gru": nn.GRUCell,
            "simple_rnn": nn.SimpleCell}[kind](features=H)
    model = nn.RNN(cell)
    params = model.init(jax.random.key(0), xs)

    def loss(p, x):
        ys = model.apply(p, x)
        return jnp.sum(ys), ys

    return _jax_contender(f"flax nn.RNN({type(cell).__name__})", loss, params, xs)


def _equinox(kind, I, H, xs):
    import equinox as eqx

    cell = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[kind](I, H, key=jax.random.key(0))
    params, static = eqx.partition(cell, eqx.is_array)

    def loss(p, x):
        module = eqx.combine(p, static)

        def run(seq):
            init = (jnp.zeros(H), jnp.zeros(H)) if kind == "lstm" else jnp.zeros(H)

            def body(carry, x_t):
                carry = module(x_t, carry)
                return carry, carry[0] if kind == "lstm" else carry

            return jax.lax.scan(body, init, seq)[1]

        ys = jax.vmap(run)(x)
        return jnp.sum(ys), ys

    return _jax_contender(f"equinox {type(cell).__name__}", loss, params, xs)


def _haiku(kind, I, H, xs):
    """``hk.dynamic_unroll`` of Haiku's core. Haiku has only the reset-before GRU and
    a ReLU SimpleRNN, which the name says (the other contenders run reset-after, tanh)."""
    import haiku as hk

    core_class = {"lstm": hk.LSTM, "gru": hk.GRU, "simple_rnn": hk.VanillaRNN}[kind]

    def forward(x):
        core = core_class(H)
        return hk.dynamic_unroll(core, x, core.initial_state(x.shape[0]), time_major=False)[0]

    model = hk.without_apply_rng(hk.transform(forward))
    params = model.init(jax.random.key(0), xs)

    def loss(p, x):
        ys = model.apply(p, x)
        return jnp.sum(ys), ys

    variant = {"gru": " (reset-before)", "simple_rnn": " (relu)"}.get(kind, "")
    return _jax_contender(f"haiku hk.{core_class.__name__}{variant}", loss, params, xs)


def _keras(kind, I, H, xs):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        return None
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[kind](
        H, return_sequences=True)
    layer.build((None, None, I))
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(p, x):
        ys, _ = layer.stateless_call(p, non_trainable, x)
        return jnp.sum(ys), ys

    return _jax_contender(f"keras.layers.{type(layer).__name__} (jax)", loss, trainable, xs)


def contenders(kind: str, size, peers: bool = True):
    B, T, I, H = size
    x_np = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    xs = jnp.asarray(x_np)
    cell = {"lstm": jrnn.lstm(H), "gru": jrnn.gru(H, reset_after=True), "simple_rnn": jrnn.simple_rnn(H)}[kind]
    out = [_jrnn(cell, I, xs), _jrnn(cell, I, xs, "plain")]
    if native.applies(cell, xs):
        out.insert(1, _jrnn(cell, I, xs, "fused", native_loops=False))
    if not peers:
        return out
    builders = [lambda: _torch(kind, B, T, I, H, x_np), lambda: _flax(kind, I, H, xs)]
    if kind == "lstm":
        builders.append(lambda: _flax(kind, I, H, xs, optimized=True))
    if kind in ("lstm", "gru"):
        builders.append(lambda: _equinox(kind, I, H, xs))
    builders.append(lambda: _keras(kind, I, H, xs))
    builders.append(lambda: _haiku(kind, I, H, xs))
    for build in builders:
        try:
            # Flax's and Keras' layers broadcast implicitly; the setting only checks tracing, so a
            # user's jax_numpy_rank_promotion="raise" would stop them without changing what runs
            with jax.numpy_rank_promotion("allow"):
                c = build()
        except ImportError as err:
            print(f"# skipped a contender: {err}", file=sys.stderr)
            continue
        if c is not None:
            out.append(c)
    return out


def time_interleaved(items: list[Contender], repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Medians (ms) of forward and forward+backward, contenders alternating."""
    for c in items:
        for _ in range(warmup):
            c.forward()
            c.backward()
    times = {c.name: {"forward": [], "backward": []} for c in items}
    for _ in range(repeats):
        for c in items:
            for phase in ("forward", "backward"):
                started = time.perf_counter()
                getattr(c, phase)()
                times[c.name][phase].append(time.perf_counter() - started)
    return {name: {phase: 1e3 * statistics.median(v) for phase, v in t.items()} for name, t in times.items()}


def machine_info() -> dict:
    info = {"python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def run(kinds=CELLS, sizes=None, repeats: int = 10, peers: bool = True,
        jsonl: str | None = None) -> list[dict]:
    sizes = SIZES if sizes is None else sizes
    rows = []
    info = machine_info()
    print("# machine: " + json.dumps(info))
    for kind in kinds:
        for size_name, size in sizes.items():
            items = contenders(kind, size, peers)
            medians = time_interleaved(items, repeats)
            torch_row = next((medians[c.name] for c in items if c.name.startswith("torch")), None)
            jax_peers = [medians[c.name]["backward"] for c in items if not c.name.startswith(("jrnn", "torch"))]
            for c in items:
                m = medians[c.name]
                row = {"cell": kind, "size": size_name, "B_T_I_H": list(size), "contender": c.name,
                       "forward_ms": round(m["forward"], 3), "forward_backward_ms": round(m["backward"], 3),
                       "compile_s": None if c.compile_seconds is None else round(c.compile_seconds, 3),
                       "xla_temp_mib": None if c.temp_bytes is None else round(c.temp_bytes / 2**20, 1)}
                if torch_row:
                    row["fb_vs_torch"] = round(m["backward"] / torch_row["backward"], 3)
                    row["fwd_vs_torch"] = round(m["forward"] / torch_row["forward"], 3)
                if jax_peers:
                    row["fb_vs_best_jax_peer"] = round(m["backward"] / min(jax_peers), 3)
                rows.append(row)
                if jsonl:
                    with open(jsonl, "a") as f:
                        f.write(json.dumps({**row, "machine": info}) + "\n")
            print(markdown(rows[-len(items):]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| cell | size (B,T,I,H) | contender | fwd ms | fwd+bwd ms | fwd+bwd / torch | fwd+bwd / best JAX peer "
            "| fwd / torch | compile s | XLA temp MiB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v: "" if v is None else str(v)
    lines = [head]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['size']} {tuple(r['B_T_I_H'])} | {r['contender']} | {r['forward_ms']:.1f} | "
                     f"{r['forward_backward_ms']:.1f} | {fmt(r.get('fb_vs_torch'))} | "
                     f"{fmt(r.get('fb_vs_best_jax_peer'))} | "
                     f"{fmt(r.get('fwd_vs_torch'))} | {fmt(r['compile_s'])} | {fmt(r['xla_temp_mib'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from jrnn.cli import _Parser, _positive_int  # the jrnn command's one-line usage errors

    parser = _Parser(prog="jrnn bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated from {', '.join(CELLS)}")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated from {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=_positive_int, default=10, help="timed runs per contender (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats: a smoke run")
    parser.add_argument("--no-peers", action="store_true", help="time jrnn's paths only")
    parser.add_argument("--jsonl", help="append one JSON line per result to this file")
    args = parser.parse_args(argv)
    kinds = [k for k in args.cells.split(",") if k]
    unknown = [k for k in kinds if k not in CELLS]
    bad_sizes = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown or not kinds:
        parser.exit(2, f"jrnn: error: argument --cells: expected names from {', '.join(CELLS)}, got {args.cells!r}\n")
    if bad_sizes and not args.quick:
        parser.exit(2, f"jrnn: error: argument --sizes: expected names from {', '.join(SIZES)}, got {args.sizes!r}\n")
    if args.jsonl:
        try:  # fail now, not after the timings
            open(args.jsonl, "a").close()
        except OSError as err:
            parser.exit(2, f"jrnn: error: argument --jsonl: cannot write {args.jsonl} ({err.strerror})\n")
    sizes = QUICK_SIZES if args.quick else {s: SIZES[s] for s in args.sizes.split(",")}
    run(kinds, sizes, 3 if args.quick else args.repeats, not args.no_peers, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
