"""Where a JAX program's time goes on the device: its kernels, read from jax's profiler.

    from device_profile import kernel_profile, summary
    profile = kernel_profile(lambda: jax.block_until_ready(step(params, xs)), steps=T)
    print(summary(profile))

:func:`kernel_profile` runs the function once under ``jax.profiler.trace`` and
reads the trace back with ``jax.profiler.ProfileData``. The kernels are the
events of the device planes (``/device:GPU:0``; of their lines named
``Stream ...`` where there are such, so that lines derived from them are not
counted twice); without a device plane (a CPU backend), the events of the
host plane that carry XLA's ``hlo_op`` stat (its thunks, which nest: a
``while`` contains its body's). They are grouped by operation kind: the HLO
name (the ``hlo_op`` stat where the event has one, else the kernel's name)
without its number, so ``loop_add_fusion.3`` and ``loop_add_fusion.7`` are one
``loop_add_fusion``. Tested on CPU, and run on an H200 (2026-11-27, RESULTS.md).

``busy`` is the union of the kernels' intervals and ``span`` runs from the
first kernel's start to the last one's end, so ``span - busy`` is the time the
device sat idle between kernels: launch gaps, which fewer kernels shorten and
faster kernels do not. Per-step numbers divide by ``steps`` (the sequence
length of an RNN).

:func:`device_times` measures what CUDA events around each call would: the
device time of a call, from its first kernel's start to its last one's end,
without the host's dispatch before it and the wait after it. The contenders'
calls alternate in one trace, a pause between calls, and each call is the
cluster of kernels between two pauses; medians over the repeats.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

import jax

_NUMBERED = re.compile(r"([._]\d+)+$")


def op_kind(name: str) -> str:
    """An HLO operation or kernel name without its instance number: ``gemm_fusion_dot.12`` and
    ``gemm_fusion_dot_12_impl`` -> ``gemm_fusion_dot``."""
    return _NUMBERED.sub("", name.removesuffix("_impl")) or name


def _stat(event, name):
    return next((value for key, value in event.stats if key == name), None)


def kernel_events(profile_data) -> list[tuple[str, float, float]]:
    """``(kind, start_ns, duration_ns)`` of each kernel in a ``jax.profiler.ProfileData``."""
    devices = [plane for plane in profile_data.planes if plane.name.startswith("/device:")]
    events = []
    if devices:
        for plane in devices:
            lines = list(plane.lines)
            streams = [line for line in lines if line.name.startswith("Stream")] or lines
            for line in streams:
                for event in line.events:
                    events.append((op_kind(_stat(event, "hlo_op") or event.name), event.start_ns, event.duration_ns))
        return events
    for plane in profile_data.planes:
        for line in plane.lines:
            for event in line.events:
                op = _stat(event, "hlo_op")
                if op is not None:
                    events.append((op_kind(op), event.start_ns, event.duration_ns))
    return events


def busy_ns(intervals) -> float:
    """The length of the union of ``(start, duration)`` intervals."""
    total, end = 0.0, float("-inf")
    for start, duration in sorted(intervals):
        stop = start + duration
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _traced_events(fn):
    """``(kernel_events, wall_ms)`` of running ``fn`` once under jax's profiler."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with jax.profiler.trace(folder):
            fn()
        wall_ms = 1e3 * (time.perf_counter() - started)
        path = max(Path(folder).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
        return kernel_events(jax.profiler.ProfileData.from_file(str(path))), wall_ms


def call_spans(events, calls: int, min_gap_ns: float) -> list[float]:
    """The span (ns) of each of ``calls`` consecutive calls in kernel ``events``
    (``(kind, start_ns, duration_ns)``): the clusters of kernels that gaps of at
    least ``min_gap_ns`` separate, in order of time. ``ValueError`` where the
    clusters are not ``calls`` (a call without kernels, or a pause within one)."""
    clusters = []
    for _, start, duration in sorted(events, key=lambda event: event[1]):
        if clusters and start < clusters[-1][1] + min_gap_ns:
            clusters[-1][1] = max(clusters[-1][1], start + duration)
        else:
            clusters.append([start, start + duration])
    if len(clusters) != calls:
        raise ValueError(f"calls: expected {calls} clusters of kernels separated by pauses of "
                         f"{min_gap_ns / 1e6:g} ms or more, got {len(clusters)}")
    return [stop - start for start, stop in clusters]


def device_times(fns: dict, repeats: int, pause_s: float = 0.01) -> dict:
    """``{name: median device ms}`` of each function of ``fns`` (each waits for its
    results), over ``repeats`` calls that alternate with the others' in one trace,
    ``pause_s`` apart (the device idle between calls)."""
    names = [name for _ in range(repeats) for name in fns]

    def run():
        for name in names:
            fns[name]()
            time.sleep(pause_s)

    events, _ = _traced_events(run)
    spans = call_spans(events, len(names), min_gap_ns=0.5 * pause_s * 1e9)
    return {name: statistics.median(span / 1e6 for span, of in zip(spans, names) if of == name) for name in fns}


def kernel_profile(fn, steps: int = 1) -> dict:
    """Run ``fn`` (which waits for its results) once under jax's profiler:
    ``{"launches", "busy_ms", "span_ms", "wall_ms", "per_step": {...}, "ops": [...]}``,
    ``ops`` by kind, the most time first, each ``{"op", "launches", "ms", "us_each"}``."""
    events, wall_ms = _traced_events(fn)
    by_op = {}
    for op, _, duration in events:
        count, total = by_op.get(op, (0, 0.0))
        by_op[op] = (count + 1, total + duration)
    intervals = [(start, duration) for _, start, duration in events]
    busy = busy_ns(intervals)
    span = (max(s + d for s, d in intervals) - min(s for s, _ in intervals)) if intervals else 0.0
    ops = [{"op": op, "launches": count, "ms": total / 1e6, "us_each": total / 1e3 / count}
           for op, (count, total) in sorted(by_op.items(), key=lambda kv: -kv[1][1])]
    return {"launches": len(events), "busy_ms": busy / 1e6, "span_ms": span / 1e6, "wall_ms": wall_ms,
            "per_step": {"launches": len(events) / steps, "busy_us": busy / 1e3 / steps,
                         "span_us": span / 1e3 / steps},
            "ops": ops}


def summary(profile: dict, top: int = 5) -> str:
    """One line: launches and device time per step, the idle share, and the ``top`` kinds."""
    step = profile["per_step"]
    idle = 1 - profile["busy_ms"] / profile["span_ms"] if profile["span_ms"] else 0.0
    ops = "; ".join(f"{o['op']} {o['launches']}x {o['us_each']:.2f} us" for o in profile["ops"][:top])
    return (f"{step['launches']:.3f} kernels/step, busy {step['busy_us']:.2f} of {step['span_us']:.2f} us/step "
            f"(idle {100 * idle:.0f} %); {ops}")
