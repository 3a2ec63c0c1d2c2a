"""The RNN vs LSTM vs GRU gradient-flow study behind ``jrnn diagnose``.

Task: the adding problem (:func:`jrnn.datasets.adding_problem`), whose answer
depends on two steps that can be far apart. Cells get roughly equal parameter
budgets; the SimpleRNN is also run with its recurrent kernel scaled to
spectral norm 0.5 and 1.5 (the slides' |w| < 1 and |w| > 1). For each, the
study measures ``‖∂L/∂h_t‖`` over t at initialisation, the ratio
``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖``, then trains briefly with and without gradient
clipping and reports whether training diverged and whether the long
dependency was learned (test MSE well below the 1/6 of always answering 1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrnn
from jrnn import datasets
from jrnn._ranks import add_bias
from jrnn._report import figure, save, write_json, xla_temp_bytes
from jrnn.diagnostics import gradient_norms, gradient_ratio
from jrnn.forecast import Forecaster
from jrnn.train import fit, predict

BASELINE_MSE = 1.0 / 6.0  # always predicting the mean, 1, on the adding problem
LEARNED_MSE = 0.05


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    cell: object
    recurrent_scale: float | None = None  # rescale w_h to this spectral norm


def variants(budget: int = 4500) -> list[Variant]:
    """SimpleRNN (three recurrent scales), LSTM and GRU with about ``budget`` parameters on 2 inputs."""
    def size(per_unit):  # params = a*H^2 + b*H, solved for H
        a, b = per_unit
        return int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a))

    rnn_h, lstm_h, gru_h = size((1, 3)), size((4, 12)), size((3, 9))
    return [
        Variant("SimpleRNN |w|=0.5", jrnn.simple_rnn(rnn_h), 0.5),
        Variant("SimpleRNN |w|=1.0", jrnn.simple_rnn(rnn_h), 1.0),
        Variant("SimpleRNN |w|=1.5", jrnn.simple_rnn(rnn_h), 1.5),
        Variant("LSTM", jrnn.lstm(lstm_h)),
        Variant("GRU", jrnn.gru(gru_h)),
    ]


def init_params(variant: Variant, key, input_size: int = 2):
    model = Forecaster(variant.cell, input_size, 1)
    params = model.init(key)
    if variant.recurrent_scale is not None:
        (layer,) = params.rnn
        w_h = layer.w_h * (variant.recurrent_scale / jnp.linalg.norm(layer.w_h, 2))
        params = params._replace(rnn=(layer._replace(w_h=w_h),))
    return model, params


def gradient_profile(model, params, X, Y):
    """``‖∂L/∂h_t‖`` (mean over the batch) for the MSE of the last-step prediction.

    Computed in float64: over 100 steps a vanishing gradient falls below
    float32's smallest number and would read as exactly zero.
    """
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        (layer,) = params64.rnn

        def loss(ys):
            prediction = add_bias(ys[:, -1] @ params64.w_out, params64.b_out)
            return jnp.mean((prediction - jnp.asarray(Y, jnp.float64)) ** 2)

        norms = gradient_norms(model.cell, layer, jnp.asarray(X, jnp.float64), loss)
        return np.asarray(norms.mean(axis=0)), float(gradient_ratio(norms))


def train_briefly(model, params, data, *, clip: bool, epochs: int, seed: int):
    (X, Y), (X_val, Y_val), (X_test, Y_test) = data
    started = time.perf_counter()
    best, history = fit(model.apply, params, (X, Y), (X_val, Y_val), optimizer=optax.adam(3e-3),
                        epochs=epochs, batch_size=64, seed=seed, clip_norm=1.0 if clip else None,
                        patience=None, progress=False)
    seconds = time.perf_counter() - started
    losses = np.asarray(history.train_loss)
    diverged = bool(not np.all(np.isfinite(losses)) or losses.max() > 10 * losses[0])
    test_mse = float(np.mean((predict(model.apply, best, X_test) - Y_test) ** 2))
    return {"test_mse": test_mse if np.isfinite(test_mse) else None, "diverged": diverged,
            "seconds_per_epoch": round(seconds / epochs, 3), "train_loss": losses.tolist()}


def train_step_memory(model, params, batch) -> int | None:
    """XLA's temporary memory (bytes) for one jitted training step (forward + backward)."""
    X, Y = batch
    grad = jax.jit(jax.grad(lambda p: jnp.mean((model.apply(p, X) - Y) ** 2)))
    return xla_temp_bytes(grad.lower(params).compile())


