"""Streaming forecasts (cell.step) equal the scanned computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.data import Scaler
from jrnn.forecast import Forecaster, forecast


@pytest.mark.parametrize("cell", [jrnn.lstm(6), jrnn.gru(5, reset_after=True), jrnn.simple_rnn(4)])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_one_step_forecast_equals_scan(cell, num_layers, key):
    model = Forecaster(cell, input_size=3, output_size=2, num_layers=num_layers)
    params = model.init(key)
    history = jax.random.normal(key, (12, 3))
    want = model.apply(params, history[None])[0]
    got = forecast(model, params, history)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_forecast_equals_a_loop_of_steps_and_compiles_once(key):
    """The compiled forecast equals streaming ``model.step`` in Python (history, then
    forecasts fed back); rolling forecasts of one length reuse one compiled program."""
    from jrnn import forecast as forecast_module

    model = Forecaster(jrnn.gru(5), input_size=2, output_size=2, num_layers=2)
    params = model.init(key)
    series = np.asarray(jax.random.normal(key, (20, 2)))
    state, want = model.initial_state(), []
    for x_t in series[:12]:
        state, y = model.step(params, state, jnp.asarray(x_t, jnp.float32))
    for _ in range(3):
        want.append(np.asarray(y))
        state, y = model.step(params, state, y)
    np.testing.assert_allclose(forecast(model, params, series[:12], steps=3), want, rtol=1e-5, atol=1e-6)
    compiled = forecast_module._forecast._cache_size()
    for start in range(1, 6):
        forecast(model, params, series[start : start + 12], steps=3)
    assert forecast_module._forecast._cache_size() == compiled


def test_multi_step_forecast_is_autoregressive_scan(key):
    model = Forecaster(jrnn.lstm(6), input_size=2, output_size=2, num_layers=2)
    params = model.init(key)
    history = np.asarray(jax.random.normal(key, (10, 2)))
    got = forecast(model, params, history, steps=4)
    # The scan over history + the forecasts fed back gives the same outputs.
    inputs = np.concatenate([history, got[:-1]], axis=0)
    _, ys = model.network(params.rnn, jnp.asarray(inputs, jnp.float32))
    scanned = np.asarray(ys @ params.w_out + params.b_out[None])
    np.testing.assert_allclose(got, scanned[len(history) - 1 :], rtol=1e-5, atol=1e-6)


def test_forecast_in_original_units(key):
    model = Forecaster(jrnn.gru(4), input_size=2, output_size=1)
    params = model.init(key)
    scaler = Scaler(np.array([10.0, -3.0]), np.array([2.0, 5.0]))
    raw = np.asarray(jax.random.normal(key, (8, 2))) * [2.0, 5.0] + [10.0, -3.0]
    got = forecast(model, params, raw, scaler=scaler, feature_index=[0, 1], target_index=[1])
    scaled = forecast(model, params, scaler.transform(raw))
    np.testing.assert_allclose(got, scaled * 5.0 - 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match="steps: 2 needs the targets to be the features"):
        forecast(model, params, raw, steps=2, scaler=scaler, feature_index=[0, 1], target_index=[1])
    with pytest.raises(ValueError, match=r"history: expected shape \(L, 2\) or \(G, L, 2\) with G, L >= 1, "
                                         r"got \(8, 3\)"):
        forecast(model, params, np.zeros((8, 3)))
    with pytest.raises(ValueError, match=r"history: expected shape \(L, 2\) or \(G, L, 2\) with G, L >= 1, "
                                         r"got \(0, 2\)"):
        forecast(model, params, np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"with G, L >= 1, got \(0, 8, 2\)"):
        forecast(model, params, np.zeros((0, 8, 2)))
    with pytest.raises(ValueError, match="target_index: expected 1 of the scaler's 2 columns, got None"):
        forecast(model, params, raw, scaler=scaler)
    with pytest.raises(ValueError, match=r"feature_index: expected 2 column indexes in \[0, 2\), got \[0, 2\]"):
        forecast(model, params, raw, scaler=scaler, feature_index=[0, 2], target_index=[1])
    # Without indexes, a scaler with one column per input and output is used whole.
    square = Forecaster(jrnn.gru(4), input_size=2, output_size=2)
    square_params = square.init(key)
    np.testing.assert_array_equal(
        forecast(square, square_params, raw, steps=3, scaler=scaler),
        forecast(square, square_params, raw, steps=3, scaler=scaler, feature_index=[0, 1], target_index=[0, 1]))


def test_forecaster_is_a_jit_argument(key):
    """A Forecaster is a pytree with no leaves, like the cells it holds."""
    model = Forecaster(jrnn.gru(4), input_size=2, output_size=1, mode="sequence")
    params = model.init(key)
    xs = jax.random.normal(key, (3, 6, 2))
    apply = jax.jit(lambda model, params, xs: model.apply(params, xs))
    np.testing.assert_allclose(apply(model, params, xs), model.apply(params, xs), rtol=1e-12)
    last = Forecaster(jrnn.gru(4), input_size=2, output_size=1, mode="last")
    np.testing.assert_allclose(apply(last, params, xs), model.apply(params, xs)[:, -1], rtol=1e-12)


def test_out_steps_forecaster(key):
    """``out_steps=K``: one head of K*O outputs, read as (K, O); streaming equals the scanned apply."""
    model = Forecaster(jrnn.lstm(6), input_size=3, output_size=2, num_layers=2, out_steps=4)
    params = model.init(key)
    assert params.w_out.shape == (6, 8) and params.b_out.shape == (8,)
    history = jax.random.normal(key, (9, 3))
    scanned = model.apply(params, history[None])
    assert scanned.shape == (1, 4, 2)
    flat = model.network(params.rnn, history[None])[1][0, -1] @ params.w_out + params.b_out
    np.testing.assert_allclose(scanned[0], flat.reshape(4, 2), rtol=1e-6)  # step k is columns 2k, 2k+1
    np.testing.assert_allclose(forecast(model, params, history), scanned[0], rtol=1e-5, atol=1e-6)
    assert Forecaster.from_config(model.config()) == model
    with pytest.raises(ValueError, match="steps: 2 with a model that forecasts its next 4 steps at once"):
        forecast(model, params, history, steps=2)
    with pytest.raises(ValueError, match="out_steps: needs mode='last'"):
        Forecaster(jrnn.gru(3), input_size=1, output_size=1, mode="sequence", out_steps=2)


@pytest.mark.parametrize("out_steps,steps", [(None, 3), (4, 1)])
def test_several_series_at_once(key, out_steps, steps):
    """``history (G, L, F)``: each series' forecast equals its own call, each in its own
    units with a scaler per series; one compiled program for the batch."""
    from jrnn import forecast as forecast_module

    model = Forecaster(jrnn.lstm(6), input_size=2, output_size=2, out_steps=out_steps)
    params = model.init(key)
    histories = np.asarray(jax.random.normal(key, (3, 10, 2)))
    scalers = [Scaler(np.array([m, -m]), np.array([1.0 + m, 2.0])) for m in (0.0, 5.0, 50.0)]
    raw = np.stack([h * s.scale + s.mean for h, s in zip(histories, scalers)])
    got = forecast(model, params, raw, steps=steps, scaler=scalers)
    assert got.shape == (3, out_steps or steps, 2)
    for g in range(3):
        np.testing.assert_allclose(got[g], forecast(model, params, raw[g], steps=steps, scaler=scalers[g]),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forecast(model, params, histories, steps=steps, scaler=scalers[0]),
                               [forecast(model, params, h, steps=steps, scaler=scalers[0]) for h in histories],
                               rtol=1e-5, atol=1e-5)
    compiled = forecast_module._forecast._cache_size()
    forecast(model, params, raw[::-1], steps=steps, scaler=scalers)
    assert forecast_module._forecast._cache_size() == compiled
    with pytest.raises(ValueError, match=r"scaler: expected a Scaler, or one per series of history \(G, L, F\) = "
                                         r"\(3, 10, 2\), got 2 of \['Scaler'\]"):
        forecast(model, params, raw, steps=steps, scaler=scalers[:2])
    with pytest.raises(ValueError, match=r"scaler: expected a Scaler, or one per series"):
        forecast(model, params, raw[0], steps=steps, scaler=scalers[:1])
