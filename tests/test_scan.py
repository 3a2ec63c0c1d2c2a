"""The scan driver: padding, reverse, time-major, BPTT gradients, dtypes, dropout, tracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
from tests import reference
from tests.helpers import CELL_IDS, CELLS, assert_carry_close, random_carry, random_params, to_ref_carry


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "batch_shape,lengths",
    [((4,), [6, 0, 3, 1]), ((2, 3), [[6, 5, 0], [2, 6, 4]]), ((), 4)],
)
def test_seq_lengths_equal_unpadded_runs(name, cell, kind, opts, reverse, batch_shape, lengths, key):
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = random_params(cell, k_p, 3)
    carry = random_carry(cell, k_c, batch_shape)
    xs = jax.random.normal(k_x, (*batch_shape, 6, 3), jnp.float64)
    lengths = jnp.asarray(lengths, jnp.int32)
    final, ys = jrnn.scan(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse)
    want_final, want_ys = reference.run(
        kind, params, xs, to_ref_carry(carry), seq_lengths=lengths, reverse=reverse, **opts
    )
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    assert_carry_close(final, want_final, rtol=1e-12, atol=1e-12)
    # Padding outputs are exactly zero; length 0 returns the initial carry exactly.
    mask = np.arange(6) >= np.asarray(lengths)[..., None]
    assert np.all(np.asarray(ys)[mask] == 0)
    if batch_shape == (4,):
        jax.tree.map(lambda f, c: np.testing.assert_array_equal(f[1], c[1]), final, carry)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
def test_reverse_equals_flipped_forward(name, cell, kind, opts, key):
    k_p, k_x = jax.random.split(key)
    params = random_params(cell, k_p, 3)
    xs = jax.random.normal(k_x, (2, 5, 3), jnp.float64)
    final_r, ys_r = jrnn.scan(cell, params, xs, reverse=True)
    final_f, ys_f = jrnn.scan(cell, params, xs[:, ::-1])
    np.testing.assert_allclose(ys_r, ys_f[:, ::-1], rtol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), final_r, final_f)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
def test_time_major_equals_batch_major(name, cell, kind, opts, key):
    k_p, k_x = jax.random.split(key)
    params = random_params(cell, k_p, 3)
    xs = jax.random.normal(k_x, (2, 3, 5, 3), jnp.float64)  # two batch dims
    lengths = jnp.array([[5, 1, 3], [0, 2, 5]])
    final_b, ys_b = jrnn.scan(cell, params, xs, seq_lengths=lengths)
    final_t, ys_t = jrnn.scan(cell, params, jnp.moveaxis(xs, -2, 0), seq_lengths=lengths, time_major=True)
    np.testing.assert_allclose(jnp.moveaxis(ys_t, 0, -2), ys_b, rtol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13), final_t, final_b)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("options", [{}, {"reverse": True}, {"seq_lengths": [4, 2, 0]}])
def test_grad_is_bptt(name, cell, kind, opts, options, key):
    """jax.grad through jrnn.scan equals central finite differences (float64)."""
    if name == "simple_rnn_relu":
        pytest.skip("relu kinks make finite differences unreliable")
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = random_params(cell, k_p, 2)
    carry = random_carry(cell, k_c, (3,))
    xs = jax.random.normal(k_x, (3, 4, 2), jnp.float64)
    options = {k: (jnp.asarray(v) if k == "seq_lengths" else v) for k, v in options.items()}
    weights = jax.random.normal(jax.random.fold_in(key, 7), (3, 4, 5), jnp.float64)

    def loss(params, carry, xs):
        final, ys = jrnn.scan(cell, params, xs, carry, **options)
        return jnp.sum(weights * ys) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    check_grads(loss, (params, carry, xs), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_dtype_is_kept(name, cell, kind, opts, dtype, key):
    params = cell.init(key, 3, dtype)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    xs = jnp.ones((2, 4, 3), dtype)
    final, ys = jrnn.scan(cell, params, xs, seq_lengths=jnp.array([4, 2]))
    assert ys.dtype == dtype
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(final))
    grads = jax.grad(lambda p: jrnn.scan(cell, p, xs)[1].astype(jnp.float32).sum())(params)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(grads))


def test_float32_carry_with_bfloat16_params_stays_float32(key):
    cell = jrnn.lstm(4)
    params = cell.init(key, 3, jnp.bfloat16)
    carry = cell.initial_carry((2,), jnp.float32)
    final, _ = jrnn.scan(cell, params, jnp.ones((2, 5, 3), jnp.bfloat16), carry)
    assert final.c.dtype == jnp.float32 and final.h.dtype == jnp.float32


@pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
def test_jitted_step_does_not_retrace(name, cell, kind, opts, key):
    traces = []

    @jax.jit
    def run(params, xs):
        traces.append(1)
        return jrnn.scan(cell, params, xs, seq_lengths=jnp.array([3, 1]))

    params = cell.init(key, 3, jnp.float32)
    for i in range(3):
        jax.block_until_ready(run(params, jnp.full((2, 3, 3), float(i), jnp.float32)))
    assert len(traces) == 1


@pytest.mark.parametrize("unroll", [2, 5, True])
def test_unroll_does_not_change_values(unroll, key):
    cell = jrnn.lstm(4)
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (2, 7, 3), jnp.float64)
    np.testing.assert_allclose(
        jrnn.scan(cell, params, xs, unroll=unroll)[1], jrnn.scan(cell, params, xs)[1], rtol=1e-13
    )


@pytest.mark.parametrize("backend,steps", [("gpu", 16), ("cpu", 1)])
def test_default_unroll_is_sixteen_steps_on_a_gpu(backend, steps, key, monkeypatch):
    """``unroll=None`` (the default) puts 16 time steps in each loop iteration on a
    GPU, where each iteration costs kernel launches, and 1 elsewhere."""
    import importlib

    scan_module = importlib.import_module("jrnn.scan")
    cell = jrnn.lstm(4)
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (2, 11, 3), jnp.float64)
    want = jrnn.scan(cell, params, xs, implementation="plain", unroll=1)[1]
    seen, lax_scan = [], jax.lax.scan

    def spy(*args, unroll=1, **kwargs):
        seen.append(unroll)
        return lax_scan(*args, unroll=unroll, **kwargs)

    monkeypatch.setattr(scan_module.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax.lax, "scan", spy)
    jax.clear_caches()  # trace again: the call above compiled this configuration
    got = jrnn.scan(cell, params, xs, implementation="plain")[1]
    assert seen == [steps]
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_no_batch_dims(key):
    cell = jrnn.gru(4)
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (6, 3), jnp.float64)
    final, ys = jrnn.scan(cell, params, xs)
    want_final, want_ys = reference.run("gru", params, xs)
    assert ys.shape == (6, 4) and final.shape == (4,)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12)
    np.testing.assert_allclose(final, want_final, rtol=1e-12)


def test_lengths_clip_under_jit(key):
    """Under jit the lengths cannot be checked; out-of-range values clip to [0, T]."""
    cell = jrnn.simple_rnn(3)
    params = random_params(cell, key, 2)
    xs = jax.random.normal(key, (2, 4, 2), jnp.float64)
    run = jax.jit(lambda lengths: jrnn.scan(cell, params, xs, seq_lengths=lengths)[1])
    np.testing.assert_array_equal(run(jnp.array([9, -3])), run(jnp.array([4, 0])))


class TestVariationalDropout:
    """Keras-style dropout: one mask per sequence, the same at every step."""

    def _identity_rnn(self, size):
        eye = jnp.eye(size, dtype=jnp.float64)
        return jrnn.simple_rnn(size), jrnn.SimpleRNNParams(eye, eye, jnp.zeros(size, jnp.float64))

    def test_input_mask_is_shared_over_time(self, key):
        cell, params = self._identity_rnn(6)
        params = params._replace(w_h=jnp.zeros((6, 6), jnp.float64))  # h_t = tanh(x_t * m)
        xs = jax.random.uniform(key, (8, 20, 6), jnp.float64, 0.5, 1.0)
        _, ys = jrnn.scan(cell, params, xs, dropout=0.5, dropout_key=jax.random.key(3))
        mask = np.arctanh(np.asarray(ys)) / np.asarray(xs)  # (batch, time, features)
        np.testing.assert_allclose(mask, np.broadcast_to(mask[:, :1], mask.shape), atol=1e-9)
        assert set(np.round(np.unique(mask), 9)) == {0.0, 2.0}

    def test_recurrent_mask_is_shared_over_time(self, key):
        cell, params = self._identity_rnn(6)  # h_t = tanh(x_t + m * h_{t-1})
        xs = jax.random.uniform(key, (8, 10, 6), jnp.float64, 0.1, 0.3)
        _, ys = jrnn.scan(cell, params, xs, recurrent_dropout=0.4, dropout_key=jax.random.key(4))
        ys = np.asarray(ys)
        mask = (np.arctanh(ys[:, 1:]) - np.asarray(xs)[:, 1:]) / ys[:, :-1]
        np.testing.assert_allclose(mask, np.broadcast_to(mask[:, :1], mask.shape), atol=1e-9)
        np.testing.assert_allclose(sorted(set(np.round(mask.ravel(), 9))), [0.0, 1 / 0.6], rtol=1e-9)

    def test_no_key_means_inference(self, key):
        cell = jrnn.lstm(4)
        params = cell.init(key, 3)
        xs = jax.random.normal(key, (2, 5, 3))
        plain = jrnn.scan(cell, params, xs)[1]
        np.testing.assert_array_equal(jrnn.scan(cell, params, xs, dropout=0.5, recurrent_dropout=0.5)[1], plain)
        dropped = jrnn.scan(cell, params, xs, dropout=0.5, recurrent_dropout=0.5, dropout_key=key)[1]
        assert not np.allclose(dropped, plain)

    @pytest.mark.parametrize("name,cell,kind,opts", CELLS, ids=CELL_IDS)
    def test_recurrent_dropout_only_touches_recurrent_products(self, name, cell, kind, opts, key):
        """With a mask of ones (rate 0 path) the result is unchanged; with a
        mask the step equals the reference run on ``h * m`` in the products."""
        params = random_params(cell, key, 3)
        carry = random_carry(cell, key, (2,))
        x = jax.random.normal(key, (2, 3), jnp.float64)
        ones = jnp.ones((2, 5), jnp.float64)
        projected = cell.project_input(params, x)
        got = cell.recurrent_step(params, carry, projected, ones)
        want = cell.recurrent_step(params, carry, projected)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, want)


@pytest.mark.parametrize("cell", [jrnn.lstm(3), jrnn.gru(3, reset_after=True), jrnn.min_gru(3)],
                         ids=["lstm", "gru", "min_gru"])
@pytest.mark.parametrize("shape", [(2, 0, 2), (0, 4, 2)], ids=["no-steps", "no-batch"])
def test_empty_time_or_batch(cell, shape, key):
    """Found by the property tests: zero steps or an empty batch work, gradients too."""
    params = cell.init(key, 2)
    xs = jnp.ones(shape)
    final, ys = jrnn.scan(cell, params, xs)
    assert ys.shape == (*shape[:2], 3)
    jax.tree.map(lambda c: np.testing.assert_array_equal(c, 0.0), final)
    grads = jax.grad(lambda p: jnp.sum(jrnn.scan(cell, p, xs)[1]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
