"""GPU benchmark: correctness on the device first, then LSTM and GRU timings.

Contenders: jrnn's plain ``lax.scan`` path and its fused path, both with
``jrnn.scan``'s default loop unrolling (16 time steps per loop iteration on a
GPU since 2026-11-28, 8 before), the fused path with 8 and 32, and for the LSTM
the fused path with the gate layout it had before 2026-11-27 ("fused
block-gates"); the fused path without
the barrier on each step's carry that it has on a GPU since 2026-11-28 ("fused
no-barrier", also with 8 and 32 steps per iteration; on a GPU only, as the
barrier is); Pallas kernels (H ≤ 256:
one program per 16 batch rows; LSTM H = 512 and 768: H/16 cooperating
programs with a grid barrier per step; an experiment: the LSTM at H = 128
with the state in one chunk of 128 columns, "pallas chunk=128"; with
``--streamed``, where the weights stay on chip, also with them re-read each
step); jrnn's cuDNN option
(``implementation="cudnn"``, float32: jrnn's own cuDNN binding, which asks
for cuDNN's persistent small-H kernel where H ≤ 128, for the LSTM and the GRU,
and beside it for the LSTM ``jax.experimental.rnn``, cuDNN's standard
algorithm); ``torch.nn.LSTM`` / ``torch.nn.GRU`` (cuDNN); and Flax
``nn.RNN(OptimizedLSTMCell)`` / ``nn.RNN(GRUCell)``. The GRU is the
reset-after variant that cuDNN computes. Shapes (B, I = H, T) =
(16, 768, 1024), (64, 512, 100), (16, 256, 1000), (1, 128, 1000); forward and
forward+backward; float32 and bfloat16 (jrnn with a float32 carry). Medians of
interleaved runs after warm-up, with ``block_until_ready`` /
``torch.cuda.synchronize``.

The device checks run first (each fast path against the plain path, values and
gradients; with ``--only``, those of the jrnn contenders it keeps), each in a
child process with a time limit (``--check-timeout``): a check that hangs, or
compiles for longer, is reported as timed out, with a Python traceback of where
it was. On a GPU, the Pallas contenders of a cell and hidden size are timed
only where a device check of them ran and passed. Then the cases run in order
of importance (the issue's target shapes first, (16, 768, 1024) then
(1, 128, 1000), the LSTM before the GRU); a case whose estimated time would
pass ``--budget-s`` (default 220 s from the start) is skipped and listed, so
one run fits a short device lease. A jrnn contender that fails to compile is
reported and left out; ``--json`` is rewritten after every case. With
``--profile``, each contender's forward+backward then runs once more under
jax's profiler (on a GPU it records PyTorch's kernels too: seen on an H200,
2026-11-28), and its kernels per time step, the device's busy and idle time and the
costliest kernel kinds are printed after the table and added to its row
(``device_profile.py``). With ``--device-time``, the forward+backward calls
also alternate ``--repeats`` times under the profiler, and each contender's
median device time per call (first kernel's start to last kernel's end, as CUDA
events would time it: without the host's dispatch and wait) and its ratios to
PyTorch and Flax are printed after the table and added to its row.

    python benchmarks/gpu.py --json results.json     # on a GPU machine
    python benchmarks/gpu.py --cells lstm --json results.json   # the LSTM alone
    python benchmarks/gpu.py --quick                 # tiny shapes; runs on CPU too
    python benchmarks/gpu.py --cells lstm --shapes 0,3 --only fused,flax --profile   # where the time goes
    python benchmarks/gpu.py --shapes 16x128x1000 --dtypes float32 --only "=jrnn fused,cudnn,=jrnn auto,torch"

``--shapes`` takes indices into ``SHAPES`` or ``BxHxT`` (I = H); an ``--only``
part that starts with "=" keeps the contender of exactly that name. On a GPU,
"jrnn auto" (``jrnn.scan``'s default) is timed where H ≤ 128, float32, where it
may take cuDNN's persistent kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from math import nan

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from jrnn.kernels import _pallas, cudnn, fused, pallas_gru, pallas_lstm

SHAPES = [(16, 768, 1024), (64, 512, 100), (16, 256, 1000), (1, 128, 1000)]
# steps per loop iteration of the fused contenders beyond jrnn's default (16 on a
# GPU, 8 before 2026-11-28); 32 was slower than 8 in 8 of 11 cases on an H100
# (2026-11-27), before the step barrier ended the forward loop's recomputation,
# which grew with the unroll; on an H200 with the barrier it was slower than 16 at
# (16, 768, 1024) and within 3 % elsewhere
UNROLLS = (8, 32)
# An experiment: the one-program kernels with the state in one chunk of up to 128
# columns (H = 128: 4 products of (16, 128) x (128, 128) per step instead of 16 of
# (16, 64) x (64, 64)); timed as "pallas chunk=128". Without a GPU, Triton's sm_90
# code for it spills no registers (benchmarks/triton_resources.py).
ONE_CHUNK = 128
# Experiments on the Pallas kernels: a name and the kernel_settings a contender
# "pallas <name>" is traced with, timed where it changes the kernel that runs
# (variant_applies) and its own device check passed. (The LSTM's cooperative
# kernels at H = 128 and 256, "pallas cooperative", were timed on an H200 on
# 2026-11-27 and dropped: 1.42x and 1.54x the fused path's time, RESULTS.md.)
PALLAS_VARIANTS = {f"chunk={ONE_CHUNK}": {"max_chunk": ONE_CHUNK}}
# Variants of the cuDNN checks (through jrnn's own binding where it works): the
# matmul precision both paths run at and the cuDNN algorithm forced (None: the
# binding's choice). "tf32" and "algorithm=1" are the math the timed contenders
# use: jax's default precision, where cuDNN, like XLA, may use TF32 products.
# cuDNN's persistent PERSIST_STATIC (1), which PyTorch uses only in float16, and
# PERSIST_DYNAMIC (2, compiled for the problem) are tried in float32 where the
# small-H kernel does not apply.
TF32 = "tf32"
PERSISTENT = {f"algorithm={algo}": algo for algo in (cudnn.PERSIST_STATIC, cudnn.PERSIST_DYNAMIC)}
CUDNN_VARIANTS = {None: ("highest", None), TF32: ("default", None),
                  **{name: ("default", algo) for name, algo in PERSISTENT.items()}}
# in ``checked`` where the device checks of jrnn's own binding at the timed math passed
OWN_CUDNN = {TF32: "jrnn's cuDNN binding", **{name: f"jrnn's cuDNN binding, {name}" for name in PERSISTENT}}
START_TIMEOUT_S = 60.0  # for a child process of the checks to start jax


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def wanted(name: str, only) -> bool:
    """Whether ``--only`` (``only``: its parts, or ``None`` for all) keeps the
    contender ``name``: one of the parts is in the name, or, for a part that
    starts with "=", is the name."""
    return only is None or any(name == part[1:] if part.startswith("=") else part in name for part in only)


def check_cases(on_gpu: bool, only=None) -> list[tuple]:
    """``(cell, implementation, dtype[, Pallas variant])`` of every device check, in the order they run:
    on a GPU, those that gate a timed Pallas contender first (the checks' time budget
    may end the list early), the hidden sizes that no case times last. With
    ``only``, just the checks of the jrnn contenders that ``--only`` keeps."""
    return [case for case in _all_check_cases(on_gpu) if any(wanted(name, only) for name in gated_contenders(*case))]


def gated_contenders(cell, impl, dtype, variant=None) -> list[str]:
    """The names of the contenders that a check stands for: ``"jrnn <implementation>"``,
    and for a check of jrnn's own cuDNN binding at its own choice of algorithm (H <= 128)
    also the contenders that this check gates: that algorithm by name, and ``"jrnn auto"``."""
    names = [f"jrnn {check_row(cell, impl, dtype, variant)['implementation']}"]
    if impl == "cudnn" and variant in (None, TF32):
        names += [f"jrnn cudnn algorithm={cudnn.algorithm(cell.hidden_size)}", "jrnn auto"]
    return names


def _all_check_cases(on_gpu: bool) -> list[tuple]:
    f32, bf16 = jnp.float32, jnp.bfloat16
    scan_paths = [(jrnn.lstm(64), "fused", f32), (jrnn.gru(64, reset_after=True), "fused", f32),
                  (jrnn.min_gru(64), "parallel", f32)]
    # the Pallas kernels take no seq_lengths; H = 64: one chunk, weights on chip
    small = [(jrnn.lstm(64), "pallas", f32), (jrnn.gru(64, reset_after=True), "pallas", f32),
             (jrnn.lstm(64), "pallas", bf16)]
    if not on_gpu:
        return scan_paths + small
    # H = 128: float32 weights re-read at each step in 2 chunks, bfloat16 ones on
    # chip; then the same in one chunk of 128 columns (4 products per step, not 16)
    one_chunk = f"chunk={ONE_CHUNK}"
    batch_one = [(jrnn.lstm(128), "pallas", f32), (jrnn.lstm(128), "pallas", bf16),
                 (jrnn.lstm(128), "pallas", f32, one_chunk), (jrnn.lstm(128), "pallas", bf16, one_chunk)]
    # the cooperative kernels (48 and 32 programs meeting at a grid barrier every step)
    wide = [(jrnn.lstm(768), "pallas", f32), (jrnn.lstm(768), "pallas", bf16), (jrnn.lstm(512), "pallas", f32)]
    gru = [(jrnn.gru(128, reset_after=True), "pallas", f32), (jrnn.gru(128, reset_after=True), "pallas", bf16)]
    # the float32 H = 256 LSTM kernel took over 40 s to compile on an H200 and an H100: last
    # jrnn's own cuDNN binding at H = 64 and 128 (cuDNN's persistent small-H kernel), LSTM and GRU
    gru_64, gru_128 = jrnn.gru(64, reset_after=True), jrnn.gru(128, reset_after=True)
    cudnn_checks = [(cell, "cudnn", f32, variant) for cell in (jrnn.lstm(128), gru_128, jrnn.lstm(64), gru_64)
                    for variant in (None, TF32)]
    # cuDNN's persistent algorithms in float32, where they would replace the fused path (H = 768)
    cudnn_checks += [(cell, "cudnn", f32, name) for name in PERSISTENT
                     for cell in (jrnn.lstm(768), jrnn.gru(768, reset_after=True))]
    return batch_one + wide + scan_paths + cudnn_checks + gru + small + [
        (jrnn.lstm(256), "pallas", f32)]


def variant_label(variant) -> str:
    """`` chunk=128`` for a Pallas variant (a key of ``PALLAS_VARIANTS``), `` tf32`` or `` algorithm=1`` for
    a cuDNN one (of ``CUDNN_VARIANTS``), ``""`` for the default."""
    return f" {variant}" if variant else ""


def pallas_key(kind, hidden_size, variant=None) -> str:
    """A Pallas check that fails or hangs keeps the Pallas contenders of the same
    cell, hidden size and variant out of the timings."""
    return f"{kind} H={hidden_size}{variant_label(variant)}"


def check_row(cell, impl, dtype, variant=None) -> dict:
    """What a check's row says about the check itself, before its results."""
    row = {"cell": f"{cell.kind} H={cell.hidden_size} {jnp.dtype(dtype).name}",
           "implementation": impl + variant_label(variant)}
    return {**row, "pallas": pallas_key(cell.kind, cell.hidden_size, variant)} if impl == "pallas" else row


