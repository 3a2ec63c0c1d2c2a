"""What jrnn's Pallas kernels ask of an H100, found without one.

For every supported hidden size, cell and dtype, JAX lowers the forward and
backward kernels for CUDA (this works on a CPU-only jaxlib), and Triton's own
compiler (``pip install triton``; it brings ``ptxas``) compiles that Triton IR
for sm_90 with jrnn's ``num_warps``/``num_stages``. The table gives the shared
memory the kernel needs, its registers per thread and its spill stack (bytes
per thread; 0 is what one wants). Shared memory over the H100's 227 KiB per
block means the kernel could not launch.

    pip install triton
    python benchmarks/triton_resources.py                  # every size, both cells and dtypes
    python benchmarks/triton_resources.py --sizes 128,256 --json r.json

Caveat: the pip Triton is not the one inside jaxlib/XLA, which compiles the
kernels on a real GPU, so the numbers are close, not exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp

import jrnn
from jrnn.kernels import _pallas, pallas_gru, pallas_lstm

H100_SHARED_BYTES = 227 * 1024
WIDE_SIZES = (512, 768, 1024)  # LSTM only: the cooperative kernels (H/16 programs per batch tile)


def triton_ir(kind, hidden_size, dtype):
    """``[forward, backward]`` Triton IR (text) of the kernels as ``jrnn.scan`` calls them."""
    from jax._src.pallas.triton import lowering  # private: the only way to the IR

    captured = []
    lower = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        captured.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    cell = jrnn.lstm(hidden_size) if kind == "lstm" else jrnn.gru(hidden_size, reset_after=True)
    module = pallas_lstm if kind == "lstm" else pallas_gru
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.key(0), 8))

    def loss(p, x):
        projected = cell.project_input(p, jnp.swapaxes(x, 0, 1))
        _, ys = module.pallas_scan(cell, p, projected, cell.initial_carry((16,), jnp.float32), interpret=False)
        return jnp.sum(ys)

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        _pallas.lower_for_gpu(jax.jit(jax.grad(loss)), params, jnp.ones((16, 100, 8), dtype))
    finally:
        lowering.lower_jaxpr_to_triton_module = lower
    return captured


def sm90_resources(ir_text):
    """``{"shared_bytes", "registers", "spill_stack_bytes"}`` of Triton IR compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget

    tools = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ttir")
        with open(source, "w") as f:
            f.write(ir_text)
        options = {"num_warps": _pallas.NUM_WARPS, "num_stages": _pallas.NUM_STAGES}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", cubin],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(item.split(":") for item in usage.split() if item.count(":") == 1 and item[0].isupper())
    return {"shared_bytes": kernel.metadata.shared, "registers": int(fields["REG"]),
            "spill_stack_bytes": int(fields["STACK"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated hidden sizes (default: all the kernels take)")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [*_pallas.HIDDEN_SIZES, *WIDE_SIZES]
    rows = []
    print(f"# Triton for sm_90, num_warps={_pallas.NUM_WARPS}, num_stages={_pallas.NUM_STAGES}, "
          f"ON_CHIP_BYTES={_pallas.ON_CHIP_BYTES}")
    print("| cell | H | dtype | weights | kernel | shared KiB | registers | spill stack B | fits |")
    print("|---|---:|---|---|---|---:|---:|---:|---|")
    for kind in args.cells.split(","):
        for hidden_size in sizes:
            wide = kind == "lstm" and pallas_lstm.is_wide(hidden_size)
            if hidden_size not in _pallas.HIDDEN_SIZES and not wide:
                continue
            for dtype in (jnp.float32, jnp.bfloat16):
                num_gates = 4 if kind == "lstm" else 3
                w_h = jax.ShapeDtypeStruct((hidden_size, num_gates * hidden_size), dtype)
                on_chip = (pallas_lstm.weights_stay_on_chip if kind == "lstm" else _pallas.weights_on_chip)(w_h)
                weights = ("on chip" if on_chip else "streamed") + (", wide" if wide else "")
                for name, ir in zip(("forward", "backward"), triton_ir(kind, hidden_size, dtype)):
                    row = {"cell": kind, "hidden_size": hidden_size, "dtype": jnp.dtype(dtype).name,
                           "weights": weights, "kernel": name, **sm90_resources(ir)}
                    row["fits"] = row["shared_bytes"] <= H100_SHARED_BYTES
                    rows.append(row)
                    print(f"| {kind} | {hidden_size} | {row['dtype']} | {weights} | {name} | "
                          f"{row['shared_bytes'] / 1024:.0f} | {row['registers']} | {row['spill_stack_bytes']} | "
                          f"{'yes' if row['fits'] else 'NO'} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["fits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
