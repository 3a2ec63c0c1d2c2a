"""Cells under test and small helpers shared by the test modules."""

import jax
import jax.numpy as jnp
import numpy as np

import jrnn

# (id, cell, reference kind, reference options)
CELLS = [
    ("simple_rnn", jrnn.simple_rnn(5), "simple_rnn", {}),
    ("simple_rnn_relu", jrnn.simple_rnn(5, activation="relu"), "simple_rnn", {"activation": "relu"}),
    ("lstm", jrnn.lstm(5), "lstm", {}),
    ("gru", jrnn.gru(5), "gru", {}),
    ("gru_reset_after", jrnn.gru(5, reset_after=True), "gru", {"reset_after": True}),
]
CELL_IDS = [c[0] for c in CELLS]


def random_params(cell, key, input_size, dtype=jnp.float64, scale=0.6):
    """Params with every entry random (biases too), so no gate hides behind a zero."""
    params = cell.init(key, input_size, dtype)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [scale * jax.random.normal(k, leaf.shape, dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(tree, leaves)


def random_carry(cell, key, batch_shape, dtype=jnp.float64):
    zeros = cell.initial_carry(batch_shape, dtype)
    leaves, tree = jax.tree.flatten(zeros)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, l.shape, dtype) for k, l in zip(keys, leaves)])


def to_ref_carry(carry):
    return tuple(np.asarray(c) for c in carry) if isinstance(carry, jrnn.LSTMState) else np.asarray(carry)


def assert_carry_close(got, want, **tol):
    got = tuple(got) if isinstance(got, jrnn.LSTMState) else (got,)
    want = tuple(want) if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, **tol)
