"""minGRU/minLSTM (parallel and sequential), mid-sequence resets, mixed precision."""

import itertools
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
from tests.helpers import CELL_IDS, CELLS, random_params


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def min_reference(kind, params, xs, h0):
    """Float64 loop of the paper's equations, one step at a time."""
    w, b = np.asarray(params.w_x, np.float64), np.asarray(params.b, np.float64)
    H = w.shape[1] // (2 if kind == "min_gru" else 3)
    h = np.asarray(h0, np.float64)
    out = []
    for x in np.moveaxis(np.asarray(xs, np.float64), -2, 0):
        a = x @ w + b
        if kind == "min_gru":
            z, h_tilde = sigmoid(a[..., :H]), a[..., H:]
            h = (1 - z) * h + z * h_tilde
        else:
            f, i, h_tilde = sigmoid(a[..., :H]), sigmoid(a[..., H : 2 * H]), a[..., 2 * H :]
            h = f / (f + i) * h + i / (f + i) * h_tilde
        out.append(h)
    return h, np.stack(out, axis=-2)


MIN_CELLS = [(jrnn.min_gru(4), "min_gru"), (jrnn.min_lstm(4), "min_lstm")]


@pytest.mark.parametrize("cell,kind", MIN_CELLS, ids=["min_gru", "min_lstm"])
@pytest.mark.parametrize("implementation", ["parallel", "plain"])
def test_min_cells_match_reference(cell, kind, implementation, key):
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (2, 3, 17, 3), jnp.float64)
    h0 = jax.random.normal(jax.random.fold_in(key, 1), (2, 3, 4), jnp.float64)
    final, ys = jrnn.scan(cell, params, xs, h0, implementation=implementation)
    want_final, want_ys = min_reference(kind, params, xs, h0)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final, want_final, rtol=1e-12, atol=1e-12)
    # streaming with cell.step gives the same
    carry, hs = h0, []
    for t in range(17):
        carry, h = cell.step(params, carry, xs[..., t, :])
        hs.append(h)
    np.testing.assert_allclose(jnp.stack(hs, axis=-2), want_ys, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,kind", MIN_CELLS, ids=["min_gru", "min_lstm"])
def test_min_cells_grad_finite_differences(cell, kind, key):
    params = random_params(cell, key, 2)
    xs = jax.random.normal(key, (2, 6, 2), jnp.float64)
    loss = lambda p, x: jnp.sum(jnp.sin(jrnn.scan(cell, p, x, seq_lengths=jnp.array([6, 3]))[1]))
    check_grads(loss, (params, xs), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("cell,kind", MIN_CELLS, ids=["min_gru", "min_lstm"])
def test_long_sequence_parallel_equals_loop(cell, kind, key):
    """T = 4096 in float32: decay products far below float32's range stay exact in log space."""
    params = cell.init(key, 3)
    params = params._replace(b=params.b.at[: cell.hidden_size].add(2.0 if kind == "min_gru" else -2.0))
    xs = jax.random.normal(key, (2, 4096, 3), jnp.float32)
    final, ys = jax.jit(lambda p, x: jrnn.scan(cell, p, x))(params, xs)
    want_final, want_ys = min_reference(kind, params, xs, np.zeros((2, 4)))
    np.testing.assert_allclose(ys, want_ys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(final, want_final, rtol=1e-4, atol=1e-5)
    loss = lambda p, impl: jnp.mean(jrnn.scan(cell, p, xs, implementation=impl)[1] ** 2)
    g_par = jax.jit(jax.grad(lambda p: loss(p, "parallel")))(params)
    g_seq = jax.jit(jax.grad(lambda p: loss(p, "plain")))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), g_par, g_seq)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(g_par))


@pytest.mark.parametrize("cell,kind", MIN_CELLS, ids=["min_gru", "min_lstm"])
@pytest.mark.parametrize("options", [{}, {"reverse": True}, {"seq_lengths": [9, 4]},
                                     {"seq_lengths": [9, 4], "reverse": True}])
def test_parallel_equals_sequential_with_options(cell, kind, options, key):
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (2, 9, 3), jnp.float64)
    resets = jnp.zeros((2, 9), bool).at[0, 3].set(True).at[1, 6].set(True)
    options = {k: jnp.asarray(v) if k == "seq_lengths" else v for k, v in options.items()}

    def loss(p, impl):
        final, ys = jrnn.scan(cell, p, xs, resets=resets, implementation=impl, **options)
        return jnp.sum(ys**3) + jnp.sum(final)

    np.testing.assert_allclose(loss(params, "parallel"), loss(params, "plain"), rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12),
                 jax.grad(loss)(params, "parallel"), jax.grad(loss)(params, "plain"))


