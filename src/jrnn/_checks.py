"""Input checks shared by the public API.

Every check runs on static shapes and dtypes, so it fires at trace time and
works under ``jit``. Messages name the argument and give expected and actual.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_array(name: str, value) -> None:
    """``TypeError`` unless ``value`` is an array (jax, numpy or a tracer)."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}")


def check_floating(name: str, value) -> None:
    """``TypeError`` unless ``value`` has a floating dtype."""
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {value.dtype}")


def check_key(key) -> None:
    """``TypeError`` unless ``key`` is a JAX PRNG key: ``jax.random.key(seed)``, or the
    raw ``uint32`` key data of ``jax.random.PRNGKey(seed)``."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
                              or (dtype == jnp.uint32 and getattr(key, "ndim", 0) >= 1)):
        return
    got = f"{type(key).__name__} {key!r}" if dtype is None else f"an array of dtype {dtype}"
    raise TypeError(f"key: expected a JAX PRNG key (jax.random.key(seed)), got {got}")


def check_init_args(key, input_size, dtype) -> None:
    """A cell's ``init``: ``TypeError`` unless ``key`` is a PRNG key, ``ValueError`` unless
    ``input_size`` is a positive int, ``TypeError`` unless ``dtype`` is a floating dtype."""
    check_key(key)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size: expected a positive int, got {input_size!r}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {jnp.dtype(dtype)}")


def check_integer(name: str, value) -> None:
    """``TypeError`` unless ``value`` has an integer dtype."""
    if not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"{name}: expected an integer dtype, got {value.dtype}")


def check_shape(name: str, value, expected: tuple) -> None:
    """``ValueError`` unless ``value.shape == expected``."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(value.shape)}")


def check_rate(name: str, value) -> None:
    """``ValueError`` unless ``0 <= value < 1`` (a dropout rate)."""
    if not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a rate in [0, 1), got {value!r}")


def check_bool(name: str, value) -> None:
    """``TypeError`` unless ``value`` is a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def is_concrete(value) -> bool:
    """True when ``value`` holds known numbers (not a tracer under jit)."""
    return not isinstance(value, jax.core.Tracer)


def as_array(name: str, value):
    """Convert lists, scalars and NumPy arrays to JAX arrays (float64 becomes float32
    unless x64 is enabled, silently, as ``jnp.asarray`` does); leave JAX arrays as they are."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":  # (others fail the dtype checks)
        return jnp.asarray(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}") from err
