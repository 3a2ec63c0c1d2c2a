"""Equinox: ``eqx.nn.LSTMCell`` and ``eqx.nn.GRUCell``.

Equinox stores PyTorch's layout with one bias: ``weight_ih (G*H, I)``,
``weight_hh (G*H, H)``, ``bias (G*H,)``; LSTM blocks i, f, g, o; GRU blocks
r, z, n with ``bias_n`` inside the reset product and ``h = n + z ⊙ (h − n)``,
which is jrnn's reset-after GRU. Equinox has no SimpleRNN cell and no
reset-before GRU, so :func:`to_equinox` refuses those.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import (
    IDENTITY,
    RZN_KEEP_GATE,
    from_jrnn,
    make_params,
    require_gru_variant,
    single_cell,
    to_jrnn,
)


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


def to_equinox(cell, params):
    """Build the ``eqx.nn.LSTMCell`` or ``eqx.nn.GRUCell`` that computes what ``cell`` computes.

    The module is called as Equinox cells are, one step and one example at a
    time: ``module(x_t, (h, c))`` for the LSTM, ``module(x_t, h)`` for the GRU.

    Args:
      cell: ``jrnn.lstm(H)`` or ``jrnn.gru(H, reset_after=True)``.
      params: its params.

    Raises:
      ValueError: a SimpleRNN, minGRU/minLSTM or reset-before GRU (Equinox has none);
        params of the wrong shapes.
      TypeError: a stacked or bidirectional layer; params of another cell type.
    """
    arrays = single_cell(cell, params, "Equinox", (jrnn.LSTMCell, jrnn.GRUCell))
    require_gru_variant(cell, True, "Equinox")
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    w_x, dtype = arrays["w_x"], arrays["w_x"].dtype
    is_lstm = isinstance(cell, jrnn.LSTMCell)
    w_x, w_h, b = from_jrnn(IDENTITY[4] if is_lstm else RZN_KEEP_GATE, w_x, arrays["w_h"], arrays["b"])
    module_class = eqx.nn.LSTMCell if is_lstm else eqx.nn.GRUCell
    module = module_class(w_x.shape[0], cell.hidden_size, dtype=dtype, key=jax.random.key(0))
    new = {"weight_ih": w_x.T, "weight_hh": w_h.T, "bias": b}
    if not is_lstm:
        new["bias_n"] = arrays["b_hn"]
    return eqx.tree_at(lambda m: [getattr(m, name) for name in new], module,
                       [jnp.asarray(np.ascontiguousarray(a)) for a in new.values()])
