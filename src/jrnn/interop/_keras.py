"""Keras 3: ``SimpleRNN``, ``LSTM``, ``GRU`` (both ``reset_after``) and ``Bidirectional``.

Keras stores ``kernel (I, G*H)`` and ``recurrent_kernel (H, G*H)`` in jrnn's
x @ w layout; LSTM blocks i, f, c, o (jrnn's order); GRU blocks z, r, h with
``h = z ⊙ h_{t-1} + (1 − z) ⊙ h̃`` (the update block is negated on import) and,
with ``reset_after=True``, a bias of shape ``(2, 3H)``: row 0 for the input
side, row 1 for the recurrent side.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import IDENTITY, ZRN_KEEP_GATE, combine, from_jrnn, make_params, refuse, split_layers, to_jrnn

MERGES = {"concat": "concat", "sum": "sum", "mul": "product", "ave": "mean"}


def _layout(cell):
    return ZRN_KEEP_GATE if isinstance(cell, jrnn.GRUCell) else IDENTITY[cell.num_blocks]


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


def _layer_kind(layer):
    import keras

    for cls, kind in ((keras.layers.LSTM, "lstm"), (keras.layers.GRU, "gru"), (keras.layers.SimpleRNN, "simple_rnn")):
        if isinstance(layer, cls):
            return kind
    raise TypeError(f"layer: expected keras.layers.SimpleRNN, LSTM, GRU or Bidirectional, got {type(layer).__name__}")


def _from_layer(layer):
    kind = _layer_kind(layer)
    if not layer.built:
        refuse(f"layer: {layer.name} is not built yet; call it on an input or build() it first")
    cell_cfg = layer.cell
    activation = _activation_name(cell_cfg.activation)
    if kind == "simple_rnn":
        if activation not in ("tanh", "relu"):
            refuse(f"layer: activation {activation!r} has no jrnn equivalent (tanh or relu)")
        cell = jrnn.simple_rnn(cell_cfg.units, activation=activation)
    else:
        recurrent = _activation_name(cell_cfg.recurrent_activation)
        if (activation, recurrent) != ("tanh", "sigmoid"):
            refuse(f"layer: activations ({activation!r}, {recurrent!r}) differ from jrnn's (tanh, sigmoid)")
        cell = (jrnn.lstm(cell_cfg.units) if kind == "lstm"
                else jrnn.gru(cell_cfg.units, reset_after=bool(cell_cfg.reset_after)))
    weights = layer.get_weights()
    kernel, recurrent_kernel = weights[0], weights[1]
    G, H = cell.num_blocks, cell.hidden_size
    bias_shape = (2, G * H) if getattr(cell, "reset_after", False) else G * H
    bias = weights[2] if cell_cfg.use_bias else np.zeros(bias_shape, kernel.dtype)
    b_hn = None
    if getattr(cell, "reset_after", False):
        b_in, b_rec = bias[0], bias[1]
        b_hn = b_rec[2 * H :]
        bias = b_in + np.concatenate([b_rec[: 2 * H], np.zeros(H, b_rec.dtype)])
    w_x, w_h, b = to_jrnn(_layout(cell), kernel, recurrent_kernel, bias)
    return cell, make_params(cell, w_x, w_h, b, b_hn, dtype=kernel.dtype)


def from_keras(layer):
    """Convert a built Keras recurrent layer to ``(network, params)``.

    ``SimpleRNN``, ``LSTM`` and ``GRU`` give a cell (a Keras GRU keeps its
    ``reset_after``); ``Bidirectional`` gives :func:`jrnn.bidirectional` with
    the matching merge (concat, sum, mul -> product, ave -> mean). A
    ``keras.Sequential`` of such layers gives :func:`jrnn.stacked`.

    Raises:
      TypeError: not a Keras recurrent layer.
      ValueError: activations other than tanh/sigmoid, an unbuilt layer,
        ``merge_mode=None``, or ``go_backwards=True`` outside a ``Bidirectional``.
    """
    import keras

    if isinstance(layer, keras.Sequential):
        return combine([from_keras(sub) for sub in layer.layers])
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in MERGES:
            refuse(f"layer: Bidirectional merge_mode={layer.merge_mode!r} has no jrnn equivalent")
        f_cell, f_params = _from_layer(layer.forward_layer)
        b_cell, b_params = _from_layer(layer.backward_layer)
        network = jrnn.bidirectional(f_cell, b_cell, merge=MERGES[layer.merge_mode])
        return network, jrnn.BidirectionalParams(f_params, b_params)
    if getattr(layer, "go_backwards", False):
        refuse("layer: go_backwards=True has no jrnn cell equivalent (Keras reads the sequence backwards and "
               "returns the outputs in that order); convert it with go_backwards=False and run the cell on "
               "xs[..., ::-1, :], or convert the Bidirectional layer it belongs to")
    return _from_layer(layer)


def _keras_weights(cell, params):
    H = cell.hidden_size
    kernel, recurrent_kernel, bias = from_jrnn(_layout(cell), *(np.asarray(a) for a in params[:3]))
    if getattr(cell, "reset_after", False):
        bias = np.stack([bias, np.concatenate([np.zeros(2 * H, bias.dtype), np.asarray(params.b_hn)])])
    return [kernel, recurrent_kernel, bias]


def _to_layer(cell, params, **kwargs):
    import keras

    options = dict(return_sequences=True, dtype=str(np.asarray(params.w_x).dtype), **kwargs)
    if isinstance(cell, jrnn.LSTMCell):
        layer = keras.layers.LSTM(cell.hidden_size, **options)
    elif isinstance(cell, jrnn.GRUCell):
        layer = keras.layers.GRU(cell.hidden_size, reset_after=cell.reset_after, **options)
    else:
        layer = keras.layers.SimpleRNN(cell.hidden_size, activation=cell.activation, **options)
    return layer


def to_keras(network, params):
    """Build the Keras layer (or ``keras.Sequential``) that computes what ``network`` computes.

    Layers return sequences (``return_sequences=True``), batch-first, like jrnn.

    Raises:
      ValueError: a minGRU/minLSTM (Keras has none); params of the wrong shapes.
      TypeError: an unknown layer type; params of another cell type.
    """
    layers = split_layers(network, params, "Keras")
    import keras

    built = []
    input_size = None
    for layer, layer_params in layers:
        if isinstance(layer, jrnn.Bidirectional):
            inverse = {v: k for k, v in MERGES.items()}
            fwd = _to_layer(layer.forward, layer_params.forward)
            bwd = _to_layer(layer.backward, layer_params.backward, go_backwards=True)
            keras_layer = keras.layers.Bidirectional(fwd, backward_layer=bwd, merge_mode=inverse[layer.merge])
            size = layer_params.forward.w_x.shape[0]
            keras_layer.build((None, None, size))
            fwd_w = _keras_weights(layer.forward, layer_params.forward)
            bwd_w = _keras_weights(layer.backward, layer_params.backward)
            keras_layer.forward_layer.set_weights(fwd_w)
            keras_layer.backward_layer.set_weights(bwd_w)
        else:
            keras_layer = _to_layer(layer, layer_params)
            size = layer_params.w_x.shape[0]
            keras_layer.build((None, None, size))
            keras_layer.set_weights(_keras_weights(layer, layer_params))
        input_size = size if input_size is None else input_size
        built.append(keras_layer)
    if isinstance(network, jrnn.Stacked):
        return keras.Sequential([keras.Input((None, input_size)), *built])
    return built[0]
