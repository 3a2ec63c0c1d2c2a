"""PyTorch: ``torch.nn.RNN``, ``LSTM``, ``GRU`` and their ``*Cell`` classes.

PyTorch stores ``W_ih (G*H, I)``, ``W_hh (G*H, H)`` and two biases
``b_ih + b_hh``; LSTM blocks i, f, g, o (jrnn's order); GRU blocks r, z, n with
``h = (1 − z) ⊙ n + z ⊙ h``, the reset-after form. jrnn keeps the bias sum, so
``to_torch`` writes it to ``b_ih`` and zeros to ``b_hh`` (except the GRU's
``b_hn``): the round trip jrnn -> torch -> jrnn is exact. An ``nn.LSTM`` with
``proj_size=P`` adds ``W_hr (P, H)`` (``h = W_hr (o ⊙ tanh c)``) and has
``W_hh (4H, P)``: :class:`jrnn.ProjectedLSTMCell` (``jrnn.lstm(H, proj_size=P)``).
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import (
    IDENTITY,
    RZN_KEEP_GATE,
    combine,
    from_jrnn,
    make_params,
    refuse,
    require_gru_variant,
    split_layers,
    to_jrnn,
)

_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # a layer's are these + "_l{k}" (+ "_reverse")

def _kind(module):
    from torch import nn

    for kinds, kind in (((nn.LSTM, nn.LSTMCell), "lstm"), ((nn.GRU, nn.GRUCell), "gru"),
                        ((nn.RNN, nn.RNNCell), "simple_rnn")):
        if isinstance(module, kinds):
            return kind, isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell))
    raise TypeError(
        "module: expected torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
        f"got {type(module).__name__}"
    )


def _make_cell(kind, hidden_size, module):
    if kind == "lstm":
        return jrnn.lstm(hidden_size, proj_size=getattr(module, "proj_size", 0) or None)
    if kind == "gru":
        return jrnn.gru(hidden_size, reset_after=True)
    return jrnn.simple_rnn(hidden_size, activation=module.nonlinearity)


def _layout(cell):
    return RZN_KEEP_GATE if isinstance(cell, jrnn.GRUCell) else IDENTITY[cell.num_blocks]


def _np(tensor):
    return None if tensor is None else tensor.detach().cpu().numpy()


def _convert(cell, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    H, G = cell.hidden_size, cell.num_blocks
    b_ih = np.zeros(G * H, w_ih.dtype) if b_ih is None else b_ih
    b_hh = np.zeros(G * H, w_ih.dtype) if b_hh is None else b_hh
    b_hn = None
    if isinstance(cell, jrnn.GRUCell):  # b_hn stays inside the reset product
        b_hn, b_hh = b_hh[2 * H :], np.concatenate([b_hh[: 2 * H], np.zeros(H, b_hh.dtype)])
    w_x, w_h, b = to_jrnn(_layout(cell), w_ih.T, w_hh.T, b_ih + b_hh)
    return make_params(cell, w_x, w_h, b, b_hn, dtype=w_ih.dtype, w_hr=None if w_hr is None else w_hr.T)


def from_torch(module):
    """Convert a PyTorch recurrent module to ``(network, params)``.

    ``nn.RNN``/``LSTM``/``GRU`` with one layer and one direction and the
    ``*Cell`` classes give a jrnn cell; more layers give :func:`jrnn.stacked`
    (with the module's inter-layer ``dropout``) and ``bidirectional=True``
    gives :func:`jrnn.bidirectional` layers. A PyTorch GRU becomes
    ``jrnn.gru(H, reset_after=True)``, an LSTM with ``proj_size=P``
    ``jrnn.lstm(H, proj_size=P)``. ``batch_first`` only changes the layout:
    pass ``time_major=not batch_first`` to :func:`jrnn.scan`.

    Raises:
      TypeError: not a PyTorch recurrent module.
    """
    kind, is_cell = _kind(module)
    cell = _make_cell(kind, module.hidden_size, module)
    if is_cell:
        return cell, _convert(cell, *(_np(getattr(module, n, None)) for n in _WEIGHTS))
    weights = _WEIGHTS + (("weight_hr",) if isinstance(cell, jrnn.ProjectedLSTMCell) else ())
    layers = []
    for k in range(module.num_layers):
        directions = []
        for suffix in ("", "_reverse")[: 1 + module.bidirectional]:
            names = tuple(f"{n}_l{k}{suffix}" for n in weights)
            directions.append(_convert(cell, *(_np(getattr(module, n, None)) for n in names)))
        if module.bidirectional:
            layers.append((jrnn.bidirectional(cell, cell), jrnn.BidirectionalParams(*directions)))
        else:
            layers.append((cell, directions[0]))
    return combine(layers, dropout=float(module.dropout))


def _torch_weights(cell, params):
    """jrnn params -> ``(W_ih, W_hh, b_ih, b_hh)`` (and ``W_hr`` of a projected LSTM)
    as NumPy arrays in PyTorch layout."""
    require_gru_variant(cell, True, "PyTorch")
    H = cell.hidden_size
    w_x, w_h, b = from_jrnn(_layout(cell), *(np.asarray(a) for a in params[:3]))
    b_hh = np.zeros_like(b)
    if isinstance(cell, jrnn.GRUCell):
        b_hh[2 * H :] = np.asarray(params.b_hn)
    projection = (np.asarray(params.w_hr).T,) if isinstance(cell, jrnn.ProjectedLSTMCell) else ()
    return (w_x.T, w_h.T, b, b_hh, *projection)


def _module_class(cell, as_cell):
    from torch import nn

    table = {"lstm": (nn.LSTM, nn.LSTMCell), "gru": (nn.GRU, nn.GRUCell), "simple_rnn": (nn.RNN, nn.RNNCell),
             "projected_lstm": (nn.LSTM, None)}
    return table[cell.kind][as_cell]


def _kwargs(cell):
    if isinstance(cell, jrnn.ProjectedLSTMCell):
        if cell.proj_size >= cell.hidden_size:
            refuse(f"network: torch.nn.LSTM needs proj_size < hidden_size, got proj_size={cell.proj_size} "
                   f"and hidden_size={cell.hidden_size}")
        return {"proj_size": cell.proj_size}
    return {"nonlinearity": cell.activation} if isinstance(cell, jrnn.SimpleRNNCell) else {}


def to_torch(network, params, *, batch_first: bool = True, as_cell: bool = False):
    """Build the PyTorch module that computes what ``network`` computes.

    Args:
      network: a jrnn cell, a :func:`jrnn.bidirectional` layer or a
        :func:`jrnn.stacked` of layers that all use the same cell configuration.
      params: its params.
      batch_first: passed to ``nn.LSTM`` etc. (jrnn's default layout is batch-first).
      as_cell: for a bare cell, return ``nn.LSTMCell``/``GRUCell``/``RNNCell``.

    Raises:
      ValueError: a reset-before GRU, a minGRU/minLSTM, mixed cell types or sizes, or a
        merge other than concat; params of the wrong shapes.
      TypeError: params of another cell type.
    """

    layers = split_layers(network, params, "PyTorch", also=(jrnn.ProjectedLSTMCell,))
    first = layers[0][0]
    base = first.forward if isinstance(first, jrnn.Bidirectional) else first
    if as_cell:
        if not isinstance(network, jrnn.Cell):
            refuse(f"as_cell: only a single jrnn cell converts to a torch *Cell, got {type(network).__name__}")
        if isinstance(network, jrnn.ProjectedLSTMCell):
            refuse("as_cell: torch.nn.LSTMCell has no proj_size; convert a projected LSTM to torch.nn.LSTM")
        module = _module_class(base, True)(params.w_x.shape[0], base.hidden_size, **_kwargs(base))
        _load(module, _WEIGHTS, _torch_weights(base, params))
        return module
    bidirectional = isinstance(first, jrnn.Bidirectional)
    for layer, _ in layers:
        cells = (layer.forward, layer.backward) if isinstance(layer, jrnn.Bidirectional) else (layer,)
        if isinstance(layer, jrnn.Bidirectional) != bidirectional or any(c != base for c in cells):
            refuse("network: torch.nn modules need every layer and direction to use the same cell "
                   f"configuration ({base}), got {layer}")
        if isinstance(layer, jrnn.Bidirectional) and layer.merge != "concat":
            refuse(f"network: torch.nn bidirectional modules concatenate directions, got merge={layer.merge!r}")
    input_size = (layers[0][1].forward if bidirectional else layers[0][1]).w_x.shape[0]
    module = _module_class(base, False)(
        input_size, base.hidden_size, num_layers=len(layers), bidirectional=bidirectional,
        batch_first=batch_first, dropout=getattr(network, "dropout", 0.0), **_kwargs(base),
    )
    for k, (layer, layer_params) in enumerate(layers):
        directions = (layer_params.forward, layer_params.backward) if bidirectional else (layer_params,)
        for suffix, p in zip(("", "_reverse"), directions):
            arrays = _torch_weights(base, p)
            names = tuple(f"{n}_l{k}{suffix}" for n in (*_WEIGHTS, "weight_hr")[: len(arrays)])
            _load(module, names, arrays)
    return module


def _load(module, names, arrays):
    import torch

    dtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}.get(arrays[0].dtype)
    if dtype is None:
        refuse(f"params: PyTorch conversion supports float32 and float64, got {arrays[0].dtype}")
    module.to(dtype)
    with torch.no_grad():
        for name, array in zip(names, arrays):
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(array)))
