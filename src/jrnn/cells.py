"""SimpleRNN, LSTM and GRU cells: the textbook equations as pure functions.

Every cell is a small frozen dataclass that holds static configuration only
(sizes, flags, initialiser); parameters are a NamedTuple of arrays, the carry
is an array (LSTM: :class:`LSTMState`). A cell exposes

* ``init(key, input_size)`` -> params,
* ``initial_carry(batch_shape)`` -> zeros,
* ``project_input(params, x)`` -> ``x @ w_x + b`` for any number of steps at once,
* ``recurrent_step(params, carry, projected_x_t)`` -> ``(carry, h_t)``,
* ``step(params, carry, x_t)`` -> ``(carry, h_t)``, the composition of the two.

The concatenated weight ``W · [h_{t-1}, x_t]`` of the textbook is stored as two
blocks, ``h_{t-1} @ w_h + x_t @ w_x``, gates fused along the last axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import initializers as inits
from jrnn._checks import check_array, check_floating, check_init_args, check_shape
from jrnn._ranks import add_bias
from jrnn._serializable import serializable


@serializable
class SimpleRNNParams(NamedTuple):
    """``w_x (I, H)``, ``w_h (H, H)``, ``b (H,)``."""

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


@serializable
class LSTMParams(NamedTuple):
    """``w_x (I, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``; gate blocks i, f, g, o."""

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


@serializable
class ProjectedLSTMParams(NamedTuple):
    """``w_x (I, 4H)``, ``w_h (P, 4H)``, ``b (4H,)``, ``w_hr (H, P)``; gate blocks i, f, g, o."""

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array
    w_hr: jax.Array


@serializable
class GRUParams(NamedTuple):
    """``w_x (I, 3H)``, ``w_h (H, 3H)``, ``b (3H,)``; blocks z, r, n.

    ``b_hn (H,)`` is the bias inside the reset product when ``reset_after=True``
    and ``None`` otherwise.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array
    b_hn: jax.Array | None = None


@serializable
class LSTMState(NamedTuple):
    """LSTM carry: hidden state ``h`` and cell state ``c``, each ``(*batch, H)``."""

    h: jax.Array
    c: jax.Array


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _describe(carry) -> str:
    """A carry's structure in words, for error messages."""
    if isinstance(carry, LSTMState):
        return "an LSTMState(h, c)"
    if isinstance(carry, (tuple, list)):
        return f"a {type(carry).__name__} of {len(carry)}"
    if hasattr(carry, "shape"):
        return "one array (*batch, hidden_size)"
    return f"the pytree {jax.tree.structure(carry)}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """Shared machinery of the recurrent cells. Use the factories
    :func:`simple_rnn`, :func:`lstm` and :func:`gru` to build one."""

    hidden_size: int
    init_preset: str | inits.Initializer = "default"

    kind: ClassVar[str]
    num_blocks: ClassVar[int]
    params_type: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        # a pytree with no leaves: cells pass through jax.jit, vmap and grad as
        # arguments without static_argnums (jit keys its cache on the cell's hash)
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_static(cls)

    def __post_init__(self):
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int):
            raise TypeError(
                f"hidden_size: expected a positive int, got {type(self.hidden_size).__name__}"
            )
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size: expected a positive int, got {self.hidden_size}")
        inits.resolve(self.init_preset, self.hidden_size)  # validate early

    # -- parameters ---------------------------------------------------------
    @property
    def gate_size(self) -> int:
        """Width ``G*H`` of the fused gate block."""
        return self.num_blocks * self.hidden_size

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...] | None]:
        """Expected shape of every params field (``None``: the field is absent)."""
        return {
            "w_x": (input_size, self.gate_size),
            "w_h": (self.hidden_size, self.gate_size),
            "b": (self.gate_size,),
        }

    def init(self, key: jax.Array, input_size: int, dtype=jnp.float32):
        """Draw parameters for inputs of size ``input_size`` (see :mod:`jrnn.initializers`)."""
        check_init_args(key, input_size, dtype)
        initializer = inits.resolve(self.init_preset, self.hidden_size)
        k_x, k_h, k_b, k_hn = jax.random.split(key, 4)
        shapes = self.param_shapes(input_size)
        # Draw in at least float32 (QR for orthogonal has no bfloat16 kernel), then cast.
        draw = jnp.promote_types(dtype, jnp.float32)
        fields = {
            "w_x": initializer.input_kernel(k_x, shapes["w_x"], draw),
            "w_h": initializer.recurrent_kernel(k_h, shapes["w_h"], draw),
            "b": initializer.bias(k_b, shapes["b"], draw),
        }
        if shapes.get("b_hn") is not None:
            fields["b_hn"] = initializer.recurrent_bias(k_hn, shapes["b_hn"], draw)
        if shapes.get("w_hr") is not None:  # a projection, drawn like an input kernel (with the key no b_hn used)
            fields["w_hr"] = initializer.input_kernel(k_hn, shapes["w_hr"], draw)
        params = self._finish_init(self.params_type(**fields), initializer)
        return jax.tree.map(lambda leaf: leaf.astype(dtype), params)

    def _finish_init(self, params, initializer):
        return params

    def check_input(self, name: str, x, params) -> None:
        """Raise unless ``x`` is floating and its last axis matches ``params``."""
        check_floating(name, x)
        self.check_params(params)
        if params.w_x.shape[0] != x.shape[-1]:
            raise ValueError(
                f"{name}: expected input_size {params.w_x.shape[0]} on the last axis "
                f"(params.w_x has shape {tuple(params.w_x.shape)}), got {x.shape[-1]}"
            )

    def check_params(self, params, input_size: int | None = None) -> None:
        """Raise ``TypeError``/``ValueError`` if ``params`` does not fit this cell."""
        if not isinstance(params, self.params_type):
            raise TypeError(
                f"params: expected {self.params_type.__name__} for a {self.kind} cell, "
                f"got {type(params).__name__}"
            )
        if input_size is None:
            check_array("params.w_x", params.w_x)
            input_size = params.w_x.shape[0] if params.w_x.ndim == 2 else -1
        for name, shape in self.param_shapes(input_size).items():
            value = getattr(params, name)
            if shape is None:
                if value is not None:
                    raise ValueError(f"params.{name}: expected None for this cell, got an array")
                continue
            check_array(f"params.{name}", value)
            check_floating(f"params.{name}", value)
            check_shape(f"params.{name}", value, shape)
            if value.dtype != params.w_x.dtype:  # mixed dtypes would change the carry's dtype mid-loop
                raise TypeError(
                    f"params.{name}: expected the dtype of params.w_x ({params.w_x.dtype}), got {value.dtype}; "
                    "cast all params to one dtype (e.g. jax.tree.map(lambda a: a.astype(dtype), params))"
                )

    # -- carry ----------------------------------------------------------------
    def initial_carry(self, batch_shape: tuple[int, ...] | int = (), dtype=jnp.float32):
        """Zeros of shape ``(*batch_shape, H)``; ``ValueError`` for a negative or non-integer size."""
        batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
        # (symbolic sizes from jax.export shape polymorphism pass through)
        if any(isinstance(n, (bool, float, str)) or (isinstance(n, (int, np.integer)) and n < 0) for n in batch_shape):
            raise ValueError(f"batch_shape: expected non-negative ints, got {batch_shape}")
        return jnp.zeros((*batch_shape, self.hidden_size), dtype)

    def hidden(self, carry) -> jax.Array:
        """The hidden state ``h`` inside a carry."""
        return carry

    # -- computation ------------------------------------------------------------
    def project_input(self, params, x: jax.Array) -> jax.Array:
        """``x @ w_x + b``: ``(..., I) -> (..., G*H)``; run once for all time steps."""
        return add_bias(x @ params.w_x, params.b)

    def gates(self, params, carry, projected_x, recurrent_mask=None) -> dict[str, jax.Array]:
        """The step's activations by name (LSTM: i, f, g, o; GRU: z, r, n; SimpleRNN: h).

        ``recurrent_mask`` (``(*batch, H)``, optional) multiplies ``h_{t-1}`` where it
        enters the recurrent products (variational recurrent dropout, as Keras).
        """
        raise NotImplementedError

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        """One step from the projected input ``(*batch, G*H)``; returns ``(carry, h)``."""
        raise NotImplementedError

    def step(self, params, carry, x_t: jax.Array):
        """One time step: ``x_t (*batch, I)``, carry ``(*batch, H)`` -> ``(carry, h_t)``.

        Raises:
          ValueError / TypeError: ``x_t``, ``carry`` or ``params`` of the wrong shape or dtype.
        """
        check_array("x_t", x_t)
        if x_t.ndim < 1:
            raise ValueError("x_t: expected shape (*batch, input_size), got a scalar")
        self.check_input("x_t", x_t, params)
        self.check_carry(carry, x_t.shape[:-1])
        return self.recurrent_step(params, carry, self.project_input(params, x_t))

    def check_carry(self, carry, batch_shape) -> None:
        """Raise if ``carry`` does not have this cell's structure for ``batch_shape``."""
        expected = self.initial_carry(batch_shape)
        if jax.tree.structure(carry) != jax.tree.structure(expected):
            raise ValueError(f"carry: expected {_describe(expected)}, got {_describe(carry)}" + (
                "; a Flax LSTM's (c, h) carry converts with jrnn.interop.carry_from_flax"
                if isinstance(expected, LSTMState) and isinstance(carry, tuple) and len(carry) == 2 else ""))
        names = getattr(expected, "_fields", None) or ("",)
        for name, got, want in zip(names, jax.tree.leaves(carry), jax.tree.leaves(expected)):
            label = f"carry.{name}" if name else "carry"
            check_array(label, got)
            check_floating(label, got)
            check_shape(label, got, want.shape)

    def __call__(self, params, xs, carry=None, **options):
        """Run the cell over a sequence: the same as :func:`jrnn.scan` with this cell."""
        from jrnn.scan import scan

        return scan(self, params, xs, carry, **options)

    def output_size(self, input_size: int | None = None) -> int:
        """Width of the outputs ``ys`` (the hidden size)."""
        return self.hidden_size

    def config(self) -> dict[str, Any]:
        """JSON-friendly configuration; :func:`from_config` rebuilds the cell."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not isinstance(fields["init_preset"], str):
            fields["init_preset"] = "custom"
        return {"kind": self.kind, **fields}


def _split_blocks(a: jax.Array, n: int):
    return jnp.split(a, n, axis=-1)


@dataclasses.dataclass(frozen=True)
class SimpleRNNCell(Cell):
    r"""Elman RNN: ``h_t = act(x_t W_x + h_{t-1} W_h + b)``, ``act`` = tanh (or relu)."""

    activation: str = "tanh"

    kind: ClassVar[str] = "simple_rnn"
    num_blocks: ClassVar[int] = 1
    params_type: ClassVar[type] = SimpleRNNParams

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        h_in = carry if recurrent_mask is None else carry * recurrent_mask
        return {"h": ACTIVATIONS[self.activation](projected_x + h_in @ params.w_h)}

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        h = self.gates(params, carry, projected_x, recurrent_mask)["h"]
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    r"""Long short-term memory, gate blocks in order i, f, g (= C̃), o.

    .. code-block:: text

        i_t = σ(x_t W_xi + h_{t-1} W_hi + b_i)
        f_t = σ(x_t W_xf + h_{t-1} W_hf + b_f)
        C̃_t = tanh(x_t W_xg + h_{t-1} W_hg + b_g)
        o_t = σ(x_t W_xo + h_{t-1} W_ho + b_o)
        C_t = f_t ⊙ C_{t-1} + i_t ⊙ C̃_t
        h_t = o_t ⊙ tanh(C_t)
    """

    kind: ClassVar[str] = "lstm"
    num_blocks: ClassVar[int] = 4
    params_type: ClassVar[type] = LSTMParams

    def _finish_init(self, params, initializer):
        H = self.hidden_size
        return params._replace(b=params.b.at[H : 2 * H].add(initializer.forget_bias))

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """``LSTMState(h, c)`` of zeros, each ``(*batch_shape, H)``."""
        zeros = super().initial_carry(batch_shape, dtype)
        return LSTMState(zeros, zeros)

    def hidden(self, carry):
        return carry.h

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        h_prev = carry.h
        h_in = h_prev if recurrent_mask is None else h_prev * recurrent_mask
        a_i, a_f, a_g, a_o = _split_blocks(projected_x + h_in @ params.w_h, 4)
        return {"i": jax.nn.sigmoid(a_i), "f": jax.nn.sigmoid(a_f), "g": jnp.tanh(a_g), "o": jax.nn.sigmoid(a_o)}

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        gate = self.gates(params, carry, projected_x, recurrent_mask)
        c = gate["f"] * carry.c + gate["i"] * gate["g"]
        h = gate["o"] * jnp.tanh(c)
        return LSTMState(h, c), h


@dataclasses.dataclass(frozen=True)
class ProjectedLSTMCell(Cell):
    r"""LSTM with a projected hidden state (LSTMP, PyTorch's ``nn.LSTM(proj_size=P)``):
    the LSTM's gates and cell state of size H, a hidden state of size P.

    .. code-block:: text

        i_t, f_t, C̃_t, o_t as in the LSTM, from x_t and h_{t-1} (size P; W_h is (P, 4H))
        C_t = f_t ⊙ C_{t-1} + i_t ⊙ C̃_t
        h_t = (o_t ⊙ tanh(C_t)) W_hr           (W_hr: (H, P))
    """

    proj_size: int = 1

    kind: ClassVar[str] = "projected_lstm"
    num_blocks: ClassVar[int] = 4
    params_type: ClassVar[type] = ProjectedLSTMParams

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.proj_size, bool) or not isinstance(self.proj_size, int) or self.proj_size < 1:
            raise ValueError(f"proj_size: expected a positive int, got {self.proj_size!r}")

    def param_shapes(self, input_size):
        return {"w_x": (input_size, self.gate_size), "w_h": (self.proj_size, self.gate_size),
                "b": (self.gate_size,), "w_hr": (self.hidden_size, self.proj_size)}

    _finish_init = LSTMCell._finish_init  # the forget-gate bias
    hidden = LSTMCell.hidden
    gates = LSTMCell.gates  # reads h_{t-1} @ w_h, whatever the width of h

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """``LSTMState(h (*batch_shape, P), c (*batch_shape, H))`` of zeros."""
        c = super().initial_carry(batch_shape, dtype)
        return LSTMState(jnp.zeros((*c.shape[:-1], self.proj_size), dtype), c)

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        gate = self.gates(params, carry, projected_x, recurrent_mask)
        c = gate["f"] * carry.c + gate["i"] * gate["g"]
        h = (gate["o"] * jnp.tanh(c)) @ params.w_hr
        return LSTMState(h, c), h

    def output_size(self, input_size: int | None = None) -> int:
        """Width of the outputs ``ys``: the projection's, P."""
        return self.proj_size


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    r"""Gated recurrent unit, blocks in order z (update), r (reset), n (candidate).

    .. code-block:: text

        z_t = σ(x_t W_xz + h_{t-1} W_hz + b_z)
        r_t = σ(x_t W_xr + h_{t-1} W_hr + b_r)
        reset_after=False:  h̃_t = tanh(x_t W_xn + (r_t ⊙ h_{t-1}) W_hn + b_n)
        reset_after=True:   h̃_t = tanh(x_t W_xn + b_n + r_t ⊙ (h_{t-1} W_hn + b_hn))
        h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
    """

    reset_after: bool = False

    kind: ClassVar[str] = "gru"
    num_blocks: ClassVar[int] = 3
    params_type: ClassVar[type] = GRUParams

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.reset_after, bool):
            raise TypeError(f"reset_after: expected a bool, got {type(self.reset_after).__name__}")

    def param_shapes(self, input_size):
        shapes = super().param_shapes(input_size)
        shapes["b_hn"] = (self.hidden_size,) if self.reset_after else None
        return shapes

    def gates(self, params, carry, projected_x, recurrent_mask=None):
        H = self.hidden_size
        h_in = carry if recurrent_mask is None else carry * recurrent_mask
        if self.reset_after:
            hw = h_in @ params.w_h
            z, r = _split_blocks(jax.nn.sigmoid(projected_x[..., : 2 * H] + hw[..., : 2 * H]), 2)
            n = jnp.tanh(projected_x[..., 2 * H :] + r * add_bias(hw[..., 2 * H :], params.b_hn))
        else:
            zr = projected_x[..., : 2 * H] + h_in @ params.w_h[:, : 2 * H]
            z, r = _split_blocks(jax.nn.sigmoid(zr), 2)
            n = jnp.tanh(projected_x[..., 2 * H :] + (r * h_in) @ params.w_h[:, 2 * H :])
        return {"z": z, "r": r, "n": n}

    def recurrent_step(self, params, carry, projected_x, recurrent_mask=None):
        gate = self.gates(params, carry, projected_x, recurrent_mask)
        h = (1 - gate["z"]) * carry + gate["z"] * gate["n"]
        return h, h


def simple_rnn(hidden_size: int, *, activation: str = "tanh", init="default") -> SimpleRNNCell:
    """An Elman RNN cell, ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``.

    Args:
      hidden_size: H, the number of units.
      activation: ``"tanh"`` (default, as Keras and PyTorch) or ``"relu"``.
      init: initialiser preset, ``"default" | "keras" | "pytorch" | "flax"``,
        or a :class:`jrnn.initializers.Initializer`.

    Example:
      >>> import jax, jrnn
      >>> cell = jrnn.simple_rnn(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> carry, h = cell.step(params, cell.initial_carry(2), jax.numpy.ones((2, 3)))
      >>> h.shape
      (2, 8)
    """
    return SimpleRNNCell(hidden_size, init, activation=activation)


def lstm(hidden_size: int, *, proj_size: int | None = None, init="default") -> LSTMCell | ProjectedLSTMCell:
    """An LSTM cell (gate blocks i, f, g, o); carry :class:`LSTMState`.

    Args:
      hidden_size: H, the number of units.
      proj_size: P: a :class:`ProjectedLSTMCell` whose hidden state (and output)
        is ``(o ⊙ tanh(C)) W_hr`` of size P, as ``torch.nn.LSTM(proj_size=P)``.
      init: initialiser preset, ``"default" | "keras" | "pytorch" | "flax"``,
        or a :class:`jrnn.initializers.Initializer`. The default (= Keras)
        sets the forget-gate bias to 1 at initialisation.

    Example:
      >>> import jax, jrnn
      >>> cell = jrnn.lstm(32)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> jrnn.count_params(params)  # Keras: LSTM(32) on 2 features
      4480
      >>> carry = cell.initial_carry((4,))
      >>> carry, h = cell.step(params, carry, jax.numpy.ones((4, 2)))
      >>> carry.c.shape, h.shape
      ((4, 32), (4, 32))
      >>> projected = jrnn.lstm(32, proj_size=8)
      >>> carry, h = projected.step(projected.init(jax.random.key(0), 2), projected.initial_carry((4,)),
      ...                           jax.numpy.ones((4, 2)))
      >>> carry.c.shape, h.shape
      ((4, 32), (4, 8))
    """
    if proj_size is not None:
        return ProjectedLSTMCell(hidden_size, init, proj_size=proj_size)
    return LSTMCell(hidden_size, init)


def gru(hidden_size: int, *, reset_after: bool = False, init="default") -> GRUCell:
    """A GRU cell (blocks z, r, n); the update gate ``z`` weighs the candidate.

    Args:
      hidden_size: H, the number of units.
      reset_after: ``False`` (default): the seed slides' form, reset applied to
        ``h_{t-1}`` before the recurrent product. ``True``: the cuDNN / PyTorch
        / Keras-default placement, with the extra bias ``b_hn``.
      init: initialiser preset, ``"default" | "keras" | "pytorch" | "flax"``.

    Example:
      >>> import jax, jrnn
      >>> params = jrnn.gru(16, reset_after=True).init(jax.random.key(0), 4)
      >>> params.w_x.shape, params.b_hn.shape
      ((4, 48), (16,))
    """
    return GRUCell(hidden_size, init, reset_after=reset_after)


CELL_TYPES = {c.kind: c for c in (SimpleRNNCell, LSTMCell, GRUCell, ProjectedLSTMCell)}


def from_config(config: dict[str, Any]) -> Cell:
    """Rebuild a cell from :meth:`Cell.config`.

    Raises:
      ValueError: unknown ``kind``.
    """
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in CELL_TYPES:
        raise ValueError(f"config['kind']: expected one of {tuple(CELL_TYPES)}, got {kind!r}")
    if config.get("init_preset") == "custom":
        config["init_preset"] = "default"
    return CELL_TYPES[kind](**config)


def check_cell(cell, layer_hint: str = "a layer (jrnn.bidirectional, jrnn.stacked) runs as layer(params, xs)") -> None:
    """Raise ``TypeError`` unless ``cell`` is a jrnn cell; ``layer_hint`` is added when it is a layer."""
    if not isinstance(cell, Cell):
        hint = f"; {layer_hint}" if callable(cell) else ""
        raise TypeError(
            "cell: expected a jrnn cell (jrnn.simple_rnn, jrnn.lstm, jrnn.gru, jrnn.min_gru, jrnn.min_lstm), "
            f"got {type(cell).__name__}{hint}"
        )


def count_params(params) -> int:
    """Number of scalars in a params pytree (``None`` fields count zero).

    Equals Keras' ``count_params()`` for SimpleRNN, LSTM and GRU(reset_after=False).

    >>> import jax, jrnn
    >>> jrnn.count_params(jrnn.gru(32).init(jax.random.key(0), 2))
    3360
    """
    leaves = jax.tree.leaves(params)
    for leaf in leaves:
        if not (hasattr(leaf, "shape") or isinstance(leaf, (int, float, complex))):
            raise TypeError(f"params: expected a pytree of arrays, got a leaf of type {type(leaf).__name__}")
    return sum(int(np.size(leaf)) for leaf in leaves)
