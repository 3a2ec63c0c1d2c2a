"""Flax cells, linen and NNX: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``.

Flax kernels are x @ w like jrnn's. Linen keeps one ``Dense`` per gate
(``ii``, ``if``, ``ig``, ``io``, ``hi``, ...); NNX's ``OptimizedLSTMCell``,
``GRUCell`` and ``SimpleCell`` keep fused ``dense_i``/``dense_h``. Flax GRUs
are reset-after with ``h = (1 − z) ⊙ n + z ⊙ h`` (blocks r, z, n); NNX's
``GRUCell`` has no ``b_hn``, which is exactly ``b_hn = 0``. The Flax LSTM
carry is ``(c, h)``; :func:`carry_from_flax` turns it into ``LSTMState(h, c)``
and :func:`carry_to_flax` back. Flax has no reset-before GRU, so :func:`to_flax`
refuses ``jrnn.gru(H)`` (``reset_after=False``).
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
    """Build the Flax cell that computes what ``cell`` computes.

    Args:
      cell: ``jrnn.lstm(H)``, ``jrnn.gru(H, reset_after=True)`` or
        ``jrnn.simple_rnn(H)`` (tanh or relu).
      params: its params.
      module_class: the Flax class to build, linen or NNX: ``LSTMCell`` or
        ``OptimizedLSTMCell`` for an LSTM, ``GRUCell``, ``SimpleCell``. Default: the
        linen class (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.SimpleCell``).

    Returns:
      linen: ``(module, variables)``, to run as ``module.apply(variables, carry, x_t)``
      or ``nn.RNN(module).apply(variables_of_the_rnn, xs)`` (its params are
      ``{"cell": variables["params"]}``); NNX: the module, holding the params.
      The LSTM carry is Flax's ``(c, h)`` (:func:`carry_to_flax`).

    Raises:
      ValueError: a reset-before GRU or minGRU/minLSTM (Flax has none), a nonzero
        ``b_hn`` for ``nnx.GRUCell`` (which has none); params of the wrong shapes.
      TypeError: a stacked or bidirectional layer, a ``module_class`` of another
        cell type; params of another cell type.
    """
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
