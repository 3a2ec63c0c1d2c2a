"""Converters against the real libraries running the same weights; exact round trips."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import interop

TOL = dict(rtol=1e-5, atol=1e-5)
B, T, I, H = 3, 7, 4, 5


def _xs(seed=0, shape=(B, T, I)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _randomize_torch(module, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _final_hidden(carry):
    return carry.h if isinstance(carry, jrnn.LSTMState) else carry


# ----------------------------------------------------------------------------- PyTorch
TORCH_CASES = [
    (kind, layers, bidi, bias)
    for kind, layers, bidi, bias in itertools.product(["RNN", "RNN_relu", "LSTM", "GRU"], [1, 2], [False, True],
                                                      [True, False])
    if not (not bias and layers == 2)
]


@pytest.mark.parametrize("kind,num_layers,bidirectional,bias", TORCH_CASES)
@pytest.mark.parametrize("I,H", [(I, H), (1, 9)], ids=["4x5", "1x9"])
def test_torch_modules(kind, num_layers, bidirectional, bias, I, H):
    torch = pytest.importorskip("torch")
    cls = getattr(torch.nn, kind.split("_")[0])
    extra = {"nonlinearity": "relu"} if kind == "RNN_relu" else {}
    module = _randomize_torch(cls(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                                  batch_first=True, **extra))
    xs = _xs(shape=(B, T, I))
    want, state = module(torch.from_numpy(xs))
    network, params = interop.from_torch(module)
    carries, ys = network(params, xs)
    np.testing.assert_allclose(ys, want.detach().numpy(), **TOL)
    # torch's h_n: (layers * directions, B, H); jrnn: one carry per layer (and direction).
    h_n = (state[0] if kind == "LSTM" else state).detach().numpy()
    flat = []
    for layer_carry in (carries if isinstance(network, jrnn.Stacked) else (carries,)):
        several = isinstance(layer_carry, tuple) and not isinstance(layer_carry, jrnn.LSTMState)
        flat.extend(layer_carry if several else (layer_carry,))
    np.testing.assert_allclose(np.stack([_final_hidden(c) for c in flat]), h_n, **TOL)
    _assert_identical(interop.from_torch(interop.to_torch(network, params))[1], params)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_torch_projected_lstm(num_layers, bidirectional):
    """``nn.LSTM(proj_size=P)`` is jrnn's ProjectedLSTMCell: same outputs, h_n (size P) and
    c_n (size H), from torch's own init; the round trip back to torch is exact."""
    torch = pytest.importorskip("torch")
    module = _randomize_torch(torch.nn.LSTM(I, H, proj_size=3, num_layers=num_layers,
                                            bidirectional=bidirectional, batch_first=True), seed=5)
    xs = _xs(6)
    want, (h_n, c_n) = module(torch.from_numpy(xs))
    network, params = interop.from_torch(module)
    assert (network.layers[0].forward if bidirectional else network) == jrnn.lstm(H, proj_size=3)
    carries, ys = network(params, xs)
    np.testing.assert_allclose(ys, want.detach().numpy(), **TOL)
    flat = [c for layer in carries for c in layer] if bidirectional else [carries]
    np.testing.assert_allclose(np.stack([c.h for c in flat]), h_n.detach().numpy(), **TOL)
    np.testing.assert_allclose(np.stack([c.c for c in flat]), c_n.detach().numpy(), **TOL)
    back = interop.to_torch(network, params)
    assert back.proj_size == 3
    _assert_identical(interop.from_torch(back)[1], params)
    cell = jrnn.lstm(H, proj_size=3)
    with pytest.raises(ValueError, match="as_cell: torch.nn.LSTMCell has no proj_size"):
        interop.to_torch(cell, cell.init(jax.random.key(0), I), as_cell=True)
    wide = jrnn.lstm(3, proj_size=4)
    with pytest.raises(ValueError, match="torch.nn.LSTM needs proj_size < hidden_size, got proj_size=4"):
        interop.to_torch(wide, wide.init(jax.random.key(0), I))
    for convert in (interop.to_keras, interop.to_flax, interop.to_equinox, interop.to_haiku):
        with pytest.raises(ValueError, match="has no ProjectedLSTMCell"):
            convert(cell, cell.init(jax.random.key(0), I))


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
def test_torch_cells(kind):
    torch = pytest.importorskip("torch")
    module = _randomize_torch(getattr(torch.nn, kind)(I, H), seed=1)
    x, h = _xs(1, (B, I)), _xs(2, (B, H))
    cell, params = interop.from_torch(module)
    if kind == "LSTMCell":
        c = _xs(3, (B, H))
        want_h, want_c = module(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
        carry, _ = cell.step(params, jrnn.LSTMState(h, c), x)
        np.testing.assert_allclose(carry.c, want_c.detach().numpy(), **TOL)
        np.testing.assert_allclose(carry.h, want_h.detach().numpy(), **TOL)
    else:
        want = module(torch.from_numpy(x), torch.from_numpy(h))
        np.testing.assert_allclose(cell.step(params, h, x)[1], want.detach().numpy(), **TOL)
    back = interop.to_torch(cell, params, as_cell=True)
    assert type(back) is type(module)
    _assert_identical(interop.from_torch(back)[1], params)


def test_torch_time_major_and_refusals():
    torch = pytest.importorskip("torch")
    module = _randomize_torch(torch.nn.GRU(I, H, batch_first=False))
    xs = _xs(4, (T, B, I))
    cell, params = interop.from_torch(module)
    _, ys = jrnn.scan(cell, params, xs, time_major=True)
    np.testing.assert_allclose(ys, module(torch.from_numpy(xs))[0].detach().numpy(), **TOL)
    with pytest.raises(ValueError, match="PyTorch has only the reset-after GRU"):
        interop.to_torch(jrnn.gru(H), jrnn.gru(H).init(jax.random.key(0), I))
    with pytest.raises(TypeError, match="module: expected torch.nn.RNN"):
        interop.from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("convert", [interop.to_torch, interop.to_keras], ids=["torch", "keras"])
def test_to_peer_refusals(convert):
    """Checked before the peer library is imported, so these run without it."""
    key = jax.random.key(0)
    lstm_params = jrnn.lstm(H).init(key, I)
    with pytest.raises(TypeError, match="params: expected LSTMParams for a lstm cell, got GRUParams"):
        convert(jrnn.lstm(H), jrnn.gru(H).init(key, I))
    with pytest.raises(ValueError, match=r"params.w_x: expected shape \(4, 12\), got \(4, 20\)"):
        convert(jrnn.lstm(3), lstm_params)
    with pytest.raises(ValueError, match="network: .* has no MinGRUCell; cells that convert: SimpleRNNCell, LSTMCell, "
                                         "GRUCell"):
        convert(jrnn.min_gru(H), jrnn.min_gru(H).init(key, I))
    net = jrnn.stacked([jrnn.lstm(H), jrnn.lstm(H)])
    with pytest.raises(ValueError, match="params: expected a tuple of 2 layer params, got 1"):
        convert(net, net.init(key, I)[:1])
    with pytest.raises(TypeError, match="params: expected BidirectionalParams, got LSTMParams"):
        convert(jrnn.bidirectional(jrnn.lstm(H)), lstm_params)


# ----------------------------------------------------------------------------- Keras
KERAS_CASES = [("SimpleRNN", {}), ("SimpleRNN", {"activation": "relu"}), ("LSTM", {}), ("LSTM", {"use_bias": False}),
               ("GRU", {"reset_after": True}), ("GRU", {"reset_after": False})]


@pytest.fixture
def keras():
    """Keras 3 on JAX broadcasts arrays of different ranks itself: its layers run
    with rank promotion allowed (the suite raises on it, see conftest.py)."""
    keras = pytest.importorskip("keras")
    with jax.numpy_rank_promotion("allow"):
        yield keras


def _keras_randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("name,options", KERAS_CASES)
@pytest.mark.parametrize("I,H", [(I, H), (2, 11)], ids=["4x5", "2x11"])
def test_keras_layers(name, options, I, H, keras):
    layer = getattr(keras.layers, name)(H, return_sequences=True, return_state=True, **options)
    xs = _xs(5, shape=(B, T, I))
    layer(xs)
    _keras_randomize(layer)
    out = layer(xs)
    cell, params = interop.from_keras(layer)
    carry, ys = jrnn.scan(cell, params, xs)
    np.testing.assert_allclose(ys, np.asarray(out[0]), **TOL)
    np.testing.assert_allclose(_final_hidden(carry), np.asarray(out[1]), **TOL)
    if name == "LSTM":
        np.testing.assert_allclose(carry.c, np.asarray(out[2]), **TOL)
    _assert_identical(interop.from_keras(interop.to_keras(cell, params))[1], params)


def test_keras_go_backwards_is_refused_with_advice_that_holds(keras):
    """A lone ``go_backwards=True`` layer is refused; the advice in the message
    (convert it forwards, run the cell on time-reversed inputs) gives Keras' outputs."""
    backwards = keras.layers.LSTM(H, return_sequences=True, return_state=True, go_backwards=True)
    xs = _xs(7, shape=(B, T, I))
    backwards(xs)
    _keras_randomize(backwards, seed=4)
    with pytest.raises(ValueError, match="go_backwards=True has no jrnn cell equivalent"):
        interop.from_keras(backwards)
    forwards = keras.layers.LSTM(H, return_sequences=True)
    forwards(xs)
    forwards.set_weights(backwards.get_weights())
    cell, params = interop.from_keras(forwards)
    carry, ys = jrnn.scan(cell, params, xs[:, ::-1])
    out = backwards(xs)
    np.testing.assert_allclose(ys, np.asarray(out[0]), **TOL)
    np.testing.assert_allclose(carry.h, np.asarray(out[1]), **TOL)


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_keras_bidirectional_and_sequential(merge, keras):
    layer = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True), merge_mode=merge)
    xs = _xs(6)
    layer(xs)
    _keras_randomize(layer, seed=2)
    network, params = interop.from_keras(layer)
    np.testing.assert_allclose(network(params, xs)[1], np.asarray(layer(xs)), **TOL)
    _assert_identical(interop.from_keras(interop.to_keras(network, params))[1], params)
    second = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True), merge_mode=merge)
    model = keras.Sequential([keras.Input((None, I)), keras.layers.LSTM(H, return_sequences=True), second])
    for k, sub in enumerate(model.layers):
        _keras_randomize(sub, seed=3 + k)
    network, params = interop.from_keras(model)
    np.testing.assert_allclose(network(params, xs)[1], np.asarray(model(xs)), **TOL)
    _assert_identical(interop.from_keras(interop.to_keras(network, params))[1], params)


