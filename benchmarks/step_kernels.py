"""What each time step costs on a device before it is timed: the operations
(on a GPU, the kernel launches) inside the time loops of jrnn's compiled
programs.

On a GPU a ``lax.scan`` step pays one launch per kernel in the loop body, a
few microseconds each at small batch (see ``RESULTS.md``), so the count per
step says much of the speed at batch 1. For each cell, shape, dtype and
path, this compiles the forward and the forward+backward programs with
``jax.jit(...).lower(...).compile()``, reads the optimised HLO, and lists
every ``while`` loop: its trip count, the time steps per iteration, and the
operations of its body by kind (``fusion`` by fusion kind, ``custom-call`` by
target, such as cuBLAS GEMMs). Nothing runs; a compile takes seconds.

    python benchmarks/step_kernels.py                    # the GPU benchmark's target shapes
    python benchmarks/step_kernels.py --quick            # tiny shapes; any backend
    python benchmarks/step_kernels.py --dump hlo/        # also write each program's HLO text
    python benchmarks/step_kernels.py --target h100_sxm  # XLA:GPU's programs, on a machine without a GPU

``--target`` compiles for the GPU that a target config of ``gpu_specs/``
describes (or a path to one), with no GPU and no driver: it needs only jax's
CUDA plugin (``pip install "jax[cuda12]"``, in a separate environment). XLA
does not autotune there, so its GEMM tilings (split-K, which adds a reduction
to a step) are its defaults, not the ones a GPU would time and pick; the
element-wise fusions around them are XLA's usual.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import jrnn
from jrnn.kernels import fused, native

GPU_SPECS = Path(__file__).with_name("gpu_specs")
SHAPES = [(16, 768, 1024), (1, 128, 1000)]  # (B, I = H, T): the targets of the GPU benchmark
# instructions that launch nothing (or only stand for their operands)
FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "partition-id",
        "replica-id", "opt-barrier"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")


def _opcode(rest: str) -> str:
    """The opcode of an instruction's text after ``=``: its type (a tuple type
    in parentheses, or one word) is skipped."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    return rest.strip().split("(", 1)[0]


def computations(hlo_text: str) -> dict[str, list[tuple[str, str, str]]]:
    """``{computation: [(name, opcode, text), ...]}`` of an HLO module's text."""
    out, current = {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("(", 1)[0]:
            current = out.setdefault(header.group(1), [])
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            current.append((match.group(1), _opcode(match.group(2)), match.group(2)))
    return out


def _kind(opcode: str, text: str) -> str:
    """What an instruction launches, in a few words: ``fusion`` with its kind (and
    its backend's, e.g. a Triton GEMM), ``custom-call`` with its target."""
    if opcode == "fusion":
        kind = re.search(r"kind=(\w+)", text)
        backend = re.search(r'"kind":"(\w+)"', text)
        return "fusion " + (kind.group(1) if kind else "?") + (f" {backend.group(1)}" if backend else "")
    if opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', text)
        return "custom-call " + (target.group(1) if target else "?")
    return opcode


def _called(text: str) -> list[str]:
    """Computations an instruction runs as part of itself (``call`` and command buffers)."""
    return re.findall(r"(?:to_apply|calls)=%([\w.\-]+)", text)


def body_ops(comps, name) -> collections.Counter:
    """Operations that run in computation ``name``, by kind, descending into
    ``call`` instructions (XLA:GPU wraps command buffers in them); nested loops
    count as one ``while`` (they are listed on their own)."""
    counts = collections.Counter()
    for _, opcode, text in comps.get(name, []):
        if opcode in FREE:
            continue
        if opcode == "call":  # an HLO call graph has no cycles
            for callee in _called(text):
                counts += body_ops(comps, callee)
            continue
        counts[_kind(opcode, text)] += 1
    return counts


def loops(hlo_text: str) -> list[dict]:
    """Every ``while`` loop of a compiled module: body name, trip count (where XLA
    knows it) and the body's operations by kind."""
    comps = computations(hlo_text)
    found = []
    for instructions in comps.values():
        for _, opcode, text in instructions:
            if opcode != "while":
                continue
            body = re.search(r"body=%([\w.\-]+)", text).group(1)
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', text)
            ops = body_ops(comps, body)
            found.append({"body": body, "trip_count": int(trip.group(1)) if trip else None,
                          "ops": dict(ops), "launches": sum(ops.values())})
    return found


def programs(kind, B, H, T, dtype, implementation, unroll=None):
    """``{"forward": jitted, "forward+backward": jitted}`` and their arguments
    (``unroll``: as ``jrnn.scan``'s, ``None`` its default: 8 on a GPU, 1 elsewhere)."""
    cell = jrnn.lstm(H) if kind == "lstm" else jrnn.gru(H, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.key(0), H))
    xs = jnp.zeros((B, T, H), dtype)
    run = lambda p, x: jrnn.scan(cell, p, x, implementation=implementation,
                                  carry_dtype=jnp.float32, unroll=unroll)[1]
    loss = lambda p, x: jnp.sum(run(p, x).astype(jnp.float32))
    return {"forward": jax.jit(run), "forward+backward": jax.jit(jax.grad(loss, argnums=(0, 1)))}, (params, xs)


def compile_only_device(target: str):
    """A CUDA device to compile for on a machine without one: ``target`` names a
    target config in ``gpu_specs/`` (``h100_sxm``) or is the path of one."""
    path = Path(target) if Path(target).is_file() else GPU_SPECS / f"{target}.txtpb"
    if not path.is_file():
        known = sorted(p.stem for p in GPU_SPECS.glob("*.txtpb"))
        raise SystemExit(f"--target: expected one of {known} or a target config file, got {target!r}")
    jax.config.update("jax_platforms", "cpu")  # no driver: CUDA only as a compile target
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=path.read_text(), topology="1x1x1")
    except (NotImplementedError, RuntimeError) as error:
        raise SystemExit(f"--target: needs jax's CUDA plugin (pip install \"jax[cuda12]\") in a process "
                         f"that has not started jax yet; got {type(error).__name__}: {error}") from None
    return topology.devices[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--implementations", default="fused,plain")
    parser.add_argument("--unroll", type=int, help="time steps per loop iteration (default: jrnn.scan's)")
    parser.add_argument("--target", help="compile for this GPU without one: a name in gpu_specs/ (h100_sxm) "
                        "or a target config file; needs jax's CUDA plugin")
    parser.add_argument("--gate-layout", choices=("split", "block"),
                        help="the LSTM's fused loops with this gate layout on every platform (default: by platform)")
    parser.add_argument("--dump", help="write each program's optimised HLO text into this folder")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    shapes = [(2, 16, 24)] if args.quick else SHAPES
    rows = []
    device = compile_only_device(args.target) if args.target else None
    # jrnn.scan's default unroll on a GPU (a compile-only device is not the default backend)
    unroll = args.unroll or (importlib.import_module("jrnn.scan").GPU_UNROLL if device is not None else None)
    on_device = None if device is None else jax.sharding.SingleDeviceSharding(device)
    if device is None:
        print(f"# {jax.default_backend()}: {jax.devices()[0].device_kind}; jax {jax.__version__}")
    else:
        print(f"# compiled for {device.device_kind} ({args.target}) without a GPU; jax {jax.__version__}")
    print("| cell | B, I=H, T | dtype | path | program | loop | trips | steps / trip | ops / step | ops in the body |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---|")
    for kind in args.cells.split(","):
        for B, H, T in shapes:
            for dtype in (jnp.float32, jnp.bfloat16):
                for impl in args.implementations.split(","):
                    fns, fn_args = programs(kind, B, H, T, dtype, impl, unroll)
                    if on_device is not None:
                        fn_args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_device),
                                               fn_args)
                    for program, fn in fns.items():
                        layout = (contextlib.nullcontext() if args.gate_layout is None
                                  else fused.gate_layout(args.gate_layout == "split"))
                        with native.disabled(), layout:  # the XLA loops, which GPUs run
                            text = fn.lower(*fn_args).compile().as_text()
                        label = f"{kind}-{B}-{H}-{T}-{jnp.dtype(dtype).name}-{impl}-{program.replace('+', '_')}"
                        if args.dump:
                            Path(args.dump).mkdir(parents=True, exist_ok=True)
                            (Path(args.dump) / f"{label}.hlo.txt").write_text(text)
                        for i, loop in enumerate(loops(text)):
                            steps = T / loop["trip_count"] if loop["trip_count"] else None
                            per_step = loop["launches"] / steps if steps else None
                            row = {"cell": kind, "shape": [B, H, T], "dtype": jnp.dtype(dtype).name,
                                   "implementation": impl, "program": program, "loop": i, **loop,
                                   "steps_per_trip": steps, "ops_per_step": per_step}
                            rows.append(row)
                            ops = ", ".join(f"{n} {k}" for k, n in sorted(loop["ops"].items(), key=lambda kv: -kv[1]))
                            fmt = lambda v: "" if v is None else f"{v:g}"
                            print(f"| {kind} | {B}, {H}, {T} | {row['dtype']} | {impl} | {program} | {i} | "
                                  f"{fmt(loop['trip_count'])} | {fmt(steps)} | {fmt(per_step)} | {ops} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
