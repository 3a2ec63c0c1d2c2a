"""Data parallelism on CPU devices: where do jrnn's native loops split with the batch?

The same LSTM gradient (of the sum of all outputs, with respect to the params)
on a batch sharded over every device, three ways: inside ``jax.shard_map`` (one
native call per device, on its shard), and under ``jax.jit``'s automatic
sharding with the native loops (one custom call that XLA does not split) and
with the XLA loops (which it splits); and the whole batch on one device. Then
one training step of a forecaster on the same data, as ``jrnn.train.fit(...,
mesh=mesh)`` runs it (``shard_map`` over the batch) and under automatic sharding.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/sharded.py
    python benchmarks/sharded.py --quick
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jrnn
from jrnn.bench import Contender, machine_info, time_interleaved
from jrnn.forecast import Forecaster
from jrnn.kernels import native
from jrnn.train import TrainState, make_train_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    B, T, I, H = (4 * jax.device_count(), 5, 3, 8) if args.quick else (64, 100, 32, 128)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    cell = jrnn.lstm(H)
    params = jax.device_put(cell.init(jax.random.key(0), I), NamedSharding(mesh, P()))
    xs = jax.device_put(jax.random.normal(jax.random.key(1), (B, T, I)), NamedSharding(mesh, P("data")))
    grad = jax.grad(lambda p, x: jnp.sum(jrnn.scan(cell, p, x)[1]))

    def contender(name, fn, args=(params, xs)):
        compiled = jax.jit(fn).lower(*args).compile()  # traced here: native.disabled() applies
        run = lambda: jax.block_until_ready(compiled(*args))
        return Contender(name, run, run)

    items = [contender("shard_map, native loops", jax.shard_map(grad, mesh=mesh, in_specs=(P(), P("data")),
                                                                 out_specs=P())),
             contender("automatic sharding, native loops", grad),
             contender("one device, native loops", grad, jax.device_put((params, xs), jax.devices()[0]))]
    with native.disabled():
        items.append(contender("automatic sharding, XLA loops", grad))
    model, tx = Forecaster(cell, I, 1), optax.adam(1e-3)
    weights = model.init(jax.random.key(0))
    state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), weights, tx.init(weights)), NamedSharding(mesh, P()))
    ys = jax.device_put(jnp.zeros((B, 1)), NamedSharding(mesh, P("data")))
    step_args = (state, xs, ys, jax.random.key(2))
    for name, step_mesh in (("train step, shard_map (fit with a mesh)", mesh),
                            ("train step, automatic sharding", None)):
        items.append(contender(name, make_train_step(model.apply, tx, mesh=step_mesh), step_args))
    print(f"# machine: {machine_info()}")
    print(f"# LSTM B={B} T={T} I={I} H={H}, float32, gradient; devices: {jax.device_count()}, "
          f"native loops: {native.available()}")
    medians = time_interleaved(items, 3 if args.quick else args.repeats)
    print("| contender | fwd+bwd (+ Adam) ms |\n|---|---:|")
    for item in items:
        print(f"| {item.name} | {medians[item.name]['backward']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