# ----------------------------------------------------------------------------- Flax
@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_flax_linen_cells(name):
    nn = pytest.importorskip("flax.linen")
    flax_cell = getattr(nn, name)(features=H)
    rnn = nn.RNN(flax_cell, return_carry=True)
    xs = _xs(7)
    variables = rnn.init(jax.random.key(0), xs)
    variables = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), variables)
    carry_f, want = rnn.apply(variables, xs)
    cell, params = interop.from_flax(flax_cell, variables["params"]["cell"])
    carry, ys = jrnn.scan(cell, params, xs)
    np.testing.assert_allclose(ys, want, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry, interop.carry_from_flax(carry_f))


@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_flax_nnx_cells(name):
    nnx = pytest.importorskip("flax.nnx")
    flax_cell = getattr(nnx, name)(I, H, rngs=nnx.Rngs(0))
    state = nnx.state(flax_cell, nnx.Param)
    nudge = lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape, a.dtype)
    nnx.update(flax_cell, jax.tree.map(nudge, state))
    xs = _xs(8)
    want = nnx.RNN(flax_cell)(xs)
    cell, params = interop.from_flax(flax_cell)
    if name == "GRUCell":
        np.testing.assert_array_equal(params.b_hn, 0.0)  # NNX GRU: reset-after with b_hn = 0
    np.testing.assert_allclose(jrnn.scan(cell, params, xs)[1], want, **TOL)


