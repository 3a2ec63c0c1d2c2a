"""Exact weight conversion between jrnn and PyTorch, Keras, Flax, Equinox and Haiku.

Every converter returns jrnn cells (or layers) and params that compute the
same function as the peer (``from_*``), or the peer's module or params that
compute the same function as jrnn (``to_*``), and refuses with ``ValueError`` where no exact
conversion exists. The peer libraries are imported only when called.

=========  ======================================  ===============================
library    classes                                 functions
=========  ======================================  ===============================
PyTorch    nn.RNN/LSTM/GRU (layers, bidirectional)  ``from_torch``, ``to_torch``
           and nn.RNNCell/LSTMCell/GRUCell
Keras 3    SimpleRNN, LSTM, GRU, Bidirectional      ``from_keras``, ``to_keras``
Flax       linen and NNX LSTMCell,                  ``from_flax``, ``to_flax``
           OptimizedLSTMCell, GRUCell, SimpleCell
Equinox    eqx.nn.LSTMCell, eqx.nn.GRUCell          ``from_equinox``, ``to_equinox``
Haiku      hk.LSTM, hk.GRU, hk.VanillaRNN           ``from_haiku``, ``to_haiku``
=========  ======================================  ===============================
"""

from jrnn.interop._equinox import from_equinox, to_equinox
from jrnn.interop._flax import carry_from_flax, carry_to_flax, from_flax, to_flax
from jrnn.interop._haiku import from_haiku, to_haiku
from jrnn.interop._keras import from_keras, to_keras
from jrnn.interop._torch import from_torch, to_torch

__all__ = ["carry_from_flax", "carry_to_flax", "from_equinox", "from_flax", "from_haiku", "from_keras",
           "from_torch", "to_equinox", "to_flax", "to_haiku", "to_keras", "to_torch"]
