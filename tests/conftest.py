"""Strict settings for the whole suite: float64 available, NaNs caught."""

import jax
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

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
