"""Equinox: ``eqx.nn.LSTMCell`` and ``eqx.nn.GRUCell``.

Equinox stores PyTorch's layout with one bias: ``weight_ih (G*H, I)``,
``weight_hh (G*H, H)``, ``bias (G*H,)``; LSTM blocks i, f, g, o; GRU blocks
r, z, n with ``bias_n`` inside the reset product and ``h = n + z ⊙ (h − n)``.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import IDENTITY, RZN_KEEP_GATE, make_params, to_jrnn


def from_equinox(module):
    """Convert ``eqx.nn.LSTMCell`` or ``eqx.nn.GRUCell`` to ``(cell, params)``.

    Raises:
      TypeError: another module.
    """
    import equinox as eqx

    if not isinstance(module, (eqx.nn.LSTMCell, eqx.nn.GRUCell)):
        raise TypeError(f"module: expected eqx.nn.LSTMCell or eqx.nn.GRUCell, got {type(module).__name__}")
    w_ih, w_hh = np.asarray(module.weight_ih), np.asarray(module.weight_hh)
    H = w_hh.shape[1]
    bias = np.asarray(module.bias) if module.use_bias else np.zeros(w_ih.shape[0], w_ih.dtype)
    if isinstance(module, eqx.nn.LSTMCell):
        cell = jrnn.lstm(H)
        return cell, make_params(cell, *to_jrnn(IDENTITY[4], w_ih.T, w_hh.T, bias), dtype=w_ih.dtype)
    cell = jrnn.gru(H, reset_after=True)
    b_hn = np.asarray(module.bias_n) if module.use_bias else np.zeros(H, w_ih.dtype)
    return cell, make_params(cell, *to_jrnn(RZN_KEEP_GATE, w_ih.T, w_hh.T, bias), b_hn, dtype=w_ih.dtype)
