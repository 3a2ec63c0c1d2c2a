"""benchmarks/device_profile.py: a program's kernels from jax's profiler."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn


def _device_profile():
    path = Path(__file__).parent.parent / "benchmarks" / "device_profile.py"
    spec = importlib.util.spec_from_file_location("device_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_kinds_drop_the_instance_number():
    kind = _device_profile().op_kind
    assert kind("loop_add_fusion.3") == kind("loop_add_fusion.12") == "loop_add_fusion"
    assert kind("gemm_fusion_dot_12_impl") == kind("gemm_fusion_dot.12.0") == "gemm_fusion_dot"
    assert kind("input_concatenate_fusion") == "input_concatenate_fusion" and kind("17") == "17"


def test_busy_time_is_the_union_of_the_kernels_intervals():
    busy = _device_profile().busy_ns
    assert busy([]) == 0
    assert busy([(0, 10), (20, 5)]) == 15  # a gap
    assert busy([(0, 10), (5, 10), (30, 1)]) == 16  # an overlap (two streams)
    assert busy([(5, 1), (0, 10)]) == 10  # one inside another, out of order


def test_kernel_profile_of_a_time_loop():
    """On this backend too (the XLA thunks of the host plane): the jitted
    forward+backward of a 40-step scan shows its loops' operations, the busy
    time fits in the span, and the per-step numbers divide by the steps."""
    device_profile = _device_profile()
    cell = jrnn.lstm(8)
    params, xs = cell.init(jax.random.key(0), 4), jnp.ones((2, 40, 4))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jrnn.scan(cell, p, x, implementation="plain")[1])))
    run = lambda: jax.block_until_ready(grad(params, xs))
    run()
    profile = device_profile.kernel_profile(run, steps=40)
    assert profile["launches"] > 40 and profile["ops"]
    assert 0 < profile["busy_ms"] <= profile["span_ms"] + 1e-9 and profile["span_ms"] <= profile["wall_ms"]
    assert profile["per_step"]["launches"] == profile["launches"] / 40
    assert sum(op["launches"] for op in profile["ops"]) == profile["launches"]
    assert "kernels/step" in device_profile.summary(profile)


def test_kernel_profile_of_work_outside_xla():
    """A function that runs no XLA program (PyTorch's, on CPU) profiles as no
    kernels, and its summary still prints (on a GPU jax's profiler should record PyTorch's kernels too)."""
    device_profile = _device_profile()
    profile = device_profile.kernel_profile(lambda: np.ones((64, 64)) @ np.ones((64, 64)), steps=4)
    assert profile["launches"] == 0 and profile["busy_ms"] == profile["span_ms"] == 0
    assert device_profile.summary(profile).startswith("0.000 kernels/step, busy 0.00 of 0.00 us/step (idle 0 %)")


def test_call_spans_split_the_kernels_at_the_pauses():
    spans = _device_profile().call_spans
    events = [("b", 10, 5), ("a", 0, 4), ("c", 100, 1), ("d", 12, 8), ("e", 103, 2)]  # out of order, overlapping
    assert spans(events, 2, min_gap_ns=50) == [20, 5]
    assert spans(events, 1, min_gap_ns=200) == [105]
    with pytest.raises(ValueError, match="calls: expected 3 clusters .* got 2"):
        spans(events, 3, min_gap_ns=50)


def test_device_times_of_alternating_calls():
    """Two jitted programs whose device work differs 8-fold (on this backend, the
    host plane's XLA thunks): each gets a median span, the bigger one longer."""
    device_profile = _device_profile()
    small, big = jnp.ones((64, 64)), jnp.ones((512, 512))
    matmul = jax.jit(lambda a: a @ a @ a)
    fns = {"small": lambda: jax.block_until_ready(matmul(small)), "big": lambda: jax.block_until_ready(matmul(big))}
    for fn in fns.values():
        fn()
    times = device_profile.device_times(fns, repeats=5)
    assert set(times) == {"small", "big"} and 0 < times["small"] < times["big"]
