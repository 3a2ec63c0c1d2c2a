"""Flax cells, linen and NNX: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``,
and the layers around them: ``RNN`` (one cell over a sequence) and
``Bidirectional`` (:func:`jrnn.bidirectional`).

Flax kernels are x @ w like jrnn's. Linen keeps one ``Dense`` per gate
(``ii``, ``if``, ``ig``, ``io``, ``hi``, ...); NNX's ``OptimizedLSTMCell``,
``GRUCell`` and ``SimpleCell`` keep fused ``dense_i``/``dense_h``. Flax GRUs
are reset-after with ``h = (1 − z) ⊙ n + z ⊙ h`` (blocks r, z, n); NNX's
``GRUCell`` has no ``b_hn``, which is exactly ``b_hn = 0``. The Flax LSTM
carry is ``(c, h)``; :func:`carry_from_flax` turns it into ``LSTMState(h, c)``
and :func:`carry_to_flax` back. Flax has no reset-before GRU, so :func:`to_flax`
refuses ``jrnn.gru(H)`` (``reset_after=False``). ``nn.Bidirectional`` runs its
backward RNN with ``reverse=True, keep_order=True``, as jrnn's backward cell
runs, padding-aware, with outputs at their own positions; its default
``merge_fn`` concatenates, and jrnn's other merges travel as ``merge_fn``.
"""

from __future__ import annotations

import numpy as np

import jrnn
from jrnn.interop._blocks import (
    IDENTITY,
    RZN_KEEP_GATE,
    from_jrnn,
    make_params,
    refuse,
    require_gru_variant,
    single_cell,
    to_jrnn,
)
from jrnn.layers import MERGE_MODES, BidirectionalParams


def carry_from_flax(carry):
    """Flax LSTM carry ``(c, h)`` -> ``jrnn.LSTMState(h, c)``; other carries unchanged."""
    if isinstance(carry, tuple) and len(carry) == 2:
        c, h = carry
        return jrnn.LSTMState(h, c)
    return carry


def carry_to_flax(carry):
    """``jrnn.LSTMState(h, c)`` -> Flax's LSTM carry ``(c, h)``; other carries unchanged."""
    if isinstance(carry, jrnn.LSTMState):
        return carry.c, carry.h
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


def _flax_layers():
    """``(RNN classes, Bidirectional classes)``, linen's then NNX's."""
    import flax.linen as nn
    from flax import nnx

    return (nn.RNN, nnx.RNN), (nn.Bidirectional, nnx.Bidirectional)


def _default_merge(bidirectional_class):
    """The ``merge_fn`` a Flax ``Bidirectional`` class uses unless told (concatenation)."""
    import inspect

    from flax import nnx

    if issubclass(bidirectional_class, nnx.Module):
        return inspect.signature(bidirectional_class.__init__).parameters["merge_fn"].default
    return bidirectional_class.merge_fn


def _linen_entry(params, name, what):
    """``params[name]`` of a linen layer's params (or whole variables), refused by name if missing."""
    if params is None:
        refuse(f"params: a linen {what} needs its params (variables['params'])")
    params = params.get("params", params)
    if name not in params:
        refuse(f"params: expected the {what}'s params with an entry {name!r}, got entries {sorted(params)}")
    return params[name]


def _is_linen(module) -> bool:
    from flax import nnx

    return not isinstance(module, nnx.Module)


def _from_rnn(rnn, params):
    """``(cell, params)`` of a Flax ``RNN``'s cell; ``params``: a linen RNN's params."""
    return from_flax(rnn.cell, _linen_entry(params, "cell", "RNN") if _is_linen(rnn) else None)


def _from_bidirectional(module, params):
    """``(jrnn.bidirectional(...), BidirectionalParams)`` of a Flax ``Bidirectional`` of two RNNs."""
    rnn_classes, _ = _flax_layers()
    merges = {_default_merge(type(module)): "concat", **{fn: name for name, fn in MERGE_MODES.items()}}
    if module.merge_fn not in merges:
        refuse(f"module: merge_fn {getattr(module.merge_fn, '__name__', module.merge_fn)} has no jrnn "
               f"equivalent; jrnn.bidirectional merges by {', '.join(MERGE_MODES)}")
    directions = []
    for name in ("forward_rnn", "backward_rnn"):
        rnn = getattr(module, name)
        if not isinstance(rnn, rnn_classes):
            raise TypeError(f"module.{name}: expected a Flax RNN, got {type(rnn).__name__}")
        directions.append(_from_rnn(rnn, _linen_entry(params, name, "Bidirectional") if _is_linen(module) else None))
    (forward, p_forward), (backward, p_backward) = directions
    layer = jrnn.bidirectional(forward, backward, merge=merges[module.merge_fn])
    return layer, BidirectionalParams(p_forward, p_backward)


