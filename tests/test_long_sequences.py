"""Memory options for long sequences: segment checkpointing and truncated BPTT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn


@pytest.mark.parametrize("cell", [jrnn.lstm(4), jrnn.gru(3, reset_after=True), jrnn.gru(3)],
                         ids=["lstm", "gru_ra", "gru"])
@pytest.mark.parametrize("implementation", ["fused", "plain"])
@pytest.mark.parametrize("options", [{}, {"reverse": True}, {"seq_lengths": [23, 0, 9]}])
def test_checkpoint_every_changes_nothing(cell, implementation, options, key):
    params = cell.init(key, 2, jnp.float64)
    xs = jax.random.normal(key, (3, 23, 2), jnp.float64)  # 23 = 4 segments of 6, the last one padded
    options = {k: jnp.asarray(v) if k == "seq_lengths" else v for k, v in options.items()}

    def loss(params, xs, **extra):
        final, ys = jrnn.scan(cell, params, xs, implementation=implementation, **options, **extra)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c) for c in jax.tree.leaves(final))

    def value_and_grad(params, xs, **extra):  # the forward alone (no saved values), and the gradient
        return loss(params, xs, **extra), jax.grad(loss, argnums=(0, 1))(params, xs, **extra)

    # both in one program: compiling is most of this test's time
    (got, got_grad), (want, want_grad) = jax.jit(
        lambda params, xs: (value_and_grad(params, xs, checkpoint_every=6), value_and_grad(params, xs)))(params, xs)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13), got_grad, want_grad)


@pytest.mark.parametrize("reverse", [False, True])
def test_truncate_every_stops_gradients_between_chunks(reverse, key):
    cell = jrnn.gru(4)
    params = cell.init(key, 2, jnp.float64)
    xs = jax.random.normal(key, (2, 20, 2), jnp.float64)
    last = slice(0, 5) if reverse else slice(15, 20)  # the chunk processed last

    def loss(xs, **extra):
        _, ys = jrnn.scan(cell, params, xs, reverse=reverse, **extra)
        return jnp.sum(ys[:, last] ** 2)

    np.testing.assert_allclose(
        jrnn.scan(cell, params, xs, truncate_every=5)[1], jrnn.scan(cell, params, xs)[1], rtol=1e-14
    )
    full = jax.grad(loss)(xs)
    truncated = jax.grad(loss)(xs, truncate_every=5)
    earlier = np.ones(20, bool)
    earlier[last] = False
    assert np.abs(np.asarray(full)[:, earlier]).max() > 1e-6  # BPTT reaches back ...
    np.testing.assert_array_equal(np.asarray(truncated)[:, earlier], 0.0)  # ... truncation does not
    np.testing.assert_allclose(truncated[:, last], full[:, last], rtol=1e-12)


def test_memory_option_errors(key):
    cell = jrnn.lstm(2)
    params = cell.init(key, 1)
    with pytest.raises(ValueError, match="checkpoint_every: expected a positive int or None, got 0"):
        jrnn.scan(cell, params, jnp.ones((3, 1)), checkpoint_every=0)
    with pytest.raises(ValueError, match="expected at most one of them"):
        jrnn.scan(cell, params, jnp.ones((3, 1)), checkpoint_every=2, truncate_every=2)


@pytest.mark.parametrize("implementation", ["cudnn", "pallas"])
@pytest.mark.parametrize("option", ["checkpoint_every", "truncate_every"])
def test_segments_refused_where_the_whole_sequence_runs_at_once(implementation, option, key):
    """cuDNN and the Pallas kernels run the whole sequence in one call: segments
    are refused, not ignored (truncation would change the gradients)."""
    cell = jrnn.lstm(16)
    params = cell.init(key, 2)
    with pytest.raises(ValueError, match=f"{option}: implementation '{implementation}' runs the whole sequence"):
        jrnn.scan(cell, params, jnp.ones((1, 6, 2)), implementation=implementation, **{option: 3})
    # a segment as long as the sequence is no segment
    if implementation == "pallas":
        jrnn.scan(cell, params, jnp.ones((1, 6, 2)), implementation=implementation, **{option: 6})
