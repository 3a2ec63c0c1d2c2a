"""Exact gate-block bookkeeping shared by every converter.

Peers store the same gate blocks in other orders, transposed, with split
biases, or with the GRU update gate meaning "keep the old state" instead of
"take the candidate". Each difference is a permutation, a transpose, a sum or
a negation (σ(−a) = 1 − σ(a)), all exact in floating point. A converter
describes its peer with a :class:`Layout` and calls :func:`to_jrnn` /
:func:`from_jrnn`; nothing else touches gate order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import jrnn
from jrnn.cells import Cell


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a peer lays out one cell's gate blocks.

    Attributes:
      order: ``order[k]`` is the peer's block index of jrnn block ``k``
        (jrnn: LSTM i, f, g, o; GRU z, r, n).
      negate: jrnn block indices whose pre-activation the peer stores negated
        (the GRU update gate of PyTorch, Keras, Flax and Equinox).
    """

    order: tuple[int, ...]
    negate: tuple[int, ...] = ()


IDENTITY = {1: Layout((0,)), 3: Layout((0, 1, 2)), 4: Layout((0, 1, 2, 3))}
# PyTorch / Flax / Equinox GRU: blocks r, z, n and h = (1 - z) n + z h.
RZN_KEEP_GATE = Layout((1, 0, 2), negate=(0,))
# Keras GRU: blocks z, r, h and h = z h + (1 - z) h̃.
ZRN_KEEP_GATE = Layout((0, 1, 2), negate=(0,))


def _blocks(array, n):
    return np.split(np.asarray(array), n, axis=-1)


def to_jrnn(layout: Layout, *arrays):
    """Peer arrays ``(..., G*H)`` in peer block order -> jrnn order, negations applied."""
    out = []
    for array in arrays:
        blocks = _blocks(array, len(layout.order))
        mine = [(-blocks[src] if k in layout.negate else blocks[src]) for k, src in enumerate(layout.order)]
        out.append(np.concatenate(mine, axis=-1))
    return out if len(out) != 1 else out[0]


def from_jrnn(layout: Layout, *arrays):
    """jrnn arrays ``(..., G*H)`` -> the peer's block order and signs."""
    out = []
    for array in arrays:
        blocks = _blocks(array, len(layout.order))
        theirs = [None] * len(blocks)
        for k, src in enumerate(layout.order):
            theirs[src] = -blocks[k] if k in layout.negate else blocks[k]
        out.append(np.concatenate(theirs, axis=-1))
    return out if len(out) != 1 else out[0]


def make_params(cell: Cell, w_x, w_h, b, b_hn=None, dtype=None, w_hr=None):
    """The cell's params NamedTuple from NumPy arrays (cast to ``dtype`` if given);
    ``w_hr``: a projected LSTM's projection."""
    import jax.numpy as jnp

    def arr(a):
        return None if a is None else jnp.asarray(a, dtype)

    fields = {"w_x": arr(w_x), "w_h": arr(w_h), "b": arr(b)}
    if isinstance(cell, jrnn.GRUCell):
        fields["b_hn"] = arr(b_hn) if cell.reset_after else None
    if isinstance(cell, jrnn.ProjectedLSTMCell):
        fields["w_hr"] = arr(w_hr)
    params = cell.params_type(**fields)
    cell.check_params(params)
    return params


def combine(layers, dropout: float = 0.0):
    """Per-layer ``(layer, params)`` pairs -> ``(network, params)``.

    One layer of one direction stays a bare cell; otherwise :func:`jrnn.stacked`.
    """
    if len(layers) == 1 and isinstance(layers[0][0], Cell):
        return layers[0]
    return jrnn.stacked([l for l, _ in layers], dropout=dropout), tuple(p for _, p in layers)


TEXTBOOK_CELLS = (jrnn.SimpleRNNCell, jrnn.LSTMCell, jrnn.GRUCell)


def split_layers(network, params, library: str, also: tuple[type, ...] = ()):
    """Inverse of :func:`combine`: ``[(layer, params), ...]`` for a cell, a bidirectional or a stack;
    ``also``: cell types ``library`` has besides the textbook three.

    Raises:
      TypeError: a layer that is not a cell or bidirectional layer; params of the wrong type.
      ValueError: a cell ``library`` has no equivalent of (minGRU, minLSTM); params of the
        wrong shapes or number of layers.
    """
    layers = network.layers if isinstance(network, jrnn.Stacked) else (network,)
    for layer in layers:
        if not isinstance(layer, (Cell, jrnn.Bidirectional)):
            raise TypeError(
                f"network: expected jrnn cells, bidirectional or stacked layers, got {type(layer).__name__}"
            )
        for cell in (layer.forward, layer.backward) if isinstance(layer, jrnn.Bidirectional) else (layer,):
            if not isinstance(cell, TEXTBOOK_CELLS + also):
                names = ", ".join(c.__name__ for c in TEXTBOOK_CELLS + also)
                refuse(f"network: {library} has no {type(cell).__name__}; cells that convert: {names}")
    network.check_params(params)
    return list(zip(layers, params)) if isinstance(network, jrnn.Stacked) else [(network, params)]


def single_cell(cell, params, library: str, supported: tuple[type, ...]):
    """Check ``cell`` and ``params`` for a converter whose peer has single cells only.

    Returns the params as NumPy arrays by field name (``None`` fields left out).

    Raises:
      TypeError: a stacked or bidirectional layer, or not a jrnn cell; params of another cell type.
      ValueError: a cell type not in ``supported``; params of the wrong shapes.
    """
    if isinstance(cell, (jrnn.Stacked, jrnn.Bidirectional)):
        raise TypeError(
            f"cell: {library} converts one cell at a time, got {type(cell).__name__}; convert its cells one by "
            "one (stacked: network.layers[k] with params[k]; bidirectional: layer.forward with params.forward, "
            "layer.backward with params.backward)"
        )
    if not isinstance(cell, Cell):
        raise TypeError(f"cell: expected a jrnn cell, got {type(cell).__name__}")
    if not isinstance(cell, supported):
        names = ", ".join(c.__name__ for c in supported)
        refuse(f"cell: {library} has no {type(cell).__name__}; cells that convert: {names}")
    cell.check_params(params)
    return {name: np.asarray(value) for name, value in params._asdict().items() if value is not None}


def require_gru_variant(cell, reset_after: bool, library: str) -> None:
    """Refuse a GRU of the variant ``library`` lacks (it has only ``reset_after``'s)."""
    if isinstance(cell, jrnn.GRUCell) and cell.reset_after != reset_after:
        has = "reset-after" if reset_after else "reset-before"
        refuse(f"cell: {library} has only the {has} GRU; a jrnn.gru(H, reset_after={cell.reset_after}) computes "
               "a different function and cannot be converted exactly")


def refuse(message: str):
    raise ValueError(message)
