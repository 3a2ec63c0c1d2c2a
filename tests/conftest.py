"""Strict settings for the whole suite: float64 available, NaNs caught."""

import importlib.util
import os

# XLA:CPU compiles the suite's programs without LLVM's optimisations (unless XLA_FLAGS already sets a level):
# with the tests' small shapes, compiling is most of the suite's time, and -O0 takes a quarter off it
# (1640 -> 1207 s of test time, 2-core VM, 2026-11-28; every test passed at both levels). The level changes
# how fast a program runs, not the operations it computes (XLA:CPU has no fast math by default);
# tests/test_fused.py::test_fused_equals_plain_at_full_optimisation compiles at XLA's default level too,
# and so do the subprocesses that set XLA_FLAGS themselves (tests/test_scale.py). Only where no jax
# plugin (a GPU backend) is installed: the flag is XLA's for every backend, and GPU runs keep the defaults.
cpu_only = importlib.util.find_spec("jax_plugins") is None
if cpu_only and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # after XLA_FLAGS (XLA reads it when the first backend starts)
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", False)
# On GPUs the default float32 matmul uses TF32; the tests compare paths at float32 accuracy.
jax.config.update("jax_default_matmul_precision", "highest")
# As Equinox's tests: jrnn never broadcasts arrays of different ranks implicitly, so it runs for users who
# set this too. Keras does (its layers are built and called with "allow", in tests/test_interop.py).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)

os.environ.setdefault("KERAS_BACKEND", "jax")