def test_flax_refusals():
    nn = pytest.importorskip("flax.linen")
    with pytest.raises(ValueError, match="gate_fn/activation_fn"):
        interop.from_flax(nn.LSTMCell(H, gate_fn=jax.nn.hard_sigmoid), {})
    with pytest.raises(TypeError, match="module: expected a flax"):
        interop.from_flax(nn.Dense(3), {})


# ----------------------------------------------------------------------------- Equinox
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_equinox_cells(name):
    eqx = pytest.importorskip("equinox")
    module = getattr(eqx.nn, name)(I, H, key=jax.random.key(0))
    nudge = lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape, a.dtype) if eqx.is_array(a) else a
    module = jax.tree.map(nudge, module)
    xs = _xs(9)

    def run(seq):
        init = (jnp.zeros(H), jnp.zeros(H)) if name == "LSTMCell" else jnp.zeros(H)
        def body(carry, x):
            carry = module(x, carry)
            return carry, carry[0] if name == "LSTMCell" else carry
        return jax.lax.scan(body, init, seq)[1]

    cell, params = interop.from_equinox(module)
    np.testing.assert_allclose(jrnn.scan(cell, params, xs)[1], jax.vmap(run)(xs), **TOL)


# ----------------------------------------------------------------------------- Haiku
@pytest.mark.parametrize("kind", ["lstm", "gru", "vanilla_rnn"])
def test_haiku_cores(kind):
    hk = pytest.importorskip("haiku")
    core_cls = {"lstm": hk.LSTM, "gru": hk.GRU, "vanilla_rnn": hk.VanillaRNN}[kind]

    def forward(xs):
        core = core_cls(H)
        return hk.dynamic_unroll(core, xs, core.initial_state(B), time_major=False)

    model = hk.without_apply_rng(hk.transform(forward))
    xs = _xs(10)
    params = model.init(jax.random.key(0), xs)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(4), a.shape, a.dtype), params)
    want, _ = model.apply(params, xs)
    cell, converted = interop.from_haiku(params, kind)
    np.testing.assert_allclose(jrnn.scan(cell, converted, xs)[1], want, **TOL)


