#!/usr/bin/env bash
# One device call for a session that is lent a GPU (device time is short: one call, then give the
# machine back). From the repository root, on the GPU machine (jax with CUDA, torch and flax installed):
#
#   OUT=$OUT bash benchmarks/gpu_session.sh          # logs and JSON into $OUT (default gpu-session)
#   QUICK=1 OUT=/tmp/gs bash benchmarks/gpu_session.sh   # the same steps at tiny shapes, on any machine
#
# Steps, each under its own time limit (seconds); the timings first, on an idle machine:
#   batch1   issue #7's batch-1 target: cuDNN through jrnn's binding and "auto" against PyTorch at
#            (1, 128, 1000), LSTM and GRU, float32, 15 repeats, with kernels per step (PyTorch's too) and
#            device times (each call's kernels' span, alternating, medians: what CUDA events would time)
#   fused    issue #7's 5x-Flax target: the fused LSTM (then the GRU) at (16, 768, 1024) float32 against
#            Flax, with and without the barrier on each step's carry (fused.step_barrier), unroll 16 and 8,
#            with kernels per step and device times, under XLA's default flags (its command buffers on)
#   tests    the cuDNN tests (tests/test_gpu.py: values, gradients, forward mode, derivatives of gradients,
#            under the suite's strict settings) and jrnn.scan's Pallas path compiled for the GPU
#            (tests/test_pallas.py), two pytest runs side by side, 8 workers each, a line per test (compiling
#            is most of their time. On an H200, 2026-11-28: one worker each ran out of 120 s; 6 workers each
#            ran test_gpu.py in 137 s, its slowest test 91 s, and test_pallas.py's 12th test was still
#            running at 150 s)
# The limits add up to 480 s: run it with the device call's timeout_s at 510 (the machine's start comes on top,
# about a minute). On an H200 the whole of it took 218 s (2026-11-28, eighth run, with the fused step's budget
# at 100 s, which left the GRU out: the LSTM's case took 66 s), every step within its limit.
# QUICK=1 on the 2-core development VM: 3 min 30 s (the tests 177 s; 2026-11-28). $OUT gets 7 files (a device call brings back 8 at most).
# jrnn's own cuDNN binding compiles on its first use there (seconds) unless a src/jrnn/kernels/_cudnn_rnn.so
# built ahead travels with the tree (see the docstring of jrnn.kernels.cudnn). The H200 runs carried one,
# built on the development VM with a Python whose jax is the GPU machine's version (0.11.2 in 2026-11):
#   pip install --no-deps --target /tmp/cuh nvidia-cudnn-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12
#   PYTHONPATH=/tmp/cuh:src python -c "import subprocess, pathlib; from jrnn.kernels import cudnn; \
#       subprocess.run(cudnn.build_command(pathlib.Path('src/jrnn/kernels/_cudnn_rnn.so')), check=True)"
# and the device call's carry names src/jrnn/kernels/_cudnn_rnn.so (git ignores it). Record what this prints
# in benchmarks/RESULTS.md with the card's name (card.txt).
set -u
OUT=${OUT:-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
quick=()
if [ "${QUICK:-0}" = 1 ]; then quick=(--quick); fi

(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi") > "$OUT/card.txt" 2>&1
python -c "import jax, sys; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices())" >> "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"

step() {  # step NAME LIMIT_S COMMAND...: run it, log into $OUT/NAME.log, print its status and last lines
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}

step batch1 120 python benchmarks/gpu.py "${quick[@]}" --cells lstm,gru --shapes 3 --dtypes float32 \
    --only "=jrnn cudnn algorithm=3,=jrnn auto,torch" --repeats 15 --profile --device-time --json "$OUT/batch1.json"
step fused 160 python benchmarks/gpu.py "${quick[@]}" --cells lstm,gru --shapes 0 --dtypes float32 --budget-s 140 \
    --only "=jrnn fused,=jrnn fused unroll=8,=jrnn fused no-barrier,=jrnn fused no-barrier unroll=8,flax" \
    --profile --device-time --json "$OUT/fused.json"
tests() {  # the two test runs side by side; each worker compiles its own programs
    local pytest=(python -m pytest -v -o addopts= -p no:cacheprovider -n 8 --durations=8)
    XLA_PYTHON_CLIENT_PREALLOCATE=false "${pytest[@]}" tests/test_gpu.py -k "not benchmark and not step_kernels" \
        > "$OUT/tests-gpu.log" 2>&1 &
    XLA_PYTHON_CLIENT_PREALLOCATE=false "${pytest[@]}" tests/test_pallas.py -k "scan_pallas or derivatives" \
        > "$OUT/tests-pallas.log" 2>&1
    local pallas=$?
    wait $!
    local gpu=$?
    echo "tests-gpu: exit $gpu; tests-pallas: exit $pallas"
    tail -n 14 "$OUT/tests-gpu.log" "$OUT/tests-pallas.log"
    return $((gpu || pallas))
}
export -f tests
export OUT
start=$SECONDS  # its summary to the output, not a log: a device call brings back at most 8 files from $OUT
timeout 200 bash -c tests
echo "== tests: exit $? after $((SECONDS - start)) s"
