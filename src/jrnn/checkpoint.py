"""Checkpoints: one NumPy ``.npz`` file per step, written atomically.

Each step is ``DIR/step_00000042.npz`` holding the leaves of a pytree of
arrays (params, optimizer state, ...) and a JSON description (cell
configuration, data scaling, training step, history). A save writes a
temporary file in the same folder, flushes it to disk and renames it into
place (``os.replace``), so a crash or kill mid-save leaves every earlier step
intact and never exposes a half-written file. The zip container's CRCs catch
a file truncated or damaged later.

Restoring needs the tree structure of the arrays: callers rebuild it from the
description (:func:`read_meta`) and pass it as ``like``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from typing import Any

import jax
import numpy as np

FORMAT = "jrnn-checkpoint-1"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.npz$")
_META_KEY = "__jrnn_meta__"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not a jrnn checkpoint."""


def step_path(directory, step: int) -> str:
    return os.path.join(directory, f"step_{step:08d}.npz")


def steps(directory) -> list[int]:
    """Complete steps in ``directory``, oldest first (temporary files are ignored)."""
    if not os.path.isdir(directory):
        return []
    found = (_STEP_FILE.match(name) for name in os.listdir(directory))
    return sorted(int(m.group(1)) for m in found if m)


def latest_step(directory) -> int | None:
    """The newest complete step in ``directory`` (``None`` if there is none)."""
    found = steps(directory)
    return found[-1] if found else None


def save(directory, step: int, arrays, meta: dict[str, Any], *, max_to_keep: int | None = 3) -> str:
    """Write step ``step`` (a pytree of arrays and JSON ``meta``) atomically.

    Keeps the newest ``max_to_keep`` steps (``None``: all). Returns the file's path.
    """
    os.makedirs(directory, exist_ok=True)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(arrays)]
    payload = {f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    payload[_META_KEY] = np.asarray(json.dumps({"format": FORMAT, "num_leaves": len(leaves), **meta}))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        final = step_path(directory, step)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)
    if max_to_keep is not None:
        for old in steps(directory)[:-max_to_keep]:
            os.remove(step_path(directory, old))
    return final


def _fsync_dir(directory) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(directory, step):
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint: no such directory: {directory}")
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"checkpoint: no jrnn checkpoint (step_*.npz) in {directory}")
    path = step_path(directory, step)
    try:
        archive = np.load(path, allow_pickle=False)
        meta = json.loads(str(archive[_META_KEY]))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: no step {step} in {directory}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint: {path} is damaged or not a jrnn checkpoint ({_short(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a jrnn checkpoint (format {FORMAT} expected)")
    return step, path, archive, meta


def read_meta(directory, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """``(step, meta)`` of the newest (or the given) step.

    Raises:
      CheckpointError: no checkpoint there, or one that is damaged or foreign.
    """
    step, _, archive, meta = _open(directory, step)
    archive.close()
    return step, meta


def restore(directory, like, step: int | None = None):
    """The arrays of the newest (or the given) step, with the tree structure of ``like``;
    NumPy arrays, except where ``like`` has arrays on a mesh (``NamedSharding``):
    those come back with the same sharding.

    Raises:
      CheckpointError: missing, damaged, or arrays that do not fit ``like``.
    """
    step, path, archive, meta = _open(directory, step)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = [leaf for _, leaf in with_paths]
    with archive:
        if meta.get("num_leaves") != len(expected):
            raise CheckpointError(
                f"checkpoint: {path} holds {meta.get('num_leaves')} arrays, expected {len(expected)}"
            )
        leaves = []
        for i, want in enumerate(expected):
            try:
                got = archive[f"leaf_{i}"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise CheckpointError(f"checkpoint: {path} is damaged ({_short(err)})") from None
            if got.shape != np.shape(want):
                name = jax.tree_util.keystr(with_paths[i][0], simple=True, separator=".")
                raise CheckpointError(
                    f"checkpoint: array {i} ({name}) in {path} has shape {got.shape}, expected {np.shape(want)}"
                )
            dtype = want.dtype if hasattr(want, "dtype") else np.asarray(want).dtype
            leaves.append(_placed_like(want, got.astype(dtype, copy=False)))
    return jax.tree.unflatten(treedef, leaves)


def _placed_like(want, array: np.ndarray):
    if isinstance(getattr(want, "sharding", None), jax.sharding.NamedSharding):
        return jax.device_put(array, want.sharding)
    return array


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