def run_check(cell, impl, dtype, variant=None) -> dict:
    """One fast path against the plain path on this device: values and gradients
    (bfloat16 params and inputs, with a float32 carry, to a looser tolerance);
    ``variant``: a key of ``PALLAS_VARIANTS``, the kernels' settings while they are traced,
    or for cuDNN a key of ``CUDNN_VARIANTS``: the precision of both paths (at jax's default,
    with TF32 products, to a looser tolerance) and the cuDNN algorithm. cuDNN runs without
    ``seq_lengths``, which jrnn's own binding does not take."""
    key = jax.random.key(0)
    lengths = jnp.array([64, 50, 1, 0, 64, 33, 10, 64])
    f32 = jnp.float32
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.fold_in(key, 1), 32))
    xs = jax.random.normal(key, (8, 64, 32)).astype(dtype)
    options = {} if impl in ("pallas", "cudnn") else {"seq_lengths": lengths}
    # jitted: one compilation each, rather than one per operation
    run = jax.jit(lambda p, i: jrnn.scan(cell, p, xs, implementation=i, carry_dtype=f32, **options),
                  static_argnums=1)
    loss = lambda p, i: jnp.sum(jnp.sin(run(p, i)[1]))
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    row = check_row(cell, impl, dtype, variant)
    precision, algo = CUDNN_VARIANTS[variant] if impl == "cudnn" else ("highest", None)
    tolerance = (1e-4, 1e-3) if dtype == f32 and precision == "highest" else (2e-2, 5e-2)  # values, gradients
    # a fresh context each time: one made by contextlib.contextmanager can be entered once
    forced = lambda: cudnn.forced_algorithm(algo) if algo is not None else contextlib.nullcontext()
    if impl == "cudnn":  # which binding computes it (and why not jrnn's own), with cuDNN's algorithm; only
        problem = cudnn.own_binding_problem()  # here, in a child process: a crash in it costs one check
        if problem is None:
            with forced():
                chosen = cudnn.plan(cell.kind, precision != "highest", xs.shape[2], cell.hidden_size, *xs.shape[:2])
            row["binding"] = f"jrnn, algorithm {chosen[1]}"
        else:
            row["binding"] = f"jax.experimental.rnn: {problem}"
    started = time.perf_counter()
    try:
        with jax.default_matmul_precision(precision), kernel_settings(**PALLAS_VARIANTS.get(variant, {})), forced():
            _, want = run(params, "plain")
            g_want = grad(params, "plain")
            _, got = run(params, impl)
            g_got = grad(params, impl)
            err = rel_err(got, want)
            g_err = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)))
    except Exception as error:  # noqa: BLE001 - a kernel that fails to compile is a result here
        return {**row, "value_rel_err": nan, "grad_rel_err": nan, "ok": False,
                "seconds": time.perf_counter() - started, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    return {**row, "value_rel_err": err, "grad_rel_err": g_err, "seconds": time.perf_counter() - started,
            "ok": bool(err < tolerance[0] and g_err < tolerance[1])}


def exit_code(child, wait_s=10.0):
    """The exit code of a child whose output has ended (None if it has not exited)."""
    try:
        return child.wait(wait_s)
    except subprocess.TimeoutExpired:
        return None


def check_in_children(on_gpu: bool, timeout_s: float, budget_s: float, max_spins: int, only=None) -> list[dict]:
    """Every device check (of the contenders that ``only`` keeps), run by child
    processes of this script: a check that takes longer than ``timeout_s`` (a
    kernel that hangs, say) is reported as such, its child is killed after
    printing where it was, and the next check starts in a new child. Checks
    that would start after ``budget_s`` (in the same child or a new one) are
    reported as skipped.
    (Printing the traceback from a watchdog thread can crash the child: that check
    is then reported as "child exited -11", which ends the same way.)"""
    cases = check_cases(on_gpu, only)
    rows, started = [], time.perf_counter()
    while len(rows) < len(cases):
        if time.perf_counter() - started > budget_s:
            rows += [{**check_row(*case), "ok": False, "error": "skipped: over the checks' time budget"}
                     for case in cases[len(rows):]]
            break
        child = subprocess.Popen([sys.executable, __file__, "--checks-only", "--first-check", str(len(rows)),
                                  "--check-timeout", str(timeout_s), "--max-spins", str(max_spins),
                                  *(["--only", ",".join(only)] if only else [])],
                                 stdout=subprocess.PIPE, bufsize=0,  # unbuffered: select() sees every line
                                 # we hold the GPU's memory
                                 env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            if selector.select(START_TIMEOUT_S):  # the child's first line says that its jax is up
                child.stdout.readline()
            while len(rows) < len(cases) and time.perf_counter() - started <= budget_s:
                line = child.stdout.readline() if selector.select(timeout_s) else None
                if not line:  # hung (or died): the check in hand is reported, the next gets a new child
                    rows.append({**check_row(*cases[len(rows)]), "ok": False,
                                 "error": "timed out" if line is None else f"child exited {exit_code(child)}"})
                    break
                rows.append(json.loads(line))
        child.kill()
        child.wait()
    return rows


def _jax_fns(loss_and_out, params, xs):
    fwd = jax.jit(lambda p, x: loss_and_out(p, x)[1])
    grad = jax.jit(jax.grad(lambda p, x: loss_and_out(p, x)[0], argnums=(0, 1)))
    started = time.perf_counter()
    jax.block_until_ready(grad(params, xs))
    compile_s = time.perf_counter() - started  # the forward+backward program's
    jax.block_until_ready(fwd(params, xs))  # compile the forward here too: a failure shows here
    return (lambda: jax.block_until_ready(fwd(params, xs)),
            lambda: jax.block_until_ready(grad(params, xs)), compile_s)


@contextlib.contextmanager
def kernel_settings(on_chip_bytes=None, max_chunk=None):
    """Trace the Pallas kernels with another ``ON_CHIP_BYTES`` (0: weights re-read
    each step) or ``MAX_CHUNK`` (the widest column chunk); ``None`` leaves one as it is."""
    saved = _pallas.ON_CHIP_BYTES, _pallas.MAX_CHUNK
    _pallas.ON_CHIP_BYTES = saved[0] if on_chip_bytes is None else on_chip_bytes
    _pallas.MAX_CHUNK = saved[1] if max_chunk is None else max_chunk
    try:
        yield
    finally:
        _pallas.ON_CHIP_BYTES, _pallas.MAX_CHUNK = saved


def variant_applies(variant, hidden_size) -> bool:
    """Whether a Pallas variant changes the kernel that runs at this hidden size:
    "chunk=128" where ``ONE_CHUNK`` would hold a one-program kernel's
    state in a single chunk that ``MAX_CHUNK`` splits (H = 128)."""
    with kernel_settings(**PALLAS_VARIANTS[variant]):
        chunks = _pallas.chunking(hidden_size)
    return chunks is not None and chunks[1] == 1 and chunks != _pallas.chunking(hidden_size)


def contenders(kind, B, H, T, dtype, on_gpu, failures, checked=None, streamed=False, only=None):
    """``{name: (forward, forward_backward, compile_s)}`` for ``kind`` "lstm" or "gru"
    (with ``streamed``, also the Pallas kernels with their weights re-read each step;
    with ``only``, a list of strings, just the contenders whose names contain one);
    a jrnn contender that fails to compile, or a Pallas one whose :func:`pallas_key`
    is not in ``checked`` (the keys whose device checks passed; ``None``: all), or
    jrnn's own cuDNN binding where its ``OWN_CUDNN`` key is not in it, is left out
    and described in ``failures``."""
    I = H
    xs = jax.random.normal(jax.random.key(1), (B, T, I)).astype(dtype)
    cell = jrnn.lstm(H) if kind == "lstm" else jrnn.gru(H, reset_after=True)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.key(0), I))
    out = {}
    # "plain" and "fused" with jrnn.scan's default unroll (16 on a GPU, 1 elsewhere)
    variants = [("plain", {}), ("fused", {}), *((f"fused unroll={k}", {"unroll": k}) for k in UNROLLS)]
    if kind == "lstm":  # the fused loop's layout before 2026-11-27 (one tanh over the gate block), side by side
        variants.append(("fused block-gates", {"split_gates": False}))
    if on_gpu:  # the fused loops before 2026-11-28, without the barrier on each step's carry (fused.step_barrier)
        variants += [("fused no-barrier", {"barrier": False}), *((f"fused no-barrier unroll={k}",
                                                                 {"barrier": False, "unroll": k}) for k in UNROLLS)]
    if on_gpu and dtype == jnp.float32:
        # jrnn's own binding: its choice (cuDNN's persistent small-H kernel at H <= 128), and elsewhere
        # cuDNN's other persistent algorithms
        own = [(f"cudnn algorithm={cudnn.algorithm(H)}", {}, OWN_CUDNN[TF32])]
        if cudnn.algorithm(H) != cudnn.PERSIST_STATIC_SMALL_H:
            own += [(f"cudnn {name}", {"cudnn_algorithm": algo}, OWN_CUDNN[name]) for name, algo in PERSISTENT.items()]
        for name, options, key in own:
            if checked is None or key in checked:
                variants.append((name, options))
            elif wanted(f"jrnn {name}", only):
                failures.append(f"{kind} {B}, {H}, {T} float32 jrnn {name}: not timed, its device checks did not "
                                "all pass through jrnn's own binding")
        if kind == "lstm":
            variants.append(("cudnn jax.experimental.rnn", {"own_binding": False}))
        if H <= cudnn.SMALL_H_MAX and (checked is None or OWN_CUDNN[TF32] in checked):
            variants.append(("auto", {}))  # where jrnn.scan's default may take cuDNN's persistent kernel
    if pallas_lstm.supports(cell) or pallas_gru.supports(cell):
        # (name, kernel settings, the variant whose device check gates it)
        kernels = [("pallas", {}, None), *((f"pallas {variant}", settings, variant)
                                           for variant, settings in PALLAS_VARIANTS.items()
                                           if variant_applies(variant, H))]
        if streamed and (pallas_lstm.weights_stay_on_chip if kind == "lstm" else _pallas.weights_on_chip)(params.w_h):
            kernels.append(("pallas streamed", {"on_chip_bytes": 0}, None))
        for name, settings, variant in kernels:
            if checked is None or pallas_key(kind, H, variant) in checked:
                variants.append((name, {"kernel": settings}))
            elif wanted(f"jrnn {name}", only):
                failures.append(f"{kind} {B}, {H}, {T} {jnp.dtype(dtype).name} jrnn {name}: not timed, "
                                "no device check of it passed")
    for name, options in variants:
        if not wanted(f"jrnn {name}", only):
            continue
        impl = name.split()[0]

        def loss(p, x, impl=impl, options=options):
            layout = fused.gate_layout(options["split_gates"]) if "split_gates" in options else contextlib.nullcontext()
            barrier = fused.step_barrier(options["barrier"]) if "barrier" in options else contextlib.nullcontext()
            binding = cudnn.own_binding_disabled() if options.get("own_binding") is False else contextlib.nullcontext()
            forced = (cudnn.forced_algorithm(options["cudnn_algorithm"]) if "cudnn_algorithm" in options
                      else contextlib.nullcontext())
            with kernel_settings(**options.get("kernel", {})), layout, barrier, binding, forced:
                carry_dtype = None if impl in ("cudnn", "auto") else jnp.float32  # cuDNN takes one dtype
                ys = jrnn.scan(cell, p, x, implementation=impl, carry_dtype=carry_dtype,
                               unroll=options.get("unroll"))[1]
            return jnp.sum(ys.astype(jnp.float32)), ys
        try:
            out[f"jrnn {name}"] = _jax_fns(loss, params, xs)
        except Exception as error:  # noqa: BLE001 - reported, and the other contenders still run
            failures.append(f"{kind} {B}, {H}, {T} {jnp.dtype(dtype).name} jrnn {name}: "
                            f"{type(error).__name__}: {str(error)[:300]}")
    flax_name = f"flax {'OptimizedLSTMCell' if kind == 'lstm' else 'GRUCell'}"
    try:
        import flax.linen as nn
    except ImportError:
        nn = None
    if nn is not None and wanted(flax_name, only):
        # Flax's usual mixed precision: float32 params (its orthogonal init has no
        # bfloat16 QR), computation in ``dtype``
        flax_cell = nn.OptimizedLSTMCell if kind == "lstm" else nn.GRUCell
        model = nn.RNN(flax_cell(H, dtype=dtype, param_dtype=jnp.float32))
        variables = model.init(jax.random.key(0), xs)

        def flax_loss(p, x):
            ys = model.apply(p, x)
            return jnp.sum(ys.astype(jnp.float32)), ys

        out[flax_name] = _jax_fns(flax_loss, variables, xs)
    try:
        import torch

        torch_name = f"torch.nn.{'LSTM' if kind == 'lstm' else 'GRU'} (cuDNN)"
        if on_gpu and torch.cuda.is_available() and wanted(torch_name, only):
            t_dtype = torch.float32 if dtype == jnp.float32 else torch.bfloat16
            torch_cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
            module = torch_cls(I, H, batch_first=True).cuda().to(t_dtype)
            module.flatten_parameters()  # .to() leaves cuDNN's weights in pieces, compacted at every call
            x = torch.randn(B, T, I, device="cuda", dtype=t_dtype, requires_grad=True)

            def t_fwd():
                with torch.no_grad():
                    module(x)
                torch.cuda.synchronize()

            def t_bwd():
                module.zero_grad(set_to_none=True)
                x.grad = None
                module(x)[0].float().sum().backward()
                torch.cuda.synchronize()

            out[torch_name] = (t_fwd, t_bwd, None)
    except ImportError:
        pass
    return out