def from_flax(module, params=None):
    """Convert a Flax cell or layer (and, for linen, its params) to ``(cell, params)``.

    Args:
      module: a ``flax.linen`` or ``flax.nnx`` cell (``LSTMCell``,
        ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``), an ``RNN`` of one
        (its cell), or a ``Bidirectional`` of two RNNs (a
        :func:`jrnn.bidirectional` layer and its ``BidirectionalParams``).
      params: linen only: ``variables["params"]`` (or the whole variables dict).

    Raises:
      TypeError: not a Flax cell or layer of them.
      ValueError: non-default gate/activation functions, a residual SimpleCell,
        a lone reversed ``RNN``, a ``merge_fn`` jrnn has not got.
    """
    rnn_classes, bidirectional_classes = _flax_layers()
    if isinstance(module, bidirectional_classes):
        return _from_bidirectional(module, params)
    if isinstance(module, rnn_classes):
        if module.reverse:
            refuse("module: a reversed RNN alone has no jrnn layer; convert module.cell and run it with "
                   "jrnn.scan(..., reverse=True), or convert the Bidirectional it belongs to")
        return _from_rnn(module, params)
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


def _classes(kind):
    """The linen and NNX classes a jrnn cell of ``kind`` converts to (linen's default first)."""
    import flax.linen as nn
    from flax import nnx

    return {"lstm": (nn.LSTMCell, nn.OptimizedLSTMCell, nnx.LSTMCell, nnx.OptimizedLSTMCell),
            "gru": (nn.GRUCell, nnx.GRUCell), "simple_rnn": (nn.SimpleCell, nnx.SimpleCell)}[kind]


def _per_gate(cell, arrays):
    """jrnn arrays -> Flax's per-gate tree ``{"i<gate>": {"kernel", "bias"?}, "h<gate>": ...}``.

    Flax puts the LSTM bias on the hidden side, the GRU's r/z/n biases on the
    input side and ``b_hn`` on ``hn``, the SimpleRNN bias on the input side.
    """
    w_x, w_h, b = arrays["w_x"], arrays["w_h"], arrays["b"]
    if isinstance(cell, jrnn.SimpleRNNCell):
        return {"i": {"kernel": w_x, "bias": b}, "h": {"kernel": w_h}}
    if isinstance(cell, jrnn.LSTMCell):
        tree = {}
        for g, wx, wh, bg in zip("ifgo", *(np.split(a, 4, axis=-1) for a in (w_x, w_h, b))):
            tree["i" + g], tree["h" + g] = {"kernel": wx}, {"kernel": wh, "bias": bg}
        return tree
    w_x, w_h, b = from_jrnn(RZN_KEEP_GATE, w_x, w_h, b)
    tree = {}
    for g, wx, wh, bg in zip("rzn", *(np.split(a, 3, axis=-1) for a in (w_x, w_h, b))):
        tree["i" + g], tree["h" + g] = {"kernel": wx, "bias": bg}, {"kernel": wh}
    tree["hn"]["bias"] = arrays["b_hn"]
    return tree


def _fused(cell, tree):
    """Per-gate tree -> NNX's fused ``{"dense_i": ..., "dense_h": ...}`` (gates concatenated)."""
    gates = {"lstm": "ifgo", "gru": "rzn", "simple_rnn": [""]}[cell.kind]
    fused = {}
    for side in "ih":
        entries = [tree[side + g] for g in gates]
        fused["dense_" + side] = {"kernel": np.concatenate([e["kernel"] for e in entries], axis=-1)}
        if all("bias" in e for e in entries):
            fused["dense_" + side]["bias"] = np.concatenate([e["bias"] for e in entries])
    if cell.kind == "gru" and np.any(tree["hn"]["bias"] != 0):  # NNX's GRUCell has no b_hn
        refuse("params.b_hn: flax.nnx.GRUCell has no bias inside the reset product, so only b_hn = 0 "
               "converts exactly; got nonzero values (flax.linen.GRUCell has it)")
    return fused


