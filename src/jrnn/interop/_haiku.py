"""Haiku: ``hk.LSTM``, ``hk.GRU`` and ``hk.VanillaRNN`` parameter dicts.

``hk.LSTM`` keeps one ``linear`` on ``[x, h]`` (rows: inputs then hidden) with
blocks i, g, f, o and adds 1 to the forget pre-activation inside the cell;
the conversion folds that +1 into ``b``. ``hk.GRU`` is jrnn's reset-before GRU
exactly (blocks z, r, a). ``hk.VanillaRNN`` is ``relu(x W_i + b_i + h W_h + b_h)``.
:func:`to_haiku` writes the same dicts; it subtracts the LSTM's built-in 1 from
the forget bias, so the round trip of that block is exact to float rounding
(one ulp of 1), everything else exactly.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import (
    IDENTITY,
    Layout,
    from_jrnn,
    make_params,
    refuse,
    require_gru_variant,
    single_cell,
    to_jrnn,
)

HAIKU_LSTM = Layout((0, 2, 1, 3))  # jrnn i, f, g, o <- haiku i, g, f, o
KINDS = ("lstm", "gru", "vanilla_rnn")


def _module(params, kind, name):
    name = name or kind
    found = {k: v for k, v in params.items()
             if k == name or k.startswith(name + "/") or k.endswith("/" + name) or ("/" + name + "/") in k}
    if not found:
        refuse(f"params: no haiku module named {name!r}; modules: {', '.join(params)}")
    return {k: {p: np.asarray(a) for p, a in v.items()} for k, v in found.items()}


def from_haiku(params, kind: str, *, name: str | None = None):
    """Convert the params of a Haiku recurrent core to ``(cell, params)``.

    Args:
      params: the dict from ``hk.transform(...).init`` (or a part of it).
      kind: ``"lstm"`` (``hk.LSTM``), ``"gru"`` (``hk.GRU``) or
        ``"vanilla_rnn"`` (``hk.VanillaRNN``, a ReLU SimpleRNN).
      name: the core's module name if not the default (``lstm``, ``gru``, ``vanilla_rnn``).

    Raises:
      ValueError: unknown ``kind`` or no such module in ``params``.
    """
    if kind not in KINDS:
        refuse(f"kind: expected one of {KINDS}, got {kind!r}")
    modules = _module(params, kind, name)
    if kind == "gru":
        (entry,) = modules.values()
        cell = jrnn.gru(entry["w_h"].shape[0])
        return cell, make_params(cell, entry["w_i"], entry["w_h"], entry["b"], dtype=entry["w_i"].dtype)
    linears = [modules[k] for k in sorted(modules, key=lambda k: (len(k), k))]
    if kind == "lstm":
        (linear,) = linears
        w, b = linear["w"], linear["b"]
        H = w.shape[1] // 4
        I = w.shape[0] - H
        w_x, w_h, b = to_jrnn(HAIKU_LSTM, w[:I], w[I:], b)
        b = b.copy()
        b[H : 2 * H] += 1.0  # haiku's built-in forget bias, made a parameter
        cell = jrnn.lstm(H)
        return cell, make_params(cell, w_x, w_h, b, dtype=w.dtype)
    to_hidden, to_hidden_rec = linears  # "linear" (inputs), "linear_1" (hidden)
    H = to_hidden["w"].shape[1]
    b = to_hidden["b"] + to_hidden_rec.get("b", np.zeros(H, to_hidden["b"].dtype))
    cell = jrnn.simple_rnn(H, activation="relu")
    return cell, make_params(cell, *to_jrnn(IDENTITY[1], to_hidden["w"], to_hidden_rec["w"], b),
                             dtype=to_hidden["w"].dtype)


def to_haiku(cell, params, *, name: str | None = None):
    """The params dict of the Haiku core that computes what ``cell`` computes.

    ``jrnn.lstm(H)`` gives ``hk.LSTM(H)``'s params, ``jrnn.gru(H)`` (reset-before)
    ``hk.GRU(H)``'s and ``jrnn.simple_rnn(H, activation="relu")``
    ``hk.VanillaRNN(H)``'s (with ``double_bias=True``, its default), to pass to
    ``hk.transform(...).apply`` like the dict its ``init`` returns.

    Args:
      cell: the jrnn cell.
      params: its params.
      name: the core's module path inside the transformed function (default: the
        core's own name, ``lstm``, ``gru`` or ``vanilla_rnn``, as for a core built
        at the top level); e.g. ``"forecaster/lstm"`` for one built inside a module.

    Raises:
      ValueError: a reset-after GRU, a tanh SimpleRNN or a minGRU/minLSTM (Haiku has
        none); params of the wrong shapes.
      TypeError: a stacked or bidirectional layer; params of another cell type.
    """
    arrays = single_cell(cell, params, "Haiku", (jrnn.LSTMCell, jrnn.GRUCell, jrnn.SimpleRNNCell))
    require_gru_variant(cell, False, "Haiku")
    if isinstance(cell, jrnn.SimpleRNNCell) and cell.activation != "relu":
        refuse(f"cell: hk.VanillaRNN uses relu; got a SimpleRNN with activation={cell.activation!r}")
    w_x, w_h, b = arrays["w_x"], arrays["w_h"], arrays["b"]
    H = cell.hidden_size
    if isinstance(cell, jrnn.GRUCell):
        tree = {name or "gru": {"w_i": w_x, "w_h": w_h, "b": b}}
    elif isinstance(cell, jrnn.SimpleRNNCell):
        path = name or "vanilla_rnn"
        tree = {f"{path}/linear": {"w": w_x, "b": b}, f"{path}/linear_1": {"w": w_h, "b": np.zeros_like(b)}}
    else:
        b = b.copy()
        b[H : 2 * H] -= 1.0  # hk.LSTM adds 1 to the forget pre-activation itself
        w_x, w_h, b = from_jrnn(HAIKU_LSTM, w_x, w_h, b)
        tree = {f"{name or 'lstm'}/linear": {"w": np.concatenate([w_x, w_h], axis=0), "b": b}}
    import jax.numpy as jnp

    return {path: {k: jnp.asarray(v) for k, v in entry.items()} for path, entry in tree.items()}