def run_study(*, gradient_steps: int = 100, train_steps: int = 50, epochs: int = 12, num_train: int = 4096,
              seed: int = 0) -> dict:
    key = jax.random.key(seed)
    probe_X, probe_Y = datasets.adding_problem(64, gradient_steps, seed=seed + 1)
    data = [datasets.adding_problem(n, train_steps, seed=seed + 2 + i) for i, n in enumerate((num_train, 512, 1024))]
    rows, profiles = [], {}
    for variant in variants():
        model, params = init_params(variant, key)
        profile, ratio = gradient_profile(model, params, probe_X, probe_Y)
        profiles[variant.label] = profile.tolist()
        memory = train_step_memory(model, params, (data[0][0][:64], data[0][1][:64]))
        row = {"model": variant.label, "hidden": variant.cell.hidden_size,
               "params": jrnn.count_params(params.rnn), "grad_ratio_h1_over_hT": ratio,
               "train_step_temp_kib": None if memory is None else round(memory / 1024, 1)}
        for clip in (True, False):
            result = train_briefly(model, params, data, clip=clip, epochs=epochs, seed=seed)
            tag = "clipped" if clip else "unclipped"
            row[f"{tag}_test_mse"] = result["test_mse"]
            row[f"{tag}_diverged"] = result["diverged"]
            row[f"{tag}_seconds_per_epoch"] = result["seconds_per_epoch"]
            row[f"{tag}_train_loss"] = result["train_loss"]
        mse = row["clipped_test_mse"]
        row["learned"] = bool(mse is not None and mse < LEARNED_MSE)
        rows.append(row)
    return {"task": f"adding problem: gradients over T={gradient_steps}, training on T={train_steps}",
            "baseline_mse": BASELINE_MSE, "learned_below_mse": LEARNED_MSE,
            "settings": {"epochs": epochs, "num_train": num_train, "batch_size": 64, "optimizer": "adam(3e-3)",
                         "clip_norm": 1.0, "seed": seed},
            "rows": rows, "gradient_profiles": profiles}


def format_table(rows) -> str:
    fmt = lambda v: "diverged" if v is None else f"{v:.4f}"
    lines = [("| model | H | params | ‖∂L/∂h_1‖/‖∂L/∂h_T‖ | test MSE (clipped) | test MSE (no clipping) | "
              "diverged without clipping | s/epoch | step memory KiB | learned |"),
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['hidden']} | {r['params']} | {r['grad_ratio_h1_over_hT']:.2e} | "
                     f"{fmt(r['clipped_test_mse'])} | {fmt(r['unclipped_test_mse'])} | "
                     f"{'yes' if r['unclipped_diverged'] else 'no'} | {r['clipped_seconds_per_epoch']} | "
                     f"{r['train_step_temp_kib']} | {'yes' if r['learned'] else 'no'} |")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str, json_path: str | None = None) -> list[str]:
    """Write the JSON results and the gradient-norm plot; return their paths."""
    json_path = write_json(result, out_dir, json_path, "diagnose.json")
    fig, ax = figure()
    for label, profile in result["gradient_profiles"].items():
        profile = np.asarray(profile)
        ax.semilogy(np.arange(1, len(profile) + 1), np.maximum(profile, 1e-300), label=label)
    ax.set_xlabel("step t")
    ax.set_ylabel("‖∂L/∂h_t‖")
    ax.set_title("Gradient of the last-step loss with respect to each hidden state")
    ax.legend(fontsize=8)
    return [json_path, save(fig, os.path.join(out_dir, "gradient_norms.png"))]