def to_flax(cell, params, module_class=None):
    """Build the Flax cell (or ``Bidirectional`` layer) that computes what ``cell`` computes.

    Args:
      cell: ``jrnn.lstm(H)``, ``jrnn.gru(H, reset_after=True)`` or
        ``jrnn.simple_rnn(H)`` (tanh or relu), or a :func:`jrnn.bidirectional`
        layer of them.
      params: its params.
      module_class: the Flax cell class to build, linen or NNX: ``LSTMCell`` or
        ``OptimizedLSTMCell`` for an LSTM, ``GRUCell``, ``SimpleCell``. Default: the
        linen class (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.SimpleCell``). For a
        bidirectional layer, one class for both directions or a pair
        ``(forward_class, backward_class)``.

    Returns:
      linen: ``(module, variables)``, to run as ``module.apply(variables, carry, x_t)``
      or ``nn.RNN(module).apply(variables_of_the_rnn, xs)`` (its params are
      ``{"cell": variables["params"]}``); NNX: the module, holding the params.
      The LSTM carry is Flax's ``(c, h)`` (:func:`carry_to_flax`). A bidirectional
      layer gives ``Bidirectional(RNN(forward cell), RNN(backward cell))`` of the
      same library, run as ``module.apply(variables, xs)`` (linen) or ``module(xs)``;
      with ``seq_lengths`` it computes jrnn's outputs at the valid steps (jrnn
      writes zeros past each length, Flax leaves other values there).

    Raises:
      ValueError: a reset-before GRU or minGRU/minLSTM (Flax has none), a nonzero
        ``b_hn`` for ``nnx.GRUCell`` (which has none); params of the wrong shapes.
      TypeError: a stacked layer, a ``module_class`` of another cell type; params
        of another cell type.
    """
    if isinstance(cell, jrnn.Bidirectional):
        return _to_bidirectional(cell, params, module_class)
    arrays = single_cell(cell, params, "Flax", (jrnn.LSTMCell, jrnn.GRUCell, jrnn.SimpleRNNCell))
    require_gru_variant(cell, True, "Flax")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    classes = _classes(cell.kind)
    module_class = classes[0] if module_class is None else module_class
    if module_class not in classes:
        names = ", ".join(f"{c.__module__.split('.')[1]}.{c.__name__}" for c in classes)
        raise TypeError(f"module_class: expected one of {names} for a {cell.kind} cell, "
                        f"got {getattr(module_class, '__name__', module_class)!r}")
    I, H, dtype = arrays["w_x"].shape[0], cell.hidden_size, arrays["w_x"].dtype
    options = {"param_dtype": dtype}
    if isinstance(cell, jrnn.SimpleRNNCell):
        options["activation_fn"] = {"tanh": jnp.tanh, "relu": jax.nn.relu}[cell.activation]
    tree = _per_gate(cell, arrays)
    if not issubclass(module_class, nnx.Module):
        variables = {"params": {name: {k: jnp.asarray(v) for k, v in entry.items()} for name, entry in tree.items()}}
        return module_class(features=H, **options), variables
    module = module_class(I, H, rngs=nnx.Rngs(0), **options)
    if hasattr(module, "dense_h"):
        tree = _fused(cell, tree)
    for name, entry in tree.items():
        linear = getattr(module, name if name != "if" else "if_")
        for k, value in entry.items():
            getattr(linear, k)[...] = jnp.asarray(value)
    return module


def _to_bidirectional(layer, params, module_class):
    """:func:`to_flax` of a :func:`jrnn.bidirectional` layer: a Flax ``Bidirectional`` of two ``RNN``s."""
    import flax.linen as nn
    from flax import nnx

    layer.check_params(params)
    classes = module_class if isinstance(module_class, tuple) else (module_class, module_class)
    if len(classes) != 2:
        raise TypeError(f"module_class: expected a Flax cell class or a (forward, backward) pair, got {module_class}")
    forward = to_flax(layer.forward, params.forward, classes[0])
    backward = to_flax(layer.backward, params.backward, classes[1])
    if isinstance(forward, tuple) != isinstance(backward, tuple):
        raise TypeError(f"module_class: expected two linen or two NNX classes, got {module_class}")
    linen = isinstance(forward, tuple)
    bidirectional_class = nn.Bidirectional if linen else nnx.Bidirectional
    merge_fn = _default_merge(bidirectional_class) if layer.merge == "concat" else MERGE_MODES[layer.merge]
    if not linen:
        return nnx.Bidirectional(nnx.RNN(forward), nnx.RNN(backward), merge_fn=merge_fn)
    (f_module, f_variables), (b_module, b_variables) = forward, backward
    variables = {"params": {"forward_rnn": {"cell": f_variables["params"]},
                            "backward_rnn": {"cell": b_variables["params"]}}}
    return nn.Bidirectional(nn.RNN(f_module), nn.RNN(b_module), merge_fn=merge_fn), variables