def test_haiku_refusal():
    with pytest.raises(ValueError, match="no haiku module named 'lstm'"):
        interop.from_haiku({"gru": {}}, "lstm")


# ----------------------------------------------------------------------------- jrnn -> Flax, Equinox, Haiku
def _random_params(cell, seed, input_size=I):
    """Init params nudged off their presets, so every bias (LSTM forget bias, ``b_hn``) is nonzero."""
    params = cell.init(jax.random.key(seed), input_size)
    return jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(seed + 1), a.shape, a.dtype), params)


FLAX_TARGETS = [("lstm", "LSTMCell"), ("lstm", "OptimizedLSTMCell"), ("gru", "GRUCell"),
                ("simple_rnn", "SimpleCell"), ("relu_rnn", "SimpleCell")]
_CELLS = {"lstm": lambda: jrnn.lstm(H), "gru": lambda: jrnn.gru(H, reset_after=True),
          "simple_rnn": lambda: jrnn.simple_rnn(H), "relu_rnn": lambda: jrnn.simple_rnn(H, activation="relu")}


@pytest.mark.parametrize("kind,name", FLAX_TARGETS)
def test_to_flax_linen(kind, name):
    """nn.RNN over the converted linen cell computes jrnn's outputs and final carry; exact round trip."""
    nn = pytest.importorskip("flax.linen")
    cell = _CELLS[kind]()
    params = _random_params(cell, 11)
    xs = _xs(12)
    carry, ys = jrnn.scan(cell, params, xs)
    module, variables = interop.to_flax(cell, params, getattr(nn, name))
    assert type(module) is getattr(nn, name)
    carry_f, want = nn.RNN(module, return_carry=True).apply({"params": {"cell": variables["params"]}}, xs)
    np.testing.assert_allclose(want, ys, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), interop.carry_to_flax(carry), carry_f)
    _assert_identical(interop.from_flax(module, variables)[1], params)
    h0 = cell.initial_carry((B,))
    step_carry, _ = module.apply(variables, interop.carry_to_flax(h0), xs[:, 0])  # one step, as Flax cells run
    np.testing.assert_allclose(interop.carry_from_flax(step_carry).h if kind == "lstm" else step_carry,
                               ys[:, 0], **TOL)


