"""Flax cells, linen and NNX: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``.

Flax kernels are x @ w like jrnn's. Linen keeps one ``Dense`` per gate
(``ii``, ``if``, ``ig``, ``io``, ``hi``, ...); NNX's ``OptimizedLSTMCell``,
``GRUCell`` and ``SimpleCell`` keep fused ``dense_i``/``dense_h``. Flax GRUs
are reset-after with ``h = (1 − z) ⊙ n + z ⊙ h`` (blocks r, z, n); NNX's
``GRUCell`` has no ``b_hn``, which is exactly ``b_hn = 0``. The Flax LSTM
carry is ``(c, h)``; :func:`carry_from_flax` turns it into ``LSTMState(h, c)``.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import IDENTITY, RZN_KEEP_GATE, make_params, refuse, to_jrnn


def carry_from_flax(carry):
    """Flax LSTM carry ``(c, h)`` -> ``jrnn.LSTMState(h, c)``; other carries unchanged."""
    if isinstance(carry, tuple) and len(carry) == 2:
        c, h = carry
        return jrnn.LSTMState(h, c)
    return carry


def _check_activations(module, kind):
    import jax

    gate = getattr(module, "gate_fn", jax.nn.sigmoid)
    act = getattr(module, "activation_fn", jax.numpy.tanh)
    act_name = {jax.numpy.tanh: "tanh", jax.nn.relu: "relu"}.get(act)
    if kind == "simple_rnn":
        if act_name is None:
            refuse(f"module: activation_fn {act} has no jrnn equivalent (tanh or relu)")
        if getattr(module, "residual", False):
            refuse("module: a residual SimpleCell has no jrnn equivalent")
        return act_name
    if gate is not jax.nn.sigmoid or act_name != "tanh":
        refuse("module: gate_fn/activation_fn differ from jrnn's (sigmoid, tanh)")
    return act_name


def _kind(module):
    import flax.linen as nn
    from flax import nnx

    table = [((nn.OptimizedLSTMCell, nnx.OptimizedLSTMCell), "optimized_lstm"),
             ((nn.LSTMCell, nnx.LSTMCell), "lstm"), ((nn.GRUCell, nnx.GRUCell), "gru"),
             ((nn.SimpleCell, nnx.SimpleCell), "simple_rnn")]
    for classes, kind in table:
        if isinstance(module, classes):
            return kind, isinstance(module, nnx.Module)
    raise TypeError(
        "module: expected a flax.linen or flax.nnx LSTMCell, OptimizedLSTMCell, GRUCell or "
        f"SimpleCell, got {type(module).__name__}"
    )


def _linen_tree(module, params):
    """Linen params as ``{name: {"kernel": ..., "bias": ...}}`` NumPy arrays."""
    if params is None:
        refuse("params: a linen cell needs its params (variables['params'])")
    params = params.get("params", params)
    return {name: {k: np.asarray(v) for k, v in dense.items()} for name, dense in params.items()}


def _nnx_tree(module):
    tree = {}
    for name in ("ii", "if_", "ig", "io", "hi", "hf", "hg", "ho", "dense_i", "dense_h"):
        linear = getattr(module, name, None)
        if linear is None:
            continue
        entry = {"kernel": np.asarray(linear.kernel[...])}
        if getattr(linear, "bias", None) is not None:
            entry["bias"] = np.asarray(linear.bias[...])
        tree[name.rstrip("_")] = entry
    return tree


def _bias(entry, size, dtype):
    return entry.get("bias", np.zeros(size, dtype))


def from_flax(module, params=None):
    """Convert a Flax cell (and, for linen, its params) to ``(cell, params)``.

    Args:
      module: a ``flax.linen`` cell (then pass ``params``) or a ``flax.nnx``
        cell (which holds its own params).
      params: linen only: ``variables["params"]`` (or the whole variables dict).

    Raises:
      TypeError: not a Flax cell.
      ValueError: non-default gate/activation functions, a residual SimpleCell.
    """
    kind, is_nnx = _kind(module)
    activation = _check_activations(module, kind)
    tree = _nnx_tree(module) if is_nnx else _linen_tree(module, params)
    if "dense_h" in tree:  # fused NNX layout
        w_x, w_h = tree["dense_i"]["kernel"], tree["dense_h"]["kernel"]
        H = w_h.shape[0]
        b_in = _bias(tree["dense_i"], w_x.shape[1], w_x.dtype)
        b_rec = _bias(tree["dense_h"], w_h.shape[1], w_h.dtype)
    else:  # one Dense per gate
        gates = {"lstm": "ifgo", "optimized_lstm": "ifgo", "gru": ("r", "z", "n"), "simple_rnn": None}[kind]
        if gates is None:
            w_x, w_h = tree["i"]["kernel"], tree["h"]["kernel"]
            H = w_h.shape[0]
            b_in, b_rec = _bias(tree["i"], H, w_x.dtype), _bias(tree["h"], H, w_h.dtype)
        else:
            H = tree["h" + gates[0]]["kernel"].shape[0]
            part = lambda side, g, key: (_bias(tree[side + g], H, tree[side + g]["kernel"].dtype) if key == "bias"
                                         else tree[side + g]["kernel"])
            cat = lambda side, key: np.concatenate([part(side, g, key) for g in gates], axis=-1)
            w_x, w_h, b_in, b_rec = cat("i", "kernel"), cat("h", "kernel"), cat("i", "bias"), cat("h", "bias")
    if kind == "gru":
        cell = jrnn.gru(H, reset_after=True)
        b_hn = b_rec[2 * H :]
        b = b_in + np.concatenate([b_rec[: 2 * H], np.zeros(H, b_rec.dtype)])
        w_x, w_h, b = to_jrnn(RZN_KEEP_GATE, w_x, w_h, b)
        return cell, make_params(cell, w_x, w_h, b, b_hn, dtype=w_x.dtype)
    cell = jrnn.simple_rnn(H, activation=activation) if kind == "simple_rnn" else jrnn.lstm(H)
    w_x, w_h, b = to_jrnn(IDENTITY[cell.num_blocks], w_x, w_h, b_in + b_rec)
    return cell, make_params(cell, w_x, w_h, b, dtype=w_x.dtype)
