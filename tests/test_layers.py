"""Bidirectional and stacked layers against manual compositions of jrnn.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn

LENGTHS = jnp.array([5, 0, 3])


@pytest.mark.parametrize("merge", ["concat", "sum", "mean", "product"])
@pytest.mark.parametrize("seq_lengths", [None, LENGTHS])
def test_bidirectional_is_forward_and_reverse(merge, seq_lengths, key):
    layer = jrnn.bidirectional(jrnn.lstm(4), jrnn.lstm(4), merge=merge)
    params = jax.tree.map(lambda a: a * 3, layer.init(key, 2, jnp.float64))
    xs = jax.random.normal(key, (3, 5, 2), jnp.float64)
    (c_f, c_b), ys = layer(params, xs, seq_lengths=seq_lengths)
    want_cf, ys_f = jrnn.scan(layer.forward, params.forward, xs, seq_lengths=seq_lengths)
    want_cb, ys_b = jrnn.scan(layer.backward, params.backward, xs, seq_lengths=seq_lengths, reverse=True)
    merged = {"concat": jnp.concatenate([ys_f, ys_b], -1), "sum": ys_f + ys_b,
              "mean": (ys_f + ys_b) / 2, "product": ys_f * ys_b}[merge]
    np.testing.assert_allclose(ys, merged, rtol=1e-14)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-14), (c_f, c_b), (want_cf, want_cb))
    assert ys.shape[-1] == layer.output_size()
    if seq_lengths is not None:  # the backward pass starts at each sequence's last valid step
        xs_flipped = xs.at[2, :3].set(xs[2, :3][::-1])
        _, ys_manual = jrnn.scan(layer.backward, params.backward, xs_flipped[2:, :3])
        np.testing.assert_allclose(ys_b[2, :3], ys_manual[0, ::-1], rtol=1e-12)


def test_bidirectional_with_different_cells(key):
    layer = jrnn.bidirectional(jrnn.gru(3), jrnn.simple_rnn(5))
    params = layer.init(key, 2)
    _, ys = layer(params, jnp.ones((4, 6, 2)))
    assert ys.shape == (4, 6, 8)
    with pytest.raises(ValueError, match="merge"):
        jrnn.bidirectional(jrnn.gru(3), jrnn.simple_rnn(5), merge="sum").output_size()


@pytest.mark.parametrize("seq_lengths", [None, LENGTHS])
def test_stacked_equals_layer_by_layer(seq_lengths, key):
    net = jrnn.stacked([jrnn.lstm(4), jrnn.bidirectional(jrnn.gru(3)), jrnn.simple_rnn(2)])
    params = net.init(key, 2, jnp.float64)
    xs = jax.random.normal(key, (3, 5, 2), jnp.float64)
    carries, ys = net(params, xs, seq_lengths=seq_lengths)
    c0, h = jrnn.scan(net.layers[0], params[0], xs, seq_lengths=seq_lengths)
    c1, h = net.layers[1](params[1], h, seq_lengths=seq_lengths)
    c2, h = jrnn.scan(net.layers[2], params[2], h, seq_lengths=seq_lengths)
    np.testing.assert_allclose(ys, h, rtol=1e-14)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-14), carries, (c0, c1, c2))
    assert params[1].forward.w_x.shape == (4, 9) and params[2].w_x.shape == (6, 2)


def test_stacked_and_bidirectional_under_jit_and_grad(key):
    net = jrnn.stacked([jrnn.bidirectional(jrnn.lstm(4)), jrnn.gru(3)], dropout=0.2, recurrent_dropout=0.1)
    params = net.init(key, 2)
    xs = jax.random.normal(key, (3, 5, 2))

    def loss(params, dropout_key):
        _, ys = net(params, xs, seq_lengths=LENGTHS, dropout_key=dropout_key)
        return jnp.mean(ys**2)

    eager = jax.grad(loss)(params, jax.random.key(1))
    jitted = jax.jit(jax.grad(loss))(params, jax.random.key(1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), eager, jitted)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jitted))
    assert any(np.abs(leaf).sum() > 0 for leaf in jax.tree.leaves(jitted))


@pytest.mark.parametrize("make_layer", [
    lambda act: jrnn.simple_rnn(4, activation=act),
    lambda act: jrnn.min_gru(4, init={"tanh": "default", "relu": "pytorch"}[act]),
    lambda act: jrnn.stacked([jrnn.simple_rnn(4, activation=act), jrnn.gru(3)]),
    lambda act: jrnn.bidirectional(jrnn.lstm(3), jrnn.simple_rnn(3, activation=act)),
], ids=["cell", "min_cell", "stacked", "bidirectional"])
def test_layers_pass_through_transformations_as_arguments(make_layer, key):
    """Cells and layers are pytrees with no leaves: jit, grad and vmap take them
    as ordinary arguments, and jit compiles once per distinct configuration."""
    tanh_layer, relu_layer = make_layer("tanh"), make_layer("relu")
    xs = jax.random.normal(key, (2, 5, 2))
    params = tanh_layer.init(key, 2)
    assert jax.tree.leaves(tanh_layer) == []

    run = jax.jit(lambda layer, params, xs: layer(params, xs)[1])
    np.testing.assert_allclose(run(tanh_layer, params, xs), tanh_layer(params, xs)[1], rtol=1e-12)
    run(make_layer("tanh"), params, xs)  # an equal layer reuses the compiled program
    assert run._cache_size() == 1
    np.testing.assert_allclose(run(relu_layer, params, xs), relu_layer(params, xs)[1], rtol=1e-12)
    assert run._cache_size() == 2

    layer_grad, params_grad = jax.grad(lambda layer, p: jnp.sum(layer(p, xs)[1] ** 2), argnums=(0, 1))(
        tanh_layer, params)
    assert layer_grad == tanh_layer
    jax.tree.map(np.testing.assert_allclose, params_grad,
                 jax.grad(lambda p: jnp.sum(tanh_layer(p, xs)[1] ** 2))(params))

    stacked_params = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
    ys = jax.vmap(lambda layer, p: layer(p, xs)[1], in_axes=(None, 0))(tanh_layer, stacked_params)
    np.testing.assert_allclose(ys[1], tanh_layer(jax.tree.map(lambda a: 2 * a, params), xs)[1], rtol=1e-12)


def test_stacked_dropout_between_layers(key):
    """PyTorch-style dropout acts on every layer's outputs but the last's."""
    net = jrnn.stacked([jrnn.gru(4), jrnn.gru(4)], dropout=0.5)
    params = net.init(key, 3)
    xs = jax.random.normal(key, (2, 6, 3))
    plain = net(params, xs)[1]
    dropped = net(params, xs, dropout_key=jax.random.key(2))[1]
    again = net(params, xs, dropout_key=jax.random.key(2))[1]
    assert not np.allclose(plain, dropped)
    np.testing.assert_array_equal(dropped, again)
    single = jrnn.stacked([jrnn.gru(4)], dropout=0.5)  # nothing between layers to drop
    np.testing.assert_array_equal(single(params[:1], xs, dropout_key=key)[1],
                                  jrnn.scan(net.layers[0], params[0], xs)[1])


def test_layer_errors(key):
    with pytest.raises(ValueError, match="layers: expected at least one layer"):
        jrnn.stacked([])
    with pytest.raises(TypeError, match=r"layers\[1\]: expected a jrnn cell or layer, got int"):
        jrnn.stacked([jrnn.lstm(2), 3])
    with pytest.raises(TypeError, match="layers: expected a sequence of cells or layers, got LSTMCell"):
        jrnn.stacked(jrnn.lstm(2))
    with pytest.raises(ValueError, match=r"dropout: expected a rate in \[0, 1\), got 1.5"):
        jrnn.stacked([jrnn.lstm(2)], dropout=1.5)
    with pytest.raises(ValueError, match="merge: expected one of"):
        jrnn.bidirectional(jrnn.lstm(2), merge="max")
    net = jrnn.stacked([jrnn.lstm(2), jrnn.lstm(2)])
    with pytest.raises(ValueError, match="params: expected a tuple of 2 layer params, got 1"):
        net(net.init(key, 3)[:1], jnp.ones((1, 4, 3)))
    layer = jrnn.bidirectional(jrnn.lstm(2))
    with pytest.raises(TypeError, match="reverse: not an option"):
        layer(layer.init(key, 3), jnp.ones((1, 4, 3)), reverse=True)