@pytest.mark.parametrize("kind,name", FLAX_TARGETS)
def test_to_flax_nnx(kind, name):
    nnx = pytest.importorskip("flax.nnx")
    cell = _CELLS[kind]()
    params = _random_params(cell, 13)
    if kind == "gru":  # nnx.GRUCell has no b_hn: nonzero is refused, zero converts
        with pytest.raises(ValueError, match="params.b_hn: flax.nnx.GRUCell has no bias inside the reset product"):
            interop.to_flax(cell, params, nnx.GRUCell)
        params = params._replace(b_hn=jnp.zeros_like(params.b_hn))
    xs = _xs(14)
    module = interop.to_flax(cell, params, getattr(nnx, name))
    assert type(module) is getattr(nnx, name)
    np.testing.assert_allclose(nnx.RNN(module)(xs), jrnn.scan(cell, params, xs)[1], **TOL)
    _assert_identical(interop.from_flax(module)[1], params)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_to_equinox(kind):
    eqx = pytest.importorskip("equinox")
    cell = _CELLS[kind]()
    params = _random_params(cell, 15)
    module = interop.to_equinox(cell, params)
    assert isinstance(module, eqx.nn.LSTMCell if kind == "lstm" else eqx.nn.GRUCell)
    xs = _xs(16)
    carry, ys = jrnn.scan(cell, params, xs)

    def run(seq):  # Equinox cells run one example and one step at a time
        def body(state, x):
            state = module(x, state)
            return state, state[0] if kind == "lstm" else state
        init = (jnp.zeros(H), jnp.zeros(H)) if kind == "lstm" else jnp.zeros(H)
        return jax.lax.scan(body, init, seq)

    final, want = jax.vmap(run)(xs)
    np.testing.assert_allclose(want, ys, **TOL)
    np.testing.assert_allclose(final[1] if kind == "lstm" else final, carry.c if kind == "lstm" else carry, **TOL)
    _assert_identical(interop.from_equinox(module)[1], params)


