"""cuDNN LSTM through ``jax.experimental.rnn`` (GPU, float32), as an option.

cuDNN stores PyTorch's layout (``W_ih (4H, I)``, ``W_hh (4H, H)``, two biases,
gates i, f, g, o) packed in one flat vector; jrnn's ``w_x``/``w_h`` are the
transposes and its ``b`` goes to ``b_ih`` with ``b_hh = 0``. Exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn.cells import LSTMCell, LSTMState


def available() -> bool:
    """Whether the default backend is a GPU (where cuDNN may run)."""
    return jax.default_backend() == "gpu"


def pack_weights(params) -> jax.Array:
    """jrnn LSTM params -> the flat cuDNN weight vector (one layer, one direction)."""
    w_ih, w_hh = params.w_x.T, params.w_h.T
    return jnp.concatenate([w_ih.ravel(), w_hh.ravel(), params.b, jnp.zeros_like(params.b)])


def cudnn_scan(cell, params, xs, carry, *, seq_lengths=None):
    """LSTM over batch-major ``xs (B, T, I)`` with cuDNN; returns ``(LSTMState, ys (B, T, H))``."""
    from jax.experimental import rnn

    if not isinstance(cell, LSTMCell):
        raise ValueError(f"implementation: 'cudnn' supports jrnn.lstm cells only, got {type(cell).__name__}")
    B, T, I = xs.shape
    H = cell.hidden_size
    lengths = jnp.full((B,), T, jnp.int32) if seq_lengths is None else seq_lengths.astype(jnp.int32)
    y, h_n, c_n = rnn.lstm(xs, carry.h[None], carry.c[None], pack_weights(params), lengths,
                           input_size=I, hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False,
                           precision=jax.lax.Precision.HIGHEST)
    mask = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    empty = (lengths == 0)[:, None]  # jrnn's contract: length 0 returns the initial carry
    final = LSTMState(jnp.where(empty, carry.h, h_n[0]), jnp.where(empty, carry.c, c_n[0]))
    return final, jnp.where(mask, y, jnp.zeros_like(y))
