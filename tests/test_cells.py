"""Cells against the float64 NumPy reference; streaming equals scanning."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from tests import reference
from tests.helpers import CELL_IDS, CELLS, assert_carry_close, random_carry, random_params, to_ref_carry


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_step_matches_reference(name, cell, kind, opts, batch_shape, key):
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = random_params(cell, k_p, 4)
    carry = random_carry(cell, k_c, batch_shape)
    x = jax.random.normal(k_x, (*batch_shape, 4), jnp.float64)
    new_carry, h = cell.step(params, carry, x)
    assert h.shape == (*batch_shape, 5)
    flat_x = np.asarray(x).reshape(-1, 4)
    flat_carry = jax.tree.map(lambda c: np.asarray(c).reshape(-1, 5), to_ref_carry(carry))
    flat_new_carry = jax.tree.map(lambda c: np.asarray(c).reshape(-1, 5), new_carry)
    for b in range(flat_x.shape[0]):
        state = tuple(c[b] for c in flat_carry) if kind == "lstm" else flat_carry[b]
        want_carry, want_h = reference.step(kind, params, state, flat_x[b], **opts)
        np.testing.assert_allclose(np.asarray(h).reshape(-1, 5)[b], want_h, rtol=1e-12, atol=1e-12)
        got_carry = jax.tree.map(operator.itemgetter(b), flat_new_carry)
        assert_carry_close(got_carry, want_carry, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 2)])
def test_scan_matches_reference(name, cell, kind, opts, batch_shape, key):
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = random_params(cell, k_p, 3)
    carry = random_carry(cell, k_c, batch_shape)
    xs = jax.random.normal(k_x, (*batch_shape, 6, 3), jnp.float64)
    final, ys = jrnn.scan(cell, params, xs, carry)
    want_final, want_ys = reference.run(kind, params, xs, to_ref_carry(carry), **opts)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    assert_carry_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
def test_step_loop_equals_scan(name, cell, kind, opts, key):
    """Streaming inference (cell.step in a Python loop) equals the scanned computation."""
    k_p, k_x = jax.random.split(key)
    params = cell.init(k_p, 3, jnp.float32)
    xs = jax.random.normal(k_x, (4, 7, 3), jnp.float32)
    carry = cell.initial_carry((4,), jnp.float32)
    outputs = []
    for t in range(7):
        carry, h = cell.step(params, carry, xs[:, t])
        outputs.append(h)
    final, ys = jrnn.scan(cell, params, xs)
    np.testing.assert_allclose(ys, jnp.stack(outputs, axis=1), rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), final, carry)


@pytest.mark.parametrize(
    "cell,expected",
    [
        # Keras: SimpleRNN/LSTM/GRU(reset_after=False) with 32 units on 2 features.
        (jrnn.simple_rnn(32), 32 * (2 + 32) + 32),
        (jrnn.lstm(32), 4480),
        (jrnn.gru(32), 3360),
        # reset_after adds b_hn (H,) to the 3H bias.
        (jrnn.gru(32, reset_after=True), 3360 + 32),
    ],
)
def test_count_params(cell, expected, key):
    assert jrnn.count_params(cell.init(key, 2)) == expected


def test_param_shapes_and_types(key):
    assert isinstance(jrnn.lstm(6).init(key, 3), jrnn.LSTMParams)
    p = jrnn.gru(6).init(key, 3)
    assert isinstance(p, jrnn.GRUParams) and p.b_hn is None
    assert p.w_x.shape == (3, 18) and p.w_h.shape == (6, 18) and p.b.shape == (18,)
    p = jrnn.simple_rnn(6).init(key, 3)
    assert isinstance(p, jrnn.SimpleRNNParams) and p.w_h.shape == (6, 6)
    carry = jrnn.lstm(6).initial_carry((2, 3))
    assert isinstance(carry, jrnn.LSTMState) and carry.h.shape == (2, 3, 6) and carry.c.shape == (2, 3, 6)


def test_config_round_trip():
    for cell in [jrnn.lstm(4, init="pytorch"), jrnn.gru(3, reset_after=True), jrnn.simple_rnn(2, activation="relu")]:
        assert jrnn.from_config(cell.config()) == cell
    with pytest.raises(ValueError, match=r"config\['kind'\]"):
        jrnn.from_config({"kind": "transformer", "hidden_size": 3})


def test_cells_are_hashable_static_config():
    assert jrnn.lstm(4) == jrnn.lstm(4) and hash(jrnn.lstm(4)) == hash(jrnn.lstm(4))
    assert jrnn.gru(4) != jrnn.gru(4, reset_after=True)


@pytest.mark.parametrize("batch_shape", [(), (3,)])
def test_projected_lstm_matches_reference(batch_shape, key):
    """LSTMP against the float64 reference: values over padded sequences, both directions,
    and gradients (checked against finite differences)."""
    from jax.test_util import check_grads

    cell = jrnn.lstm(5, proj_size=3)
    k_p, k_h, k_c, k_x = jax.random.split(key, 4)
    params = random_params(cell, k_p, 4)
    assert [a.shape for a in params] == [(4, 20), (3, 20), (20,), (5, 3)]
    carry = jrnn.LSTMState(jax.random.normal(k_h, (*batch_shape, 3), jnp.float64),
                           jax.random.normal(k_c, (*batch_shape, 5), jnp.float64))
    xs = jax.random.normal(k_x, (*batch_shape, 6, 4), jnp.float64)
    lengths = np.minimum(np.arange(6, 6 - int(np.prod(batch_shape)), -1), 6).reshape(batch_shape)
    for reverse in (False, True):
        final, ys = jrnn.scan(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse)
        want_final, want_ys = reference.run("lstm", params, xs, (carry.h, carry.c), seq_lengths=lengths,
                                            reverse=reverse)
        assert ys.shape == (*batch_shape, 6, 3) and final.c.shape == (*batch_shape, 5)
        np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
        assert_carry_close(final, want_final, rtol=1e-12, atol=1e-12)
    check_grads(lambda p, x: jrnn.scan(cell, p, x, carry)[1].sum(), (params, xs), order=1, modes=["rev"])
    assert jrnn.count_params(params) == 4 * 20 + 3 * 20 + 20 + 5 * 3
    assert jrnn.from_config(cell.config()) == cell
    layer = jrnn.bidirectional(cell)
    assert layer(layer.init(key, 4), xs)[1].shape == (*batch_shape, 6, 6)  # 2 * P
    from jrnn.forecast import Forecaster

    model = Forecaster(cell, input_size=4, output_size=2, num_layers=2)
    model_params = model.init(key)
    assert model_params.w_out.shape == (3, 2) and model_params.rnn[1].w_x.shape == (3, 20)
    assert model.apply(model_params, xs).shape == (*batch_shape, 2)
    with pytest.raises(ValueError, match="proj_size: expected a positive int, got 0"):
        jrnn.lstm(5, proj_size=0)
    with pytest.raises(ValueError, match=r"params.w_hr: expected shape \(5, 3\), got \(5, 2\)"):
        jrnn.scan(cell, params._replace(w_hr=params.w_hr[:, :2]), xs)
