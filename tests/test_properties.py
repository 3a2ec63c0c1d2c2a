"""Property-based tests of the public API: finite, well-shaped results or a clear error."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jrnn

FACTORIES = {
    "simple_rnn": jrnn.simple_rnn, "lstm": jrnn.lstm, "gru": jrnn.gru,
    "gru_ra": lambda h: jrnn.gru(h, reset_after=True), "min_gru": jrnn.min_gru, "min_lstm": jrnn.min_lstm,
}
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float64, jnp.int32, jnp.float16]
ARGUMENT = re.compile(r"^(xs|carry[.\w]*|seq_lengths|params[.\w]*|resets|unroll|dropout|recurrent_dropout|"
                      r"implementation|reverse|time_major|x_t|carry_dtype): ")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def scan_calls(draw):
    kind = draw(st.sampled_from(sorted(FACTORIES)))
    hidden = draw(st.integers(1, 4))
    input_size = draw(st.integers(1, 3))
    batch = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    steps = draw(st.integers(0, 5))
    x_dtype = draw(st.sampled_from(DTYPES))
    xs_input = draw(st.integers(1, 3))  # may differ from input_size
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(-2, 7), min_size=0, max_size=4)))
    return dict(kind=kind, hidden=hidden, input_size=input_size, batch=batch, steps=steps, x_dtype=x_dtype,
                xs_input=xs_input, lengths=lengths, reverse=draw(st.booleans()), jit=draw(st.booleans()),
                bad_param=draw(st.sampled_from([None, "b", "w_x", "dtype"])), seed=draw(st.integers(0, 2**16)))


def _call(case):
    cell = FACTORIES[case["kind"]](case["hidden"])
    params = cell.init(jax.random.key(case["seed"]), case["input_size"])
    if case["bad_param"] == "b":
        params = params._replace(b=params.b[:-1])
    elif case["bad_param"] == "w_x":
        params = params._replace(w_x=params.w_x[:, :-1])
    elif case["bad_param"] == "dtype":
        params = params._replace(b=params.b.astype(jnp.int32))
    rng = np.random.default_rng(case["seed"])
    xs = jnp.asarray(rng.normal(size=(*case["batch"], case["steps"], case["xs_input"])) * 3).astype(case["x_dtype"])
    options = {"reverse": case["reverse"]}
    if case["lengths"] is not None:
        lengths = np.asarray(case["lengths"], np.int32)
        one_per_sequence = lengths.size == np.prod(case["batch"], dtype=int)
        options["seq_lengths"] = lengths.reshape(case["batch"]) if one_per_sequence else lengths
    run = lambda p, x: jrnn.scan(cell, p, x, **options)
    return cell, (jax.jit(run) if case["jit"] else run)(params, xs)


@SETTINGS
@given(scan_calls())
def test_scan_returns_finite_shaped_results_or_names_the_argument(case):
    try:
        _, (carry, ys) = _call(case)
    except (ValueError, TypeError) as err:
        assert ARGUMENT.match(str(err)), f"error does not name its argument: {err!r}"
        return
    assert ys.shape == (*case["batch"], case["steps"], case["hidden"])
    for leaf in jax.tree.leaves(carry):
        assert leaf.shape == (*case["batch"], case["hidden"])
    assert all(np.isfinite(np.asarray(a, np.float32)).all() for a in (ys, *jax.tree.leaves(carry)))
    if case["lengths"] is not None and ys.size:
        lengths = np.clip(np.asarray(case["lengths"]).reshape(case["batch"]), 0, case["steps"])
        padding = np.arange(case["steps"]) >= lengths[..., None]
        assert np.all(np.asarray(ys, np.float32)[padding] == 0)


@SETTINGS
@given(kind=st.sampled_from(sorted(FACTORIES)), batch=st.lists(st.integers(1, 3), max_size=2),
       carry_batch=st.lists(st.integers(1, 3), max_size=2), extra=st.integers(0, 1))
def test_wrong_carry_is_refused_not_broadcast(kind, batch, carry_batch, extra):
    cell = FACTORIES[kind](3)
    params = cell.init(jax.random.key(0), 2)
    carry = cell.initial_carry(tuple(carry_batch))
    if extra:
        carry = jax.tree.map(lambda c: jnp.concatenate([c, c[..., :1]], axis=-1), carry)
    xs = jnp.ones((*batch, 4, 2))
    run = lambda: jax.eval_shape(lambda c: jrnn.scan(cell, params, xs, c), carry)  # shapes are checked while tracing
    if tuple(carry_batch) == tuple(batch) and not extra:
        run()
        return
    try:
        run()
    except ValueError as err:
        assert str(err).startswith("carry")
    else:
        raise AssertionError("a carry of the wrong shape was accepted")
