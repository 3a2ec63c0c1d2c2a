#!/usr/bin/env bash
# One device call for a session that is lent a GPU (device time is short: one call, then give the
# machine back). From the repository root, on the GPU machine (jax with CUDA, torch and flax installed):
#
#   OUT=$OUT bash benchmarks/gpu_session.sh          # logs and JSON into $OUT (default gpu-session)
#   QUICK=1 OUT=/tmp/gs bash benchmarks/gpu_session.sh   # the same steps at tiny shapes, on any machine
#
# Steps, each under its own time limit (seconds), in order of importance:
#   tests-gpu      the cuDNN tests (against the plain path: values, gradients, forward mode, derivatives of gradients;
#                  under the suite's strict settings, rank promotion "raise" included)
#   tests-pallas   jrnn.scan's Pallas path, compiled for the GPU, against the plain path (the same)
#   fused-profile  issue #7's 5x-Flax target: the fused LSTM at (16, 768, 1024) float32 against Flax,
#                  with kernels per step (command buffers off, so the profiler sees each kernel)
#   batch1         issue #7's batch-1 target: cuDNN through jrnn's binding and "auto" against PyTorch at
#                  (1, 128, 1000), LSTM and GRU, float32, 15 repeats, kernels per step
#   fused-no-split-k  an experiment for the first target: the same as fused-profile (no profile) with
#                  XLA's split-K GEMMs off. Compiled for an H100 without autotuning, the reverse loop's
#                  (16, 3072) x (3072, 768) product ran as 16 partial products whose sum took a kernel of
#                  its own each step (benchmarks/RESULTS.md); Flax runs under the same flag. A CPU XLA
#                  does not know the flag: with QUICK=1 on a CPU this step alone exits 1
# The limits add up to 570 s: run it with the device call's timeout_s at 600.
# jrnn's own cuDNN binding compiles on its first use there (seconds) unless a src/jrnn/kernels/_cudnn_rnn.so
# built ahead travels with the tree (see the docstring of jrnn.kernels.cudnn). Record what this prints in
# benchmarks/RESULTS.md with the card's name (card.txt). On the 2-core CPU VM, QUICK=1 took 1 min 50 s
# (2026-11-28: 1 min 57 s, tests 49 s + 49 s).
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

step tests-gpu 120 python -m pytest -q -o addopts= -p no:cacheprovider tests/test_gpu.py \
    -k "not benchmark and not step_kernels"
step tests-pallas 120 python -m pytest -q -o addopts= -p no:cacheprovider tests/test_pallas.py \
    -k "scan_pallas or derivatives"
step fused-profile 120 env XLA_FLAGS=--xla_gpu_enable_command_buffer= python benchmarks/gpu.py "${quick[@]}" \
    --cells lstm --shapes 0 --dtypes float32 --only "=jrnn fused,=jrnn fused unroll=16,flax" --profile \
    --json "$OUT/fused-profile.json"
step batch1 120 python benchmarks/gpu.py "${quick[@]}" --cells lstm,gru --shapes 3 --dtypes float32 \
    --only "=jrnn cudnn algorithm=3,=jrnn auto,torch" --repeats 15 --profile --json "$OUT/batch1.json"
step fused-no-split-k 90 env XLA_FLAGS="--xla_gpu_enable_split_k_autotuning=false" python benchmarks/gpu.py \
    "${quick[@]}" --cells lstm --shapes 0 --dtypes float32 --only "=jrnn fused,=jrnn fused unroll=16,flax" \
    --json "$OUT/fused-no-split-k.json"
