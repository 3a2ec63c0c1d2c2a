"""jrnn.linen.RNN and jrnn.nnx.RNN: thin adapters over the same core."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
import jrnn.linen
import jrnn.nnx
from jrnn._named import from_named

LAYERS = [jrnn.lstm(5), jrnn.gru(4, reset_after=True),
          jrnn.stacked([jrnn.simple_rnn(3), jrnn.bidirectional(jrnn.lstm(2))])]


def _template(layer, input_size):
    return jax.eval_shape(lambda: layer.init(jax.random.key(0), input_size))


@pytest.mark.parametrize("layer", LAYERS, ids=["lstm", "gru", "stacked"])
def test_linen_equals_scan(layer, key):
    xs = jax.random.normal(key, (3, 6, 2), jnp.float32)
    lengths = jnp.array([6, 2, 0])
    module = jrnn.linen.RNN(layer)
    variables = module.init(key, xs)
    carry, ys = module.apply(variables, xs, seq_lengths=lengths, return_carry=True)
    params = from_named(_template(layer, 2), variables["params"]["layer"])
    want_carry, want = layer(params, xs, seq_lengths=lengths)
    np.testing.assert_array_equal(ys, want)
    jax.tree.map(np.testing.assert_array_equal, carry, want_carry)


@pytest.mark.parametrize("layer", LAYERS, ids=["lstm", "gru", "stacked"])
def test_nnx_equals_scan(layer, key):
    xs = jax.random.normal(key, (3, 6, 2), jnp.float32)
    module = jrnn.nnx.RNN(layer, 2, rngs=nnx.Rngs(0))
    named = jax.tree.map(lambda p: p[...], nnx.to_pure_dict(nnx.state(module, nnx.Param)))["params"]
    params = from_named(_template(layer, 2), named)
    np.testing.assert_array_equal(module(xs), layer(params, xs)[1])


def test_linen_reverse_and_initial_carry(key):
    cell = jrnn.gru(4)
    xs = jax.random.normal(key, (2, 5, 3), jnp.float32)
    h0 = jnp.ones((2, 4), jnp.float32)
    module = jrnn.linen.RNN(cell)
    variables = module.init(key, xs)
    params = from_named(_template(cell, 3), variables["params"]["layer"])
    got = module.apply(variables, xs, reverse=True, initial_carry=h0)
    np.testing.assert_array_equal(got, jrnn.scan(cell, params, xs, h0, reverse=True)[1])


def test_linen_dropout_uses_flax_rng(key):
    module = jrnn.linen.RNN(jrnn.lstm(4), dropout=0.3, recurrent_dropout=0.3)
    xs = jax.random.normal(key, (2, 5, 3), jnp.float32)
    variables = module.init(key, xs, deterministic=True)
    plain = module.apply(variables, xs, deterministic=True)
    a = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain)
    with pytest.raises(ValueError, match="deterministic"):
        module.apply(variables, xs)


def test_linen_model_trains(key):
    class Model(nn.Module):
        @nn.compact
        def __call__(self, xs):
            h = nn.Dense(8)(xs)
            h = jrnn.linen.RNN(jrnn.lstm(16))(h)
            return nn.Dense(1)(h[:, -1])

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(32, 10, 2)).astype(np.float32)
    ys = xs[:, -3:, 0].sum(axis=1, keepdims=True)
    model = Model()
    params = model.init(key, xs)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, xs) - ys) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]


def test_nnx_optimizer_and_jit():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = jrnn.nnx.RNN(jrnn.gru(16), 2, rngs=rngs, recurrent_dropout=0.05)
            self.head = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, xs):
            return self.head(self.rnn(xs)[:, -1])

    rng = np.random.default_rng(1)
    xs = rng.normal(size=(32, 10, 2)).astype(np.float32)
    ys = xs[:, -3:, 0].sum(axis=1, keepdims=True)
    model = Model(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - ys) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(80)]
    assert np.mean(losses[-5:]) < 0.2 * losses[0]
    a = model.rnn(xs, deterministic=True)
    np.testing.assert_array_equal(a, model.rnn(xs, deterministic=True))
    assert not np.allclose(model.rnn(xs), a)  # dropout active when not deterministic


@pytest.mark.parametrize("adapter", ["linen", "nnx"])
def test_modules_pass_the_implementation_on(adapter, key):
    """``implementation=`` reaches ``jrnn.scan``: "plain" gives the default path's
    values; forward-mode derivatives and ``jax.export`` work on both; a wrong name is
    refused."""
    layer = jrnn.stacked([jrnn.lstm(4), jrnn.bidirectional(jrnn.gru(3))])
    xs = jax.random.normal(key, (2, 5, 3), jnp.float32)
    if adapter == "linen":
        variables = jrnn.linen.RNN(layer).init(key, xs)
        run = lambda implementation, x: jrnn.linen.RNN(layer, implementation=implementation).apply(variables, x)
    else:
        run = lambda implementation, x: jrnn.nnx.RNN(layer, 3, rngs=nnx.Rngs(0), implementation=implementation)(x)

    np.testing.assert_allclose(run("plain", xs), run("auto", xs), rtol=1e-5, atol=1e-6)
    reverse_mode = jax.grad(lambda x: run("plain", x).sum())(xs)
    for implementation in ("plain", "auto"):
        forward_mode = jax.jacfwd(lambda x, impl=implementation: run(impl, x).sum())(xs)
        np.testing.assert_allclose(forward_mode, reverse_mode, rtol=1e-4, atol=1e-6)
        exported = jax.export.export(jax.jit(functools.partial(run, implementation)))(xs)
        np.testing.assert_allclose(exported.call(xs), run(implementation, xs), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="implementation: expected one of"):
        run("cuda", xs)


def test_modules_refuse_what_is_not_a_jrnn_layer(key):
    """A Flax cell (as ``nn.RNN`` takes) is the likely mix-up: the error says how to convert it."""
    xs = jnp.ones((2, 5, 3))
    hint = ("layer: expected a jrnn cell or layer, got LSTMCell; "
            "a Flax cell's params convert with jrnn.interop.from_flax")
    with pytest.raises(TypeError, match=hint):
        jrnn.linen.RNN(nn.LSTMCell(4)).init(key, xs)
    with pytest.raises(TypeError, match=hint):
        jrnn.nnx.RNN(nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)), 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="layer: expected a jrnn cell or layer, got str$"):
        jrnn.nnx.RNN("lstm", 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("layer", LAYERS, ids=["lstm", "gru", "stacked"])
def test_params_to_and_from_jrnn(layer, key):
    """A module's params come out as jrnn params (same outputs through jrnn's layer, and
    through interop to PyTorch), and jrnn params go in (same outputs as the layer)."""
    xs = jax.random.normal(key, (3, 6, 2), jnp.float32)
    other = layer.init(jax.random.key(7), 2)

    class Model(nn.Module):  # the RNN inside a model, as users compose it
        @nn.compact
        def __call__(self, x):
            return jrnn.linen.RNN(layer)(nn.Dense(2)(x))

    model = Model()
    variables = model.init(key, xs)
    rnn = jrnn.linen.RNN(layer)
    params = rnn.jrnn_params(variables["params"]["RNN_0"])
    dense = variables["params"]["Dense_0"]
    hidden = xs @ dense["kernel"] + dense["bias"][None, None]
    np.testing.assert_allclose(model.apply(variables, xs), layer(params, hidden)[1], rtol=1e-6, atol=1e-6)
    variables["params"]["RNN_0"] = rnn.flax_params(other)
    np.testing.assert_allclose(model.apply(variables, xs), layer(other, hidden)[1], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"params: expected this module's params, a dict with one entry 'layer' "
                                         r"\(variables\['params'\]\[<the module's name>\]\), got \['params'\]"):
        rnn.jrnn_params(variables)
    named = dict(variables["params"]["RNN_0"]["layer"])
    named.pop(next(iter(named)))
    with pytest.raises(ValueError, match=r"params\['layer'\]: expected the entries .*; missing"):
        rnn.jrnn_params({"layer": named})

    module = jrnn.nnx.RNN(layer, 2, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(module(xs), layer(module.jrnn_params(), xs)[1], rtol=1e-6, atol=1e-6)
    module.set_jrnn_params(other)
    np.testing.assert_allclose(module(xs), layer(other, xs)[1], rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, module.jrnn_params(), other)
    wrong = layer.init(key, 3)
    with pytest.raises(ValueError, match=r"params.*w_x: expected shape \(2, .*\) and dtype float32 like this "
                                         r"module's, got \(3, .*\) float32"):
        module.set_jrnn_params(wrong)


def test_flax_trained_rnn_exports_to_torch(key):
    torch = pytest.importorskip("torch")
    from jrnn import interop

    layer = jrnn.stacked([jrnn.lstm(4), jrnn.lstm(4)])
    module = jrnn.nnx.RNN(layer, 3, rngs=nnx.Rngs(1))
    xs = np.asarray(jax.random.normal(key, (2, 5, 3)), np.float32)
    torch_lstm = interop.to_torch(layer, module.jrnn_params())
    with torch.no_grad():
        want = torch_lstm(torch.from_numpy(xs))[0].numpy()
    np.testing.assert_allclose(module(xs), want, rtol=1e-5, atol=1e-5)