def time_all(fns, repeats):
    for f, g, _ in fns.values():
        f(); g(); f(); g()
    times = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, (f, g, _) in fns.items():
            for i, fn in enumerate((f, g)):
                started = time.perf_counter()
                fn()
                times[name][i].append(time.perf_counter() - started)
    return {name: tuple(1e3 * statistics.median(t) for t in pair) for name, pair in times.items()}


def profile_contenders(fns, case, steps, lines) -> dict:
    """``{name: kernel profile}`` of each contender's forward+backward
    (``benchmarks/device_profile.py``), one run each: on a GPU jax's profiler
    (CUPTI, process-wide) records PyTorch's kernels too, so that cuDNN's
    gaps under PyTorch and under jrnn compare (RESULTS.md); on CPU it sees
    XLA's programs only. A line per contender goes to ``lines``, a failure too
    (the timings stand)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # a module beside this script, also where gpu.py is loaded by path (tests)
        sys.path.insert(0, here)
    import device_profile

    profiles = {}
    for name, (_, fwd_bwd, _) in fns.items():
        try:
            profiles[name] = device_profile.kernel_profile(fwd_bwd, steps=steps)
            lines.append(f"# profile {case} {name} fwd+bwd: {device_profile.summary(profiles[name])}")
        except Exception as error:  # noqa: BLE001 - reported; the timings stand
            lines.append(f"# profile {case} {name}: {type(error).__name__}: {str(error)[:200]}")
    return profiles


def time_on_device(fns, case, repeats, lines) -> dict:
    """``{name: median device ms}`` of each contender's forward+backward
    (``device_profile.device_times``: alternating calls, each timed by its kernels'
    span); a line per contender to ``lines``, or one naming the failure (the
    wall-clock timings stand)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import device_profile

    try:
        times = device_profile.device_times({name: fwd_bwd for name, (_, fwd_bwd, _) in fns.items()}, repeats)
    except Exception as error:  # noqa: BLE001 - reported; the timings stand
        lines.append(f"# device time {case}: {type(error).__name__}: {str(error)[:200]}")
        return {}
    for name, ms in times.items():
        ratios = device_ratios(times, name)
        against = "".join(f", {ratios[key]:.3f}x {peer}" for key, peer in (("device_vs_torch", "torch"),
                                                                          ("device_vs_flax", "flax"))
                          if ratios[key] is not None)
        lines.append(f"# device time {case} {name}: fwd+bwd {ms:.3f} ms{against}")
    return times


