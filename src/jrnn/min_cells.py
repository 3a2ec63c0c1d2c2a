"""minGRU and minLSTM (Feng et al., 2024, "Were RNNs All We Needed?").

Their gates read only the input, so each step is the linear recurrence
``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t, b_t`` known for all t in advance,
and the whole sequence can be computed by a parallel associative scan
(:mod:`jrnn.kernels.parallel`). ``jrnn.scan`` does that by default for these
cells; ``implementation="plain"`` runs the same step sequentially, and
``cell.step`` streams it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import check_init_args
from jrnn._serializable import serializable
from jrnn.cells import CELL_TYPES, Cell


@serializable
class MinGRUParams(NamedTuple):
    """``w_x (I, 2H)``, ``b (2H,)``; blocks z (update), h̃ (candidate)."""

    w_x: jax.Array
    b: jax.Array


@serializable
class MinLSTMParams(NamedTuple):
    """``w_x (I, 3H)``, ``b (3H,)``; blocks f (forget), i (input), h̃ (candidate)."""

    w_x: jax.Array
    b: jax.Array


@dataclasses.dataclass(frozen=True)
class _MinCell(Cell):
    """Shared parts: no recurrent weights; the step is ``h = a ⊙ h_prev + b``."""

    def param_shapes(self, input_size):
        return {"w_x": (input_size, self.gate_size), "b": (self.gate_size,)}

    def init(self, key, input_size: int, dtype=jnp.float32):
        check_init_args(key, input_size, dtype)
        from jrnn import initializers as inits

        initializer = inits.resolve(self.init_preset, self.hidden_size)
        k_x, k_b = jax.random.split(key)
        draw = jnp.promote_types(dtype, jnp.float32)
        params = self.params_type(
            initializer.input_kernel(k_x, (input_size, self.gate_size), draw),
            initializer.bias(k_b, (self.gate_size,), draw),
        )
        return jax.tree.map(lambda leaf: leaf.astype(dtype), params)

    def log_coefficients(self, projected_x):
        """``(log a_t, b_t)`` of ``h_t = a_t ⊙ h_{t-1} + b_t`` for any number of steps."""
        raise NotImplementedError

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        raise NotImplementedError

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        """``h = a ⊙ h_prev + b``; ``recurrent_mask`` multiplies ``h_prev``."""
        log_a, b = self.log_coefficients(projected_x)
        h_prev = carry if recurrent_mask is None else carry * recurrent_mask
        h = jnp.exp(log_a) * h_prev + b
        return h, h


@dataclasses.dataclass(frozen=True)
class MinGRUCell(_MinCell):
    r"""minGRU: ``z_t = σ(x_t W_z + b_z)``, ``h̃_t = x_t W_h + b_h``,
    ``h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t``."""

    kind: ClassVar[str] = "min_gru"
    num_blocks: ClassVar[int] = 2
    params_type: ClassVar[type] = MinGRUParams

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        a_z, h_tilde = jnp.split(projected_x, 2, axis=-1)
        return {"z": jax.nn.sigmoid(a_z), "h_tilde": h_tilde}

    def log_coefficients(self, projected_x):
        a_z, h_tilde = jnp.split(projected_x, 2, axis=-1)
        log_one_minus_z = -jax.nn.softplus(a_z)  # log(1 - σ(a)) = -softplus(a)
        return log_one_minus_z, jax.nn.sigmoid(a_z) * h_tilde


@dataclasses.dataclass(frozen=True)
class MinLSTMCell(_MinCell):
    r"""minLSTM with normalised gates:
    ``f_t = σ(x_t W_f + b_f)``, ``i_t = σ(x_t W_i + b_i)``, ``h̃_t = x_t W_h + b_h``,
    ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``,
    ``h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t``."""

    kind: ClassVar[str] = "min_lstm"
    num_blocks: ClassVar[int] = 3
    params_type: ClassVar[type] = MinLSTMParams

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        a_f, a_i, h_tilde = jnp.split(projected_x, 3, axis=-1)
        return {"f": jax.nn.sigmoid(a_f), "i": jax.nn.sigmoid(a_i), "h_tilde": h_tilde}

    def log_coefficients(self, projected_x):
        a_f, a_i, h_tilde = jnp.split(projected_x, 3, axis=-1)
        log_f, log_i = -jax.nn.softplus(-a_f), -jax.nn.softplus(-a_i)  # log σ(a)
        log_sum = jnp.logaddexp(log_f, log_i)
        return log_f - log_sum, jnp.exp(log_i - log_sum) * h_tilde


def min_gru(hidden_size: int, *, init="default") -> MinGRUCell:
    """A minGRU cell (parallel in time). ``init`` as :func:`jrnn.gru`.

    >>> import jax, jax.numpy as jnp, jrnn
    >>> cell = jrnn.min_gru(8)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry, ys = jrnn.scan(cell, params, jnp.ones((2, 100, 3)))  # associative scan
    >>> ys.shape, jrnn.count_params(params)
    ((2, 100, 8), 64)
    """
    return MinGRUCell(hidden_size, init)


def min_lstm(hidden_size: int, *, init="default") -> MinLSTMCell:
    """A minLSTM cell with normalised forget/input gates (parallel in time)."""
    return MinLSTMCell(hidden_size, init)


CELL_TYPES.update({MinGRUCell.kind: MinGRUCell, MinLSTMCell.kind: MinLSTMCell})