ALL_CELLS = CELLS + [("min_gru", jrnn.min_gru(5), "min_gru", {}), ("min_lstm", jrnn.min_lstm(5), "min_lstm", {})]


@pytest.mark.parametrize("name,cell,kind,opts", ALL_CELLS, ids=CELL_IDS + ["min_gru", "min_lstm"])
def test_resets_equal_separate_segments(name, cell, kind, opts, key):
    params = random_params(cell, key, 3)
    xs = jax.random.normal(key, (2, 10, 3), jnp.float64)
    carry = jax.tree.map(lambda c: c + 0.5, cell.initial_carry((2,), jnp.float64))
    resets = jnp.zeros((2, 10), bool).at[0, 4].set(True).at[1, 7].set(True).at[1, 2].set(True)
    final, ys = jrnn.scan(cell, params, xs, carry, resets=resets)
    for b, cuts in ((0, [0, 4, 10]), (1, [0, 2, 7, 10])):
        c_b = jax.tree.map(operator.itemgetter(b), carry)
        for start, stop in itertools.pairwise(cuts):
            seg_final, seg_ys = jrnn.scan(cell, params, xs[b, start:stop], c_b)
            np.testing.assert_allclose(ys[b, start:stop], seg_ys, rtol=1e-12, atol=1e-12)
        final_b = jax.tree.map(operator.itemgetter(b), final)
        jax.tree.map(lambda f, s: np.testing.assert_allclose(f, s, rtol=1e-12), final_b, seg_final)
    checkpointed = jrnn.scan(cell, params, xs, carry, resets=resets, checkpoint_every=3)[1]
    np.testing.assert_allclose(checkpointed, ys, rtol=1e-12, atol=1e-12)


def test_reset_errors(key):
    cell = jrnn.lstm(3)
    params = cell.init(key, 2)
    with pytest.raises(TypeError, match="resets: expected a bool dtype, got int32"):
        jrnn.scan(cell, params, jnp.ones((2, 5, 2)), resets=jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"resets: expected shape \(2, 5\), got \(5, 2\)"):
        jrnn.scan(cell, params, jnp.ones((2, 5, 2)), resets=jnp.zeros((5, 2), bool))
    with pytest.raises(ValueError, match="'fused' does not support resets"):
        jrnn.scan(cell, params, jnp.ones((2, 5, 2)), resets=jnp.zeros((2, 5), bool), implementation="fused")
    with pytest.raises(ValueError, match="'parallel' needs a minGRU/minLSTM cell"):
        jrnn.scan(cell, params, jnp.ones((2, 5, 2)), implementation="parallel")


@pytest.mark.parametrize("cell", [jrnn.lstm(32), jrnn.gru(32), jrnn.min_gru(32), jrnn.min_lstm(32)],
                         ids=["lstm", "gru", "min_gru", "min_lstm"])
def test_bfloat16_with_float32_carry(cell, key):
    """bf16 params and inputs, float32 carry: error against float32 compute stays small over T=1000."""
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), cell.init(key, 8))
    xs = jax.random.normal(jax.random.key(1), (4, 1000, 8)).astype(jnp.bfloat16)
    as_f32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)
    want = jrnn.scan(cell, as_f32(params), as_f32(xs))[1]
    final, mixed = jrnn.scan(cell, params, xs, carry_dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(final)) and mixed.dtype == jnp.float32
    all_bf16 = jrnn.scan(cell, params, xs)[1].astype(jnp.float32)
    mixed_err = float(jnp.abs(mixed - want).max())
    assert mixed_err < 1e-2
    assert mixed_err < float(jnp.abs(all_bf16 - want).max())


def test_min_cells_in_layers_and_flax(key):
    net = jrnn.stacked([jrnn.bidirectional(jrnn.min_gru(4)), jrnn.min_lstm(3)])
    params = net.init(key, 2)
    _, ys = net(params, jnp.ones((2, 7, 2)), seq_lengths=jnp.array([7, 3]))
    assert ys.shape == (2, 7, 3) and bool((ys[1, 3:] == 0).all())
    from jrnn.linen import RNN

    module = RNN(jrnn.min_lstm(3))
    variables = module.init(key, jnp.ones((2, 7, 2)))
    assert module.apply(variables, jnp.ones((2, 7, 2))).shape == (2, 7, 3)
    assert jrnn.from_config(jrnn.min_gru(4).config()) == jrnn.min_gru(4)