@pytest.mark.parametrize("kind", ["lstm", "gru", "vanilla_rnn"])
@pytest.mark.parametrize("name", [None, "forecaster/core"])
def test_to_haiku(kind, name):
    """The dict goes into hk.transform(...).apply like init's; round trip exact but for the
    LSTM forget bias, which passes through Haiku's built-in +1 (one rounding)."""
    hk = pytest.importorskip("haiku")
    cell = {"lstm": jrnn.lstm(H), "gru": jrnn.gru(H), "vanilla_rnn": jrnn.simple_rnn(H, activation="relu")}[kind]
    params = _random_params(cell, 17)
    core_cls = {"lstm": hk.LSTM, "gru": hk.GRU, "vanilla_rnn": hk.VanillaRNN}[kind]

    def forward(xs):
        if name is None:
            core = core_cls(H)
        else:
            with hk.experimental.name_scope("forecaster"):
                core = core_cls(H, name="core")
        return hk.dynamic_unroll(core, xs, core.initial_state(B), time_major=False)

    model = hk.without_apply_rng(hk.transform(forward))
    xs = _xs(18)
    converted = interop.to_haiku(cell, params, name=name)
    assert jax.tree.structure(converted) == jax.tree.structure(model.init(jax.random.key(0), xs))
    want, final = model.apply(converted, xs)
    carry, ys = jrnn.scan(cell, params, xs)
    np.testing.assert_allclose(want, ys, **TOL)
    np.testing.assert_allclose(final.cell if kind == "lstm" else final, carry.c if kind == "lstm" else carry, **TOL)
    _, back = interop.from_haiku(converted, kind, name=name)
    if kind == "lstm":
        np.testing.assert_allclose(back.b, params.b, rtol=0, atol=float(np.spacing(np.float32(1))))
        back = back._replace(b=params.b)
    _assert_identical(back, params)


@pytest.mark.parametrize("library", ["linen", "nnx"])
def test_flax_bidirectional_both_ways(library):
    """A Flax Bidirectional(RNN(LSTMCell), RNN(GRUCell)) as Flax initialises it becomes a
    jrnn.bidirectional layer with the same outputs (at the valid steps of padded
    sequences) and carries; to_flax builds it back with identical params."""
    nn, nnx = pytest.importorskip("flax.linen"), pytest.importorskip("flax.nnx")
    xs, lengths = _xs(21), np.array([T, 4, 1])
    valid = np.arange(T)[None] < lengths[:, None]
    if library == "linen":
        module = nn.Bidirectional(nn.RNN(nn.LSTMCell(H)), nn.RNN(nn.GRUCell(H)), return_carry=True)
        variables = module.init(jax.random.key(0), xs)
        variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape, a.dtype), variables)
        (carry_f, carry_b), want = module.apply(variables, xs, seq_lengths=lengths)
        layer, params = interop.from_flax(module, variables)
    else:
        module = nnx.Bidirectional(nnx.RNN(nnx.LSTMCell(I, H, rngs=nnx.Rngs(0))),
                                   nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(1))), return_carry=True)
        (carry_f, carry_b), want = module(xs, seq_lengths=lengths)
        layer, params = interop.from_flax(module)
    assert layer == jrnn.bidirectional(jrnn.lstm(H), jrnn.gru(H, reset_after=True))
    (got_f, got_b), ys = layer(params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(want)[valid], **TOL)
    assert not np.asarray(ys)[~valid].any()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), (interop.carry_to_flax(got_f), got_b),
                 (carry_f, carry_b))
    if library == "linen":
        back, back_variables = interop.to_flax(layer, params)
        again = back.apply(back_variables, xs, seq_lengths=lengths)
        _assert_identical(interop.from_flax(back, back_variables)[1], params)
    else:
        back = interop.to_flax(layer, params, (nnx.LSTMCell, nnx.GRUCell))
        again = back(xs, seq_lengths=lengths)
        _assert_identical(interop.from_flax(back)[1], params)
    assert type(back) is type(module)
    np.testing.assert_allclose(np.asarray(again)[valid], np.asarray(want)[valid], **TOL)


