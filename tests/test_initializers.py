"""Initialiser presets reproduce the documented Keras, PyTorch and Flax defaults."""

import jax
import numpy as np
import pytest

import jrnn

H, I = 16, 5


def _orthonormal_rows(w):
    np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-5)


@pytest.mark.parametrize("preset", ["default", "keras"])
def test_default_is_keras(preset, key):
    p = jrnn.lstm(H, init=preset).init(key, I)
    bound = np.sqrt(6 / (I + 4 * H))  # Glorot-uniform over the whole (I, 4H) kernel
    assert np.abs(p.w_x).max() <= bound and np.abs(p.w_x).max() > 0.9 * bound
    _orthonormal_rows(np.asarray(p.w_h))  # orthogonal (H, 4H): orthonormal rows
    b = np.asarray(p.b).reshape(4, H)
    np.testing.assert_array_equal(b[1], 1.0)  # forget-gate bias 1, a parameter
    np.testing.assert_array_equal(b[[0, 2, 3]], 0.0)
    for cell in (jrnn.gru(H), jrnn.simple_rnn(H)):
        np.testing.assert_array_equal(cell.init(key, I).b, 0.0)


def test_pytorch_preset(key):
    bound = 1 / np.sqrt(H)
    p = jrnn.gru(H, reset_after=True, init="pytorch").init(key, I)
    for w in (p.w_x, p.w_h, p.b_hn):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(p.b).max() <= 2 * bound  # b_ih + b_hh
    assert np.abs(p.b).max() > bound  # a single uniform could not get here
    p = jrnn.lstm(H, init="pytorch").init(key, I)
    assert np.abs(np.asarray(p.b)[H : 2 * H]).max() <= 2 * bound  # no forget bias


def test_flax_preset(key):
    p = jrnn.lstm(H, init="flax").init(key, I)
    w_h = np.asarray(p.w_h)
    for k in range(4):  # each gate's (H, H) block is orthogonal
        block = w_h[:, k * H : (k + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    np.testing.assert_array_equal(p.b, 0.0)
    assert abs(np.std(np.asarray(p.w_x)) - 1 / np.sqrt(I)) < 0.25 / np.sqrt(I)  # LeCun-normal


def test_custom_initializer(key):
    init = jrnn.initializers.Initializer(
        jax.nn.initializers.ones, jax.nn.initializers.zeros, jax.nn.initializers.zeros,
        jax.nn.initializers.zeros, forget_bias=2.0,
    )
    p = jrnn.lstm(3, init=init).init(key, 2)
    np.testing.assert_array_equal(p.w_x, 1.0)
    np.testing.assert_array_equal(np.asarray(p.b).reshape(4, 3)[1], 2.0)


def test_same_key_same_params(key):
    a = jrnn.lstm(4).init(key, 3)
    b = jrnn.lstm(4).init(key, 3)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = jrnn.lstm(4).init(jax.random.key(1), 3)
    assert not np.allclose(a.w_x, c.w_x)