def device_ratios(times, name) -> dict:
    """A row's device time and its ratios to PyTorch's and Flax's (``None`` where not measured)."""
    if name not in times:
        return {}
    peer = lambda prefix: next((ms for other, ms in times.items() if other.startswith(prefix)), None)
    torch_ms, flax_ms = peer("torch"), peer("flax")
    return {"fwd_bwd_device_ms": times[name],
            "device_vs_torch": None if torch_ms is None else times[name] / torch_ms,
            "device_vs_flax": None if flax_ms is None else times[name] / flax_ms}


def ranked_cases(cells, shapes, dtypes=(jnp.float32, jnp.bfloat16)):
    """``(cell, shape, dtype)`` in order of importance: the issue's target shapes
    (16, 768, 1024) and (1, 128, 1000) before the others, at each the LSTM before the
    GRU, float32 before bfloat16 (of ``dtypes``)."""
    first = [(16, 768, 1024), (1, 128, 1000)]
    cells = sorted(cells, key=lambda kind: kind != "lstm")
    dtypes = sorted(dtypes, key=lambda dtype: jnp.dtype(dtype) != jnp.float32)
    groups = [[shape for shape in shapes if shape in first], [shape for shape in shapes if shape not in first]]
    groups[0].sort(key=first.index)
    return [(kind, shape, dtype) for group in groups for kind in cells for shape in group for dtype in dtypes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--shapes", help="comma-separated: indices into SHAPES or BxHxT, e.g. 1,3,64x128x1000 "
                        "(default all of SHAPES)")
    parser.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm, gru (default both)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated: float32, bfloat16 (default both)")
    parser.add_argument("--budget-s", type=float, default=220.0,
                        help="skip the cases that would end later than this many seconds after the start")
    parser.add_argument("--check-timeout", type=float, default=45.0,
                        help="seconds one device check may take before it counts as hung (default 45)")
    parser.add_argument("--checks-budget-s", type=float, default=120.0,
                        help="start no device check later than this many seconds after the start")
    parser.add_argument("--max-spins", type=int, default=pallas_lstm.MAX_SPINS,
                        help="polls of a grid barrier before a cooperative kernel gives up (its results turn NaN)")
    parser.add_argument("--streamed", action="store_true",
                        help="also time the Pallas kernels with on-chip weights re-read at each step")
    parser.add_argument("--only", help="comma-separated: check and time only the contenders whose names contain "
                        "one of these, or with a leading '=', are it (e.g. 'fused,pallas,torch,flax')")
    parser.add_argument("--profile", action="store_true",
                        help="after timing a case, run each contender's forward+backward once under jax's "
                        "profiler (on a GPU, PyTorch's kernels too) and report its kernels per time step "
                        "(benchmarks/device_profile.py)")
    parser.add_argument("--device-time", action="store_true",
                        help="after timing a case, also time each contender's forward+backward by its kernels' "
                        "span on the device (device_profile.device_times), alternating, medians")
    parser.add_argument("--checks-only", action="store_true", help=argparse.SUPPRESS)  # a child of check_in_children
    parser.add_argument("--first-check", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pallas_lstm.MAX_SPINS = args.max_spins
    on_gpu = jax.default_backend() == "gpu"
    only = args.only.split(",") if args.only else None
    if args.checks_only:  # one JSON line per check; where a check hangs, the parent reads the traceback
        print(json.dumps({"backend": jax.default_backend()}), flush=True)
        for case in check_cases(on_gpu, only)[args.first_check:]:
            faulthandler.dump_traceback_later(0.75 * args.check_timeout)
            print(json.dumps(run_check(*case)), flush=True)
            faulthandler.cancel_dump_traceback_later()
        return 0
    checks = check_in_children(on_gpu, args.check_timeout, args.checks_budget_s, args.max_spins, only)
    device = str(jax.devices()[0])
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else device
    except ImportError:
        pass
    print(f"# device: {device}; jax {jax.__version__} ({jax.default_backend()})", flush=True)
    for row in checks:
        print(f"# check {row['cell']} {row['implementation']}: value rel err {row.get('value_rel_err', nan):.2e}, "
              f"grad rel err {row.get('grad_rel_err', nan):.2e} in {row.get('seconds', nan):.1f} s -> "
              f"{'ok' if row['ok'] else 'FAILED'} {row.get('error', '')}"
              f"{'; binding: ' + row['binding'] if 'binding' in row else ''}", flush=True)
    # on a GPU, a Pallas kernel is timed only where its device checks all passed (a
    # kernel that compiles for minutes would otherwise eat the run), jrnn's own cuDNN
    # binding only where its checks at the timed (TF32) math all ran through it and
    # passed (a crash in it would otherwise end the run)
    checked = None
    if on_gpu:
        pallas_rows = [row for row in checks if "pallas" in row]
        checked = {row["pallas"] for row in pallas_rows} - {row["pallas"] for row in pallas_rows if not row["ok"]}
        for variant, key in OWN_CUDNN.items():  # the checks at the contenders' math
            rows = [row for row in checks if row["implementation"] == f"cudnn {variant}"]
            if rows and all(row["ok"] and row.get("binding", "").startswith("jrnn") for row in rows):
                checked.add(key)
    shapes = [(2, 16, 20)] if args.quick else SHAPES
    if args.shapes and not args.quick:
        shapes = [tuple(map(int, part.split("x"))) if "x" in part else SHAPES[int(part)]
                  for part in args.shapes.split(",")]
    results, skipped, durations, failures, profile_lines = [], [], [], [], []

    def save():  # after every case, so that a run cut off by a time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": device, "jax": jax.__version__, "checks": checks, "results": results,
                           "skipped": skipped, "failures": failures, "total_s": time.perf_counter() - started},
                          f, indent=1)

    save()
    print("| cell | B, I=H, T | dtype | contender | fwd ms | fwd+bwd ms | fwd+bwd / torch | fwd+bwd / flax "
          "| compile s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    dtypes = [jnp.dtype(name) for name in args.dtypes.split(",")]
    for kind, (B, H, T), dtype in ranked_cases(args.cells.split(","), shapes, dtypes):
        case = f"{kind} {B}, {H}, {T} {jnp.dtype(dtype).name}"
        estimate = statistics.mean(durations) if durations else 0.0
        if time.perf_counter() - started + estimate > args.budget_s:
            skipped.append(case)
            continue
        case_started = time.perf_counter()
        fns = contenders(kind, B, H, T, dtype, on_gpu, failures, checked, args.streamed, only)
        repeats = 3 if args.quick else args.repeats
        medians = time_all(fns, repeats)
        profiles = profile_contenders(fns, case, T, profile_lines) if args.profile else {}
        device_ms = time_on_device(fns, case, repeats, profile_lines) if args.device_time else {}
        durations.append(time.perf_counter() - case_started)
        torch_fb = next((fb for name, (_, fb) in medians.items() if name.startswith("torch")), None)
        flax_fb = next((fb for name, (_, fb) in medians.items() if name.startswith("flax")), None)
        for name, (fwd, fb) in medians.items():
            row = {"cell": kind, "shape": [B, H, T], "dtype": jnp.dtype(dtype).name, "contender": name, "fwd_ms": fwd,
                   "fwd_bwd_ms": fb, "compile_s": fns[name][2],
                   "vs_torch": None if torch_fb is None else fb / torch_fb,
                   "vs_flax": None if flax_fb is None else fb / flax_fb, "profile": profiles.get(name),
                   **device_ratios(device_ms, name)}
            results.append(row)
            fmt = lambda v: "" if v is None else f"{v:.2f}"
            print(f"| {kind} | {B}, {H}, {T} | {row['dtype']} | {name} | {fwd:.2f} | {fb:.2f} | "
                  f"{fmt(row['vs_torch'])} | {fmt(row['vs_flax'])} | {fmt(row['compile_s'])} |", flush=True)
        save()
    total_s = time.perf_counter() - started
    print(f"# {len(durations)} cases in {total_s:.0f} s" + (f"; skipped (over --budget-s): {'; '.join(skipped)}"
                                                          if skipped else ""), flush=True)
    for line in profile_lines:
        print(line, flush=True)
    for failure in failures:
        print(f"# failed: {failure}", flush=True)
    save()
    return 0 if all(r["ok"] for r in checks) and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
