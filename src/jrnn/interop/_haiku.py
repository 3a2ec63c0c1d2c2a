"""Haiku: ``hk.LSTM``, ``hk.GRU`` and ``hk.VanillaRNN`` parameter dicts.

``hk.LSTM`` keeps one ``linear`` on ``[x, h]`` (rows: inputs then hidden) with
blocks i, g, f, o and adds 1 to the forget pre-activation inside the cell;
the conversion folds that +1 into ``b``. ``hk.GRU`` is jrnn's reset-before GRU
exactly (blocks z, r, a). ``hk.VanillaRNN`` is ``relu(x W_i + b_i + h W_h + b_h)``.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import IDENTITY, Layout, make_params, refuse, to_jrnn

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
