"""Diagnostics against finite differences and explicit unrolls; the vanishing-gradient property."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import datasets, diagnostics, gradient_study
from tests import reference
from tests.helpers import random_params


@pytest.mark.parametrize("cell,kind",
                         [(jrnn.simple_rnn(3), "simple_rnn"), (jrnn.lstm(3), "lstm"), (jrnn.gru(3), "gru")])
def test_gradient_norms_equal_finite_differences(cell, kind, key):
    params = random_params(cell, key, 2)
    xs = jax.random.normal(key, (2, 5, 2), jnp.float64)
    w = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (2, 5, 3), jnp.float64))
    loss = lambda ys: jnp.sum(jnp.asarray(w) * ys**2)
    norms = np.asarray(diagnostics.gradient_norms(cell, params, xs, loss))
    # Explicit unroll with the NumPy reference: perturb h_t of one sequence and re-run the rest.
    eps = 1e-6
    for b in range(2):
        for t in range(5):
            grad = np.zeros(3)
            for k in range(3):
                vals = []
                for sign in (1, -1):
                    state = (np.zeros(3), np.zeros(3)) if kind == "lstm" else np.zeros(3)
                    total = 0.0
                    for s in range(5):
                        state, h = reference.step(kind, params, state, np.asarray(xs[b, s]))
                        if s == t:
                            h = h.copy()
                            h[k] += sign * eps
                            state = (h, state[1]) if kind == "lstm" else h
                        total += np.sum(w[b, s] * h**2)
                    vals.append(total)
                grad[k] = (vals[0] - vals[1]) / (2 * eps)
            np.testing.assert_allclose(norms[b, t], np.linalg.norm(grad), rtol=1e-6)


def test_jacobian_spectrum_equals_explicit_jacobian(key):
    cell = jrnn.lstm(3)
    params = random_params(cell, key, 2)
    xs = jax.random.normal(key, (4, 2), jnp.float64)
    sigma, rho = diagnostics.jacobian_spectrum(cell, params, xs)
    state = (np.zeros(3), np.zeros(3))
    eps = 1e-6
    for t in range(4):
        x = np.asarray(xs[t])
        flat = np.concatenate(state)
        jac = np.zeros((6, 6))
        for k in range(6):
            plus, minus = flat.copy(), flat.copy()
            plus[k] += eps
            minus[k] -= eps
            f = lambda s, x=x: np.concatenate(reference.step("lstm", params, (s[:3], s[3:]), x)[0])
            jac[:, k] = (f(plus) - f(minus)) / (2 * eps)
        np.testing.assert_allclose(sigma[t], np.linalg.svd(jac, compute_uv=False)[0], rtol=1e-6)
        np.testing.assert_allclose(rho[t], np.abs(np.linalg.eigvals(jac)).max(), rtol=1e-6)
        state = reference.step("lstm", params, state, x)[0]
    batched_sigma, _ = diagnostics.jacobian_spectrum(cell, params, jnp.stack([xs, xs]))
    np.testing.assert_allclose(batched_sigma[1], sigma, rtol=1e-12)


def test_state_statistics_saturation(key):
    cell = jrnn.lstm(4)
    params = random_params(cell, key, 2, scale=3.0)
    xs = jax.random.normal(key, (5, 6, 2), jnp.float64) * 4
    stats = diagnostics.state_statistics(cell, params, xs, eps=1e-3)
    assert set(stats) == {"carry_norm", "cell_norm", "saturation_i", "saturation_f", "saturation_g", "saturation_o"}
    # Recount the forget gate's saturation from the reference equations.
    state = (np.zeros((5, 4)), np.zeros((5, 4)))
    for t in range(6):
        H = 4
        hx = np.concatenate([state[0], np.asarray(xs[:, t])], axis=-1)
        W = np.concatenate([np.asarray(params.w_h), np.asarray(params.w_x)])
        f = reference.sigmoid(hx @ W[:, H : 2 * H] + np.asarray(params.b)[H : 2 * H])
        np.testing.assert_allclose(stats["saturation_f"][t], np.mean((f < 1e-3) | (f > 1 - 1e-3)))
        outs = [reference.step("lstm", params, (state[0][b], state[1][b]), np.asarray(xs[b, t]))[0] for b in range(5)]
        state = (np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]))
        np.testing.assert_allclose(stats["carry_norm"][t], np.linalg.norm(state[0], axis=-1).mean(), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_simple_rnn_gradient_vanishes_far_faster_than_lstm(seed):
    """SimpleRNN with recurrent spectral norm 0.5 vs LSTM with forget bias 1, T = 100."""
    X, Y = datasets.adding_problem(32, 100, seed=seed)
    ratios = {}
    for variant in gradient_study.variants():
        if variant.label in ("SimpleRNN |w|=0.5", "LSTM"):
            model, params = gradient_study.init_params(variant, jax.random.key(seed))
            ratios[variant.label] = gradient_study.gradient_profile(model, params, X, Y)[1]
    assert ratios["SimpleRNN |w|=0.5"] < 1e-3 * ratios["LSTM"]


def test_adding_problem():
    X, Y = datasets.adding_problem(100, 20, seed=3)
    assert X.shape == (100, 20, 2) and Y.shape == (100, 1)
    np.testing.assert_allclose(Y[:, 0], (X[..., 0] * X[..., 1]).sum(axis=1), rtol=1e-6)
    assert (X[:, :10, 1].sum(axis=1) == 1).all() and (X[:, 10:, 1].sum(axis=1) == 1).all()
    X2, _ = datasets.adding_problem(100, 20, seed=3)
    np.testing.assert_array_equal(X, X2)


def test_train_step_memory_is_xlas_temp_bytes_or_none():
    from jrnn._report import xla_temp_bytes
    from jrnn.forecast import Forecaster

    model = Forecaster(jrnn.gru(4), 2, 1)
    X, Y = jnp.ones((8, 6, 2)), jnp.ones((8, 1))
    memory = gradient_study.train_step_memory(model, model.init(jax.random.key(0)), (X, Y))
    assert isinstance(memory, int) and memory >= 0
    assert xla_temp_bytes(object()) is None  # a backend without memory analysis


@pytest.mark.parametrize("diagnose", [
    lambda c, p, x: diagnostics.gradient_norms(c, p, x, lambda ys: ys.sum()),
    diagnostics.jacobian_spectrum, diagnostics.state_statistics, diagnostics.first_nonfinite_step,
], ids=["gradient_norms", "jacobian_spectrum", "state_statistics", "first_nonfinite_step"])
def test_diagnostics_check_their_inputs_as_scan_does(diagnose, key):
    cell = jrnn.gru(3)
    params = cell.init(key, 2)
    with pytest.raises(ValueError, match=r"xs: expected input_size 2 on the last axis .*, got 5"):
        diagnose(cell, params, jnp.ones((1, 4, 5)))
    with pytest.raises(ValueError, match=r"xs: expected rank >= 2 \(\*batch, T, input_size\), got shape \(4,\)"):
        diagnose(cell, params, jnp.ones(4))
    with pytest.raises(TypeError, match=r"cell: expected a jrnn cell .*, got Bidirectional; diagnostics take one cell"):
        diagnose(jrnn.bidirectional(cell), jrnn.bidirectional(cell).init(key, 2), jnp.ones((1, 4, 2)))
