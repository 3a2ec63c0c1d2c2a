"""Strict settings for the whole suite: float64 available, NaNs caught."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_debug_nans", False)


@pytest.fixture
def key():
    return jax.random.key(0)

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
