"""Params pytrees as nested dicts of named arrays, for frameworks that want names.

``{"w_x": ..., "w_h": ..., "b": ...}`` for a cell, ``{"0": {...}, "1": {...}}``
for a stack, ``{"forward": {...}, "backward": {...}}`` for a bidirectional
layer. ``None`` fields (a reset-before GRU's ``b_hn``) are left out.
"""

from __future__ import annotations

import jax


def _name(entry) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise TypeError(f"unsupported pytree key {entry!r}")


def to_named(params) -> dict:
    """jrnn params -> nested dict of arrays."""
    named: dict = {}
    for path, leaf in jax.tree.flatten_with_path(params)[0]:
        node = named
        *parents, last = [_name(p) for p in path]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return named


def from_named(template, named):
    """Nested dict of arrays -> params with the structure of ``template``."""
    paths, treedef = jax.tree.flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        node = named
        for p in path:
            node = node[_name(p)]
        leaves.append(node)
    return jax.tree.unflatten(treedef, leaves)


def _paths(tree) -> set[str]:
    return {"/".join(_name(p) for p in path) for path, _ in jax.tree.flatten_with_path(tree)[0]}


def checked_from_named(layer, named, name: str):
    """Named arrays (a Flax module's) -> ``layer``'s params, checked against it.

    Raises:
      ValueError: entries missing or extra (naming ``name`` and the entries), or arrays of
        the wrong shapes. TypeError: arrays of the wrong dtypes.
    """
    template = jax.eval_shape(lambda: layer.init(jax.random.key(0), 1))  # only the structure is used
    expected, given = _paths(template), _paths(named)
    if expected != given:
        problems = [f"{label} {', '.join(sorted(paths))}" for label, paths in
                    (("missing", expected - given), ("unexpected", given - expected)) if paths]
        raise ValueError(f"{name}: expected the entries {', '.join(sorted(expected))} "
                         f"for this {type(layer).__name__}; {'; '.join(problems)}")
    params = from_named(template, named)
    layer.check_params(params)
    return params


def run_layer(layer, params, xs, *, seq_lengths, initial_carry, reverse, time_major, unroll, rates, dropout_key,
              implementation):
    """Call a jrnn cell or layer with the options the Flax adapters expose."""
    options = {"seq_lengths": seq_lengths, "time_major": time_major, "unroll": unroll, "dropout_key": dropout_key,
               "implementation": implementation}
    if reverse:
        options["reverse"] = True
    if any(rates.values()):
        options.update(rates)
    return layer(params, xs, initial_carry, **options)