def test_flax_bidirectional_merges_and_refusals():
    nn = pytest.importorskip("flax.linen")
    layer = jrnn.bidirectional(jrnn.gru(H, reset_after=True), merge="mean")
    params = _random_params(layer.forward, 3), _random_params(layer.backward, 4)
    params = jrnn.BidirectionalParams(*params)
    xs = _xs(22)
    module, variables = interop.to_flax(layer, params)
    np.testing.assert_allclose(module.apply(variables, xs), layer(params, xs)[1], **TOL)
    assert interop.from_flax(module, variables)[0] == layer  # the merge comes back by name
    own_merge = nn.Bidirectional(module.forward_rnn, module.backward_rnn, merge_fn=lambda a, b: a - b)
    with pytest.raises(ValueError, match="module: merge_fn <lambda> has no jrnn equivalent; jrnn.bidirectional "
                                         "merges by concat, sum, mean, product"):
        interop.from_flax(own_merge, variables)
    with pytest.raises(ValueError, match="module: a reversed RNN alone has no jrnn layer"):
        interop.from_flax(nn.RNN(nn.GRUCell(H), reverse=True, keep_order=True), {"cell": {}})
    with pytest.raises(ValueError, match=r"params: expected the Bidirectional's params with an entry "
                                         r"'forward_rnn', got entries \['cell'\]"):
        interop.from_flax(module, {"cell": {}})
    rnn_variables = {"params": {"cell": variables["params"]["forward_rnn"]["cell"]}}
    cell, cell_params = interop.from_flax(nn.RNN(module.forward_rnn.cell), rnn_variables)  # an RNN: its cell
    assert cell == layer.forward
    _assert_identical(cell_params, params.forward)
    with pytest.raises(TypeError, match="module_class: expected a Flax cell class or a \\(forward, backward\\) pair"):
        interop.to_flax(layer, params, (nn.GRUCell,) * 3)


@pytest.mark.parametrize("convert", [interop.to_flax, interop.to_equinox, interop.to_haiku],
                         ids=["flax", "equinox", "haiku"])
def test_to_single_cell_peer_refusals(convert):
    """Checked before the peer library is imported."""
    key = jax.random.key(0)
    lstm_params = jrnn.lstm(H).init(key, I)
    net = jrnn.stacked([jrnn.lstm(H), jrnn.lstm(H)])
    with pytest.raises(TypeError, match="cell: .* converts one cell at a time, got Stacked; convert its cells"):
        convert(net, net.init(key, I))
    with pytest.raises(TypeError, match="params: expected LSTMParams for a lstm cell, got GRUParams"):
        convert(jrnn.lstm(H), jrnn.gru(H).init(key, I))
    with pytest.raises(ValueError, match=r"params.w_x: expected shape \(4, 12\), got \(4, 20\)"):
        convert(jrnn.lstm(3), lstm_params)
    with pytest.raises(ValueError, match="cell: .* has no MinGRUCell; cells that convert: LSTMCell, GRUCell"):
        convert(jrnn.min_gru(H), jrnn.min_gru(H).init(key, I))
    gru, other_gru = (jrnn.gru(H), jrnn.gru(H, reset_after=True))
    if convert is interop.to_haiku:
        gru, other_gru = other_gru, gru
    with pytest.raises(ValueError, match=r"cell: .* has only the reset-(after|before) GRU; a jrnn.gru\(H, reset_"):
        convert(gru, gru.init(key, I))
    convert(other_gru, other_gru.init(key, I))


def test_to_peer_cell_type_refusals():
    nn = pytest.importorskip("flax.linen")
    pytest.importorskip("equinox")
    key = jax.random.key(0)
    lstm = jrnn.lstm(H)
    with pytest.raises(TypeError, match="module_class: expected one of linen.GRUCell, nnx.GRUCell for a gru cell, "
                                        "got 'LSTMCell'"):
        interop.to_flax(jrnn.gru(H, reset_after=True), jrnn.gru(H, reset_after=True).init(key, I), nn.LSTMCell)
    with pytest.raises(ValueError, match="cell: Equinox has no SimpleRNNCell"):
        interop.to_equinox(jrnn.simple_rnn(H), jrnn.simple_rnn(H).init(key, I))
    with pytest.raises(ValueError, match="hk.VanillaRNN uses relu; got a SimpleRNN with activation='tanh'"):
        interop.to_haiku(jrnn.simple_rnn(H), jrnn.simple_rnn(H).init(key, I))
    with pytest.raises(TypeError, match="cell: expected a jrnn cell, got str"):
        interop.to_equinox("lstm", lstm.init(key, I))
