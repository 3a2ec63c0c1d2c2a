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


def scan_loss_problem(cell, key, dtype=jnp.float32, scale=0.4, scan=None):
    """A small problem for derivative tests: ``(loss, primals, key)`` with
    ``loss(params, carry, xs, implementation) = Σ sin(ys) + Σ carry²`` of
    ``scan(params, carry, xs, implementation)`` (default: ``jrnn.scan``), random
    ``primals = (params, carry, xs)`` (batch 3, T = 4, I = 3; params times ``scale``)
    and a key left for tangents."""
    k_p, k_c, k_x, k_v = jax.random.split(key, 4)
    params = random_params(cell, k_p, 3, dtype, scale=scale)
    carry = random_carry(cell, k_c, (3,), dtype)
    xs = jax.random.normal(k_x, (3, 4, 3), dtype)
    if scan is None:
        scan = lambda params, carry, xs, impl: jrnn.scan(cell, params, xs, carry, implementation=impl)

    def loss(params, carry, xs, impl):
        final, ys = scan(params, carry, xs, impl)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    return loss, (params, carry, xs), k_v


def assert_derivatives_equal(loss, primals, key, implementation, tol, reference="plain",
                             run=lambda fn, *args: jax.jit(fn)(*args)):
    """``loss(*primals, implementation)`` has the derivatives of ``loss(*primals,
    reference)``, all computed by one ``run`` per implementation: forward mode
    (``jax.jvp`` along random tangents, in every argument), and derivatives of the
    gradient (in every argument): reverse over reverse (a gradient penalty), forward over reverse (a
    Hessian-vector product) and ``jax.hessian`` in the last argument, and forward
    over forward there; each entry within ``tol`` relative to itself or to the
    largest entry of its array."""
    leaves, tree = jax.tree.flatten(primals)
    tangents = jax.tree.unflatten(tree, [jax.random.normal(k, leaf.shape, leaf.dtype)
                                         for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)])
    argnums = tuple(range(len(primals)))
    gradient = lambda impl: lambda *args: jax.grad(loss, argnums=argnums)(*args, impl)
    last_argument = lambda impl, primals: lambda last: loss(*primals[:-1], last, impl)
    derivatives = {
        "forward mode": lambda impl, primals, tangents: jax.jvp(lambda *a: loss(*a, impl), primals, tangents),
        "forward over forward": lambda impl, primals, tangents: jax.jacfwd(jax.jacfwd(
            last_argument(impl, primals)))(primals[-1]),
        "gradient penalty": lambda impl, primals, tangents: jax.grad(
            lambda *a: sum(jnp.sum(g**2) for g in jax.tree.leaves(gradient(impl)(*a))), argnums=argnums)(*primals),
        "Hessian-vector product": lambda impl, primals, tangents: jax.jvp(gradient(impl), primals, tangents)[1],
        "Hessian in the last argument": lambda impl, primals, tangents: jax.hessian(
            last_argument(impl, primals))(primals[-1]),
    }
    # all five in one program per implementation: one compilation each, which is most of these tests' time
    every = lambda impl: lambda primals, tangents: {what: derivative(impl, primals, tangents)
                                                    for what, derivative in derivatives.items()}
    got, want = (run(every(impl), primals, tangents) for impl in (implementation, reference))
    for what in derivatives:
        for a, b in zip(jax.tree.leaves(got[what]), jax.tree.leaves(want[what]), strict=True):
            scale = max(1.0, float(np.abs(b).max(initial=0.0)))  # sums of many float32 terms: off by tol · largest
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)
