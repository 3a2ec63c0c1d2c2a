"""Writing a command's outputs: JSON and PNG figures (matplotlib, headless), and
the memory figures they report."""

from __future__ import annotations

import json
import os


def write_json(result: dict, out_dir: str, json_path: str | None, default_name: str) -> str:
    """Write ``result`` to ``json_path`` (default ``out_dir/default_name``); return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = json_path or os.path.join(out_dir, default_name)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return path


def xla_temp_bytes(compiled) -> int | None:
    """XLA's temporary memory (bytes) of a compiled program, or ``None`` where the
    backend has no memory analysis."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is not available on every backend
        return None


def figure(size=(8, 4.5), nrows: int = 1):
    """A new ``(fig, ax)`` (``ax`` an array with ``nrows > 1``) on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, figsize=size)


def save(fig, path: str) -> str:
    """Lay out, save at 110 dpi, close; return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
