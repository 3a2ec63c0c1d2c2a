"""Every documented error: the right type, the argument named, expected and actual given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn


@pytest.fixture
def lstm_setup(key):
    cell = jrnn.lstm(4)
    return cell, cell.init(key, 3)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "make_call,error,message",
    [
        (lambda c, p: jrnn.scan(c, p, jnp.ones((3,))), ValueError,
         r"xs: expected rank >= 2 \(\*batch, T, input_size\), got shape \(3,\)"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 7))), ValueError,
         r"xs: expected input_size 3 on the last axis \(params.w_x has shape \(3, 16\)\), got 7"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3), jnp.int32)), TypeError,
         "xs: expected a floating dtype, got int32"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), jrnn.LSTMState(jnp.zeros((2, 4)), jnp.zeros((3, 4)))),
         ValueError, r"carry.c: expected shape \(2, 4\), got \(3, 4\)"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), jnp.zeros((2, 4))), ValueError,
         r"carry: expected an LSTMState\(h, c\), got one array \(\*batch, hidden_size\)(?!;)"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), (jnp.zeros((2, 4)), jnp.zeros((2, 4)))), ValueError,
         (r"carry: expected an LSTMState\(h, c\), got a tuple of 2; a Flax LSTM's \(c, h\) carry converts with "
         r"jrnn.interop.carry_from_flax")),
        (lambda c, p: jrnn.gru(4)(jrnn.gru(4).init(jax.random.key(0), 3), jnp.ones((2, 5, 3)),
                                  jrnn.LSTMState(jnp.zeros((2, 4)), jnp.zeros((2, 4)))), ValueError,
         r"carry: expected one array \(\*batch, hidden_size\), got an LSTMState\(h, c\)"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([1, 2, 3])), ValueError,
         r"seq_lengths: expected shape \(2,\), got \(3,\)"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([1.0, 2.0])), TypeError,
         "seq_lengths: expected an integer dtype, got float"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), dropout=-0.1), ValueError,
         r"dropout: expected a rate in \[0, 1\), got -0.1"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), unroll=0), ValueError,
         "unroll: expected a positive int, a bool or None, got 0"),
        (lambda c, p: jrnn.scan(c, p, jnp.ones((2, 5, 3)), reverse="yes"), TypeError,
         "reverse: expected a bool, got str"),
        (lambda c, p: jrnn.scan(c, p._replace(b=jnp.zeros(15)), jnp.ones((2, 5, 3))), ValueError,
         r"params.b: expected shape \(16,\), got \(15,\)"),
        (lambda c, p: jrnn.scan(c, jrnn.SimpleRNNParams(*p), jnp.ones((2, 5, 3))), TypeError,
         "params: expected LSTMParams for a lstm cell, got SimpleRNNParams"),
        (lambda c, p: jrnn.scan(c, p._replace(w_h=jnp.zeros((4, 16), jnp.int32)), jnp.ones((2, 5, 3))),
         TypeError, "params.w_h: expected a floating dtype, got int32"),
        (lambda c, p: jrnn.scan(c, p._replace(b=p.b.astype(jnp.bfloat16)), jnp.ones((2, 5, 3))), TypeError,
         r"params.b: expected the dtype of params.w_x \(float32\), got bfloat16; cast all params to one dtype"),
        (lambda c, p: jrnn.scan(jrnn.bidirectional(c), p, jnp.ones((2, 5, 3))), TypeError,
         (r"cell: expected a jrnn cell \(jrnn.simple_rnn, .*\), got Bidirectional; a layer \(jrnn.bidirectional, "
         r"jrnn.stacked\) runs as layer\(params, xs\)")),
        (lambda c, p: jrnn.scan("lstm", p, jnp.ones((2, 5, 3))), TypeError,
         r"cell: expected a jrnn cell \(.*\), got str(?!;)"),
        (lambda c, p: c.step(p, c.initial_carry(2), jnp.ones((2, 5))), ValueError,
         r"x_t: expected input_size 3 on the last axis \(params.w_x has shape \(3, 16\)\), got 5"),
    ],
)
def test_scan_errors(lstm_setup, make_call, error, message, jit):
    cell, params = lstm_setup
    call = (lambda p: make_call(cell, p)) if not jit else jax.jit(lambda p: make_call(cell, p))
    with pytest.raises(error, match=message):
        call(params)


def test_seq_lengths_out_of_range_outside_jit(lstm_setup):
    cell, params = lstm_setup
    with pytest.raises(ValueError, match=r"seq_lengths: expected values in \[0, 5\] \(T\), got min -1 and max 6"):
        jrnn.scan(cell, params, jnp.ones((2, 5, 3)), seq_lengths=np.array([-1, 6]))


@pytest.mark.parametrize(
    "factory,error,message",
    [
        (lambda: jrnn.lstm(0), ValueError, "hidden_size: expected a positive int, got 0"),
        (lambda: jrnn.lstm(2.5), TypeError, "hidden_size: expected a positive int, got float"),
        (lambda: jrnn.gru(3, reset_after="no"), TypeError, "reset_after: expected a bool, got str"),
        (lambda: jrnn.simple_rnn(3, activation="sigmoid"), ValueError,
         r"activation: expected one of \('tanh', 'relu'\), got 'sigmoid'"),
        (lambda: jrnn.lstm(3, init="glorot"), ValueError,
         r"init: expected one of \('default', 'keras', 'pytorch', 'flax'\), got 'glorot'"),
        (lambda: jrnn.lstm(3, init=3), TypeError, "init: expected one of"),
        (lambda: jrnn.lstm(3).init(jax.random.key(0), 0), ValueError, "input_size: expected a positive int, got 0"),
        (lambda: jrnn.gru(3).init(jax.random.key(0), 2, jnp.int32), TypeError,
         "dtype: expected a floating dtype, got int32"),
        (lambda: jrnn.min_gru(3).init(jax.random.key(0), 2, jnp.int8), TypeError,
         "dtype: expected a floating dtype, got int8"),
        (lambda: jrnn.bidirectional(jrnn.lstm(3), jrnn.lstm(4), merge="sum"), ValueError,
         r"merge: 'sum' needs equal output sizes, got 3 \(forward\) and 4 \(backward\)"),
        (lambda: jrnn.gru(3).check_params(jrnn.gru(3, reset_after=True).init(jax.random.key(0), 2)),
         ValueError, "params.b_hn: expected None for this cell, got an array"),
        (lambda: jrnn.lstm(3).initial_carry((2, -1)), ValueError,
         r"batch_shape: expected non-negative ints, got \(2, -1\)"),
        (lambda: jrnn.count_params({"w": jnp.ones(3), "name": "lstm"}), TypeError,
         "params: expected a pytree of arrays, got a leaf of type str"),
        (lambda: jrnn.lstm(3).init(0, 2), TypeError,
         r"key: expected a JAX PRNG key \(jax.random.key\(seed\)\), got int 0"),
        (lambda: jrnn.min_lstm(3).init(None, 2), TypeError, "key: expected a JAX PRNG key .*, got NoneType None"),
        (lambda: jrnn.stacked([jrnn.lstm(3), jrnn.gru(2)]).init(1, 2), TypeError, "key: expected a JAX PRNG key"),
        (lambda: jrnn.bidirectional(jrnn.lstm(3)).init(jnp.ones(2), 2), TypeError,
         "key: expected a JAX PRNG key .*, got an array of dtype float"),
        (lambda: jrnn.data.windows(np.ones(10), 3), ValueError,
         r"array: expected shape \(N, F\), got \(10,\); for one series pass array\[:, None\]"),
    ],
)
def test_construction_errors(factory, error, message):
    with pytest.raises(error, match=message):
        factory()


def test_legacy_keys_and_numpy_float64_inputs_pass_quietly():
    """``jax.random.PRNGKey`` keys are keys too; NumPy float64 inputs (what np.random gives)
    run in float32 without JAX's "explicitly requested dtype float64" warning when x64 is
    off (this suite turns x64 on, so the check runs in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings, jax, numpy as np, jrnn\n"
        "warnings.simplefilter('error')\n"
        "cell = jrnn.lstm(4); params = cell.init(jax.random.PRNGKey(0), 2)\n"
        "net = jrnn.stacked([jrnn.bidirectional(jrnn.gru(3)), cell])\n"
        "xs = np.random.default_rng(0).normal(size=(2, 5, 2))\n"
        "_, ys = net(net.init(jax.random.PRNGKey(1), 2), xs, seq_lengths=np.array([5, 2]))\n"
        "assert jrnn.scan(cell, params, xs, seq_lengths=[5, 3])[1].dtype == ys.dtype == np.float32\n"
    )
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]


def test_windows_of_a_dataframe_are_its_values():
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6.0) * 10})
    np.testing.assert_array_equal(jrnn.data.windows(frame, 3, stride=2), jrnn.data.windows(frame.to_numpy(), 3, 2))
