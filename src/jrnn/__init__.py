"""jrnn: exact, fast recurrent networks (SimpleRNN, LSTM, GRU) as pure JAX functions.

>>> import jax, jax.numpy as jnp, jrnn
>>> cell = jrnn.lstm(8)
>>> params = cell.init(jax.random.key(0), 3)
>>> carry, ys = jrnn.scan(cell, params, jnp.ones((2, 5, 3)))
>>> ys.shape
(2, 5, 8)
"""

from jrnn import initializers
from jrnn.cells import (
    Cell,
    GRUCell,
    GRUParams,
    LSTMCell,
    LSTMParams,
    LSTMState,
    ProjectedLSTMCell,
    ProjectedLSTMParams,
    SimpleRNNCell,
    SimpleRNNParams,
    count_params,
    from_config,
    gru,
    lstm,
    simple_rnn,
)
from jrnn.layers import Bidirectional, BidirectionalParams, Stacked, bidirectional, stacked
from jrnn.min_cells import MinGRUCell, MinGRUParams, MinLSTMCell, MinLSTMParams, min_gru, min_lstm
from jrnn.scan import scan

__version__ = "0.1.0"

__all__ = [
    "Bidirectional",
    "BidirectionalParams",
    "Cell",
    "GRUCell",
    "GRUParams",
    "LSTMCell",
    "LSTMParams",
    "LSTMState",
    "MinGRUCell",
    "MinGRUParams",
    "MinLSTMCell",
    "MinLSTMParams",
    "ProjectedLSTMCell",
    "ProjectedLSTMParams",
    "SimpleRNNCell",
    "SimpleRNNParams",
    "Stacked",
    "bidirectional",
    "count_params",
    "from_config",
    "gru",
    "initializers",
    "lstm",
    "min_gru",
    "min_lstm",
    "scan",
    "simple_rnn",
    "stacked",
]


def __getattr__(name):
    # Submodules with heavier imports load on first use: jrnn.data, jrnn.train, ...
    import importlib

    if name in {"data", "datasets", "train", "checkpoint", "forecast", "diagnostics", "interop", "linen", "nnx"}:
        return importlib.import_module(f"jrnn.{name}")
    raise AttributeError(f"module 'jrnn' has no attribute {name!r}")
