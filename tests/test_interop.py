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
    with pytest.raises(ValueError, match="proj_size=2"):
        interop.from_torch(torch.nn.LSTM(I, H, proj_size=2))
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
    with pytest.raises(ValueError, match="network: .* has no MinGRUCell; only SimpleRNN, LSTM and GRU cells convert"):
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
