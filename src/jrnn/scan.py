"""The scan driver: run a cell over time with ``jax.lax.scan``.

The input projection ``x_t @ w_x + b`` is one matrix product over every step,
outside the loop; the loop body is the cell's recurrent step. The loop written
out (and what the tests hold the driver to)::

    carry = cell.initial_carry(batch) if carry is None else carry
    for t in (reversed(range(T)) if reverse else range(T)):
        if t < seq_lengths:                       # per sequence
            carry, ys[..., t, :] = cell.step(params, carry, xs[..., t, :])
        else:
            ys[..., t, :] = 0                     # padding: carry frozen
    return carry, ys
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import (
    as_array,
    check_array,
    check_bool,
    check_floating,
    check_integer,
    check_rate,
    check_shape,
    is_concrete,
)
from jrnn._varying import vary_like
from jrnn.cells import check_cell
from jrnn.kernels import _pallas, cudnn, fused, native, pallas_gru, pallas_lstm, parallel
from jrnn.min_cells import _MinCell

IMPLEMENTATIONS = ("auto", "fused", "parallel", "plain", "cudnn", "pallas")
# default time steps per loop iteration on a GPU (benchmarks/RESULTS.md, "GPU"): on
# an H200 with the fused loops' step barrier (2026-11-28), 16 took 4-7 % less time than
# 8 forward+backward in 5 of 8 cases (LSTM and GRU at four shapes) and 0.9-3.7 % more in
# 3; 32 was slower than 16 at (16, 768, 1024) and compiled longer
GPU_UNROLL = 16


def default_unroll() -> int:
    """``unroll`` when none is given: ``GPU_UNROLL`` (16) on a GPU, where each loop
    iteration costs kernel launches (on an H200 the LSTM's forward+backward ran
    1.3–1.8× faster with 8 steps per iteration than with 1, and 16 was faster
    again at most shapes), else 1."""
    return GPU_UNROLL if jax.default_backend() == "gpu" else 1


def scan(
    cell,
    params,
    xs,
    carry=None,
    *,
    seq_lengths=None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool | None = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    dropout_key: jax.Array | None = None,
    implementation: str = "auto",
    checkpoint_every: int | None = None,
    truncate_every: int | None = None,
    resets=None,
    carry_dtype=None,
):
    """Run ``cell`` over the time axis of ``xs``.

    ``ys[..., t, :]`` is the hidden state after step t. ``jax.grad`` through this
    function is backpropagation through time.

    Args:
      cell: a jrnn cell (:func:`jrnn.lstm`, :func:`jrnn.gru`, :func:`jrnn.simple_rnn`,
        :func:`jrnn.min_gru`, :func:`jrnn.min_lstm`).
      params: the cell's params (``cell.init``).
      xs: ``(*batch, T, I)``, or ``(T, *batch, I)`` with ``time_major=True``;
        any number of batch dimensions, including none.
      carry: initial carry, ``(*batch, H)`` (LSTM: ``LSTMState``); ``None``: zeros.
        The carry keeps its dtype through the loop.
      seq_lengths: ``(*batch,)`` integers, right padding. Steps at or past a
        sequence's length are padding: its carry is frozen there, its outputs
        are zeros, and the returned carry is the one after its last valid step
        (the initial carry for length 0). Lengths are clipped to ``[0, T]`` under
        jit; outside jit a length out of range raises ``ValueError``.
      reverse: run each sequence's valid part from its last valid step to its
        first; outputs stay at their original positions.
      time_major: ``xs`` and ``ys`` are time-major.
      unroll: time steps per iteration of the loop, passed to ``lax.scan``;
        ``None``: :func:`default_unroll` (16 on a GPU, 1 elsewhere).
      dropout: variational input dropout rate (one mask per sequence, shared by
        all steps, as Keras). Active only when ``dropout_key`` is given.
      recurrent_dropout: variational dropout rate on ``h_{t-1}`` where it enters
        the recurrent products. Active only when ``dropout_key`` is given.
      dropout_key: PRNG key for the dropout masks; ``None`` means inference (no dropout).
      implementation: ``"auto"`` (default: ``"parallel"`` for minGRU/minLSTM;
        on one GPU, ``"cudnn"`` where cuDNN's persistent kernel applies, an LSTM
        or reset-after GRU with H ≤ 128, float32, and none of ``seq_lengths``,
        ``reverse``, ``resets``, recurrent dropout or segments
        (:func:`jrnn.kernels.cudnn.auto_applies`); else ``"fused"`` unless
        ``resets`` are given), ``"fused"``
        (:mod:`jrnn.kernels.fused`: one-pass gate math and a hand-written BPTT
        whose weight gradients are single large matrix products),
        ``"parallel"`` (:mod:`jrnn.kernels.parallel`, associative scan, for
        minGRU/minLSTM), ``"plain"`` (``lax.scan`` of ``cell.recurrent_step``
        with JAX's own autodiff) or ``"cudnn"`` (:mod:`jrnn.kernels.cudnn`:
        cuDNN on a GPU, through jrnn's own binding, with cuDNN's persistent
        kernel where H ≤ 128, for the LSTM and the reset-after GRU without
        ``seq_lengths``, else the LSTM through ``jax.experimental.rnn``; one
        batch axis, float32, no ``reverse``, ``resets``, recurrent dropout or segments) or ``"pallas"``
        (:mod:`jrnn.kernels.pallas_lstm`, :mod:`jrnn.kernels.pallas_gru`: the
        LSTM or reset-after GRU time loop in one Pallas kernel launch; hidden
        size 16, 32, 48, 64, 96, 128, 192 or 256, and for the LSTM a multiple
        of 64 from 320 to 2048; no ``seq_lengths``,
        ``reverse``, ``resets`` or recurrent dropout; interpreted off GPU).
        All compute the same function and have the same derivatives, forward
        mode and higher orders included (all but ``"cudnn"`` with
        ``seq_lengths``: reverse-mode first derivatives only). Code lowered by
        ``jax.export`` runs XLA loops in place of the kernels (all but
        ``"cudnn"`` with ``seq_lengths``).
      checkpoint_every: memory option for long sequences: keep only every
        k-th carry for the backward pass and recompute each k-step segment
        there (``jax.checkpoint``). Memory O(T/k + k) steps instead of O(T), about
        one extra forward pass of time. Values and gradients are unchanged.
      resets: ``(*batch, T)`` booleans (time-major: ``(T, *batch)``): ``True`` at
        step t starts a new sequence there, the state returning to the initial
        carry before step t (packed documents, episode ends in RL).
      carry_dtype: dtype of the zero initial carry when ``carry`` is ``None``
        (default: that of ``xs`` and the params). ``jnp.float32`` with bfloat16
        params and inputs keeps the state and its accumulation in float32.
      truncate_every: truncated BPTT: run the sequence in chunks of k steps,
        passing the carry on but stopping its gradient between chunks, so no
        gradient flows further back than the start of its chunk. Values are unchanged.

    Returns:
      ``(final_carry, ys)`` with ``ys`` of shape ``(*batch, T, H)`` (or time-major).

    Raises:
      ValueError: wrong rank or sizes of ``xs``, ``carry``, ``seq_lengths`` or params;
        a dropout rate outside [0, 1).
      TypeError: ``cell`` not a jrnn cell, non-floating ``xs``/``carry``/params,
        non-integer ``seq_lengths``, params of another cell type.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.lstm(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((2, 5, 3))                   # (batch, time, input)
      >>> carry, ys = jrnn.scan(cell, params, xs, seq_lengths=jnp.array([5, 2]))
      >>> ys.shape, carry.h.shape
      ((2, 5, 8), (2, 8))
      >>> bool((ys[1, 2:] == 0).all())               # padding outputs are zero
      True
    """
    check_cell(cell)
    xs = as_array("xs", xs)
    check_floating("xs", xs)
    if xs.ndim < 2:
        layout = "(T, *batch, input_size)" if time_major else "(*batch, T, input_size)"
        raise ValueError(f"xs: expected rank >= 2 {layout}, got shape {tuple(xs.shape)}")
    check_bool("reverse", reverse)
    check_bool("time_major", time_major)
    check_rate("dropout", dropout)
    check_rate("recurrent_dropout", recurrent_dropout)
    if unroll is None:
        unroll = default_unroll()
    if not isinstance(unroll, (bool, int)) or (not isinstance(unroll, bool) and unroll < 1):
        raise ValueError(f"unroll: expected a positive int, a bool or None, got {unroll!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("truncate_every", truncate_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
    if checkpoint_every is not None and truncate_every is not None:
        raise ValueError("checkpoint_every, truncate_every: expected at most one of them, got both")
    auto = implementation == "auto"
    implementation = _pick_implementation(cell, implementation, resets is not None)
    cell.check_input("xs", xs, params)

    num_steps, batch_shape = _steps_and_batch(xs, time_major)

    if carry is None:
        dtype = jnp.result_type(xs.dtype, params.w_x.dtype) if carry_dtype is None else carry_dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"carry_dtype: expected a floating dtype, got {jnp.dtype(dtype)}")
        carry = cell.initial_carry(batch_shape, dtype)
    else:
        cell.check_carry(carry, batch_shape)
    if seq_lengths is not None:
        seq_lengths = _check_seq_lengths(seq_lengths, batch_shape, num_steps)
    if resets is not None:
        resets = as_array("resets", resets)
        if resets.dtype != jnp.bool_:
            raise TypeError(f"resets: expected a bool dtype, got {resets.dtype}")
        expected = (num_steps, *batch_shape) if time_major else (*batch_shape, num_steps)
        check_shape("resets", resets, expected)
        if not time_major:
            resets = jnp.moveaxis(resets, -1, 0)

    return _run(cell, params, xs, carry, seq_lengths, resets, dropout_key, dropout=float(dropout),
                recurrent_dropout=float(recurrent_dropout), reverse=reverse, time_major=time_major, unroll=unroll,
                implementation=implementation, auto=auto, checkpoint_every=checkpoint_every,
                truncate_every=truncate_every, switches=_trace_switches())


def _steps_and_batch(xs, time_major: bool) -> tuple:
    """``(T, batch_shape)`` of ``xs`` in either layout."""
    return (xs.shape[0], xs.shape[1:-1]) if time_major else (xs.shape[-2], xs.shape[:-2])


def _trace_switches() -> tuple:
    """The kernels' trace-time switches (``native.disabled()``, ``cudnn.own_binding_disabled()``,
    ``cudnn.forced_algorithm()``, ``fused.gate_layout()``, ``fused.step_barrier()``): part of
    :func:`_run`'s cache key."""
    return native._disabled, cudnn._own_disabled, cudnn._forced_algorithm, *fused._FORCED.values()


@functools.partial(jax.jit, static_argnames=("dropout", "recurrent_dropout", "reverse", "time_major", "unroll",
                                             "implementation", "auto", "checkpoint_every", "truncate_every",
                                             "switches"))
def _run(cell, params, xs, carry, seq_lengths, resets, dropout_key, *, dropout, recurrent_dropout, reverse,
         time_major, unroll, implementation, auto, checkpoint_every, truncate_every, switches):
    """:func:`scan` after its checks: compiled and kept per configuration and shapes, so
    eager calls do not trace the loop again (inside a caller's ``jit`` it is inlined)."""
    del switches  # (only keys the cache)
    num_steps, batch_shape = _steps_and_batch(xs, time_major)

    input_mask = recurrent_mask = None
    if dropout_key is not None:
        k_in, k_rec = jax.random.split(dropout_key)
        if dropout > 0:
            input_mask = dropout_mask(k_in, dropout, (*batch_shape, xs.shape[-1]), xs.dtype)
            xs = xs * (input_mask if time_major else input_mask[..., None, :])
        if recurrent_dropout > 0:
            recurrent_mask = dropout_mask(
                k_rec, recurrent_dropout, (*batch_shape, cell.output_size()), xs.dtype
            )

    carry = vary_like(carry, xs, params, seq_lengths, resets, recurrent_mask)  # inside jax.shard_map
    segment = checkpoint_every or truncate_every
    if segment is not None and segment >= num_steps:
        segment = None
    plain_loop = seq_lengths is None and not reverse and resets is None and recurrent_mask is None and segment is None
    if auto and cudnn.auto_applies(cell, params, xs, carry, time_major=time_major, plain_loop=plain_loop):
        implementation = "cudnn"
    if implementation in ("cudnn", "pallas") and segment is not None:
        option = "checkpoint_every" if checkpoint_every is not None else "truncate_every"
        raise ValueError(f"{option}: implementation {implementation!r} runs the whole sequence at once, got "
                         f"{option}={segment} < T={num_steps}; use 'fused'")
    if implementation == "cudnn":
        return _cudnn(cell, params, xs, carry, seq_lengths, time_major, reverse, resets, recurrent_mask)
    if not time_major:  # move the (small) inputs, not the (G times wider) projections
        xs = jnp.moveaxis(xs, -2, 0)
    if implementation == "pallas":
        kernel = next((k for k in (pallas_lstm, pallas_gru) if k.supports(cell)), None)
        if kernel is None:
            raise ValueError("implementation: 'pallas' needs a jrnn.lstm or reset-after jrnn.gru cell with hidden "
                             f"size in {_pallas.HIDDEN_SIZES} (LSTM: or a multiple of 64 from "
                             f"{_pallas.HIDDEN_SIZES[-1] + 64} to {pallas_lstm.MAX_WIDE}), got {cell}")
        if not _pallas.available():
            raise ValueError(f"implementation: 'pallas' needs Pallas' Triton backend, which jax {jax.__version__} "
                             "no longer has; use 'fused'")
        if seq_lengths is not None or reverse or resets is not None or recurrent_mask is not None:
            raise ValueError("implementation: 'pallas' supports no seq_lengths, reverse, resets or recurrent "
                             "dropout; use 'fused'")
        carry, ys = kernel.pallas_scan(cell, params, cell.project_input(params, xs), carry)
        return carry, ys if time_major else jnp.moveaxis(ys, 0, -2)
    if implementation == "fused":
        loop, project = fused.fused_scan, lambda x: fused.project(x, params.w_x)  # bias added in the loop
    elif implementation == "parallel":
        loop, project = parallel.parallel_scan, lambda x: cell.project_input(params, x)
    else:
        loop, project = scan_projected, lambda x: cell.project_input(params, x)
    options = dict(reverse=reverse, unroll=unroll, recurrent_mask=recurrent_mask)
    if resets is not None:
        options["resets"] = resets
    if segment is None:
        if implementation == "fused" and not time_major:  # the loop writes batch-major ys itself
            return loop(cell, params, project(xs), carry, seq_lengths=seq_lengths, batch_major_ys=True, **options)
        carry, ys = loop(cell, params, project(xs), carry, seq_lengths=seq_lengths, **options)
    else:
        carry, ys = _segmented(loop, project, cell, params, xs, carry, seq_lengths, segment,
                               remat=checkpoint_every is not None, **options)
    return carry, ys if time_major else jnp.moveaxis(ys, 0, -2)


def _cudnn(cell, params, xs, carry, seq_lengths, time_major, reverse, resets, recurrent_mask):
    if not cudnn.available():
        raise ValueError(f"implementation: 'cudnn' needs a GPU backend, got {jax.default_backend()!r}")
    dtypes = {jnp.dtype(a.dtype) for a in (xs, params.w_x, params.w_h, *jax.tree.leaves(carry))}
    if dtypes != {jnp.dtype(jnp.float32)}:
        raise TypeError("implementation: 'cudnn' needs float32 inputs, params and carry, "
                        f"got {sorted(map(str, dtypes))}")
    if reverse or resets is not None or recurrent_mask is not None or xs.ndim != 3:
        raise ValueError("implementation: 'cudnn' supports one batch axis and no reverse, resets or "
                         "recurrent dropout; use 'fused'")
    if time_major:
        xs = jnp.moveaxis(xs, 0, 1)
    carry, ys = cudnn.cudnn_scan(cell, params, xs, carry, seq_lengths=seq_lengths)
    return carry, jnp.moveaxis(ys, 1, 0) if time_major else ys


def _pick_implementation(cell, implementation, has_resets):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
    linear = isinstance(cell, _MinCell)
    if implementation == "auto":
        if linear:
            return "parallel"
        return "fused" if fused.supports(cell) and not has_resets else "plain"
    if implementation == "parallel" and not linear:
        raise ValueError(f"implementation: 'parallel' needs a minGRU/minLSTM cell, got {type(cell).__name__}")
    if implementation == "fused" and (not fused.supports(cell) or has_resets):
        why = "resets" if fused.supports(cell) else type(cell).__name__
        raise ValueError(f"implementation: 'fused' does not support {why}; use 'plain'")
    return implementation


def _segmented(loop, project, cell, params, xs, carry, seq_lengths, k, *, remat, reverse, unroll, recurrent_mask,
               resets=None):
    """Run ``loop`` over segments of ``k`` steps of time-major ``xs``: rematerialised
    (``remat``: only the segments' first carries and the inputs are kept for the
    backward pass; each segment's projection and loop are recomputed there) or
    with the carry's gradient stopped at each segment start (truncated BPTT)."""
    num_steps, batch_shape = xs.shape[0], xs.shape[1:-1]
    num_segments = -(-num_steps // k)
    pad = num_segments * k - num_steps
    if pad:  # padded steps are masked out, so the result is unchanged
        xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
        if seq_lengths is None:
            seq_lengths = jnp.full(batch_shape, num_steps, jnp.int32)
        if resets is not None:
            resets = jnp.concatenate([resets, jnp.zeros((pad, *resets.shape[1:]), resets.dtype)])
    segments = xs.reshape(num_segments, k, *xs.shape[1:])
    reset_segments = None if resets is None else resets.reshape(num_segments, k, *resets.shape[1:])
    starts = jnp.arange(num_segments, dtype=jnp.int32) * k
    initial = carry

    def run_segment(carry, inputs):
        segment, start, segment_resets = inputs
        if not remat:
            carry = jax.lax.stop_gradient(carry)
        lengths = None if seq_lengths is None else seq_lengths - start.astype(seq_lengths.dtype)
        extra = {} if segment_resets is None else {"resets": segment_resets, "reset_carry": initial}
        return loop(cell, params, project(segment), carry, seq_lengths=lengths, reverse=reverse, unroll=unroll,
                    recurrent_mask=recurrent_mask, **extra)

    body = jax.checkpoint(run_segment) if remat else run_segment
    carry, ys = jax.lax.scan(body, carry, (segments, starts, reset_segments), reverse=reverse)
    return carry, ys.reshape(num_segments * k, *ys.shape[2:])[:num_steps]


def scan_projected(
    cell, params, projected, carry, *, seq_lengths=None, reverse=False, unroll=1,
    recurrent_mask=None, resets=None, reset_carry=None,
):
    """The time loop on already projected, time-major inputs ``(T, *batch, G*H)``.

    ``resets (T, *batch)``: restart from ``reset_carry`` (default: ``carry``)
    before the steps where it is true. No checks: :func:`scan` is the public
    entry point. Returns ``(carry, ys)`` with ``ys`` time-major ``(T, *batch, H)``.
    """
    carry_dtypes = jax.tree.map(lambda leaf: leaf.dtype, carry)
    initial = carry if reset_carry is None else reset_carry

    def keep_dtype(new_carry):
        return jax.tree.map(lambda leaf, dtype: leaf.astype(dtype), new_carry, carry_dtypes)

    def body(carry, inputs):
        projected_t, t, reset_t = inputs
        state = carry if reset_t is None else _restart(cell, carry, initial, reset_t)
        new_carry, h = cell.recurrent_step(params, state, projected_t, recurrent_mask)
        if seq_lengths is not None:  # padding (resets there included) leaves the carry as it was
            valid = (t < seq_lengths)[..., None]
            new_carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
            h = jnp.where(valid, h, jnp.zeros_like(h))
        return keep_dtype(new_carry), h

    steps = None if seq_lengths is None else jnp.arange(projected.shape[0], dtype=seq_lengths.dtype)
    return jax.lax.scan(body, carry, (projected, steps, resets), reverse=reverse, unroll=unroll)


def _restart(cell, carry, initial, reset):
    """The initial carry where ``reset (*batch,)`` is true, else ``carry``."""
    return jax.tree.map(lambda c, c0: jnp.where(reset[..., None], c0, c), carry, initial)


def dropout_mask(key, rate: float, shape, dtype) -> jax.Array:
    """Inverted-dropout mask: ``keep / (1 - rate)`` with ``keep ~ Bernoulli(1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _check_seq_lengths(seq_lengths, batch_shape, num_steps):
    seq_lengths = as_array("seq_lengths", seq_lengths)
    check_array("seq_lengths", seq_lengths)
    check_integer("seq_lengths", seq_lengths)
    check_shape("seq_lengths", seq_lengths, batch_shape)
    if is_concrete(seq_lengths):
        values = np.asarray(seq_lengths)
        if values.size and (values.min() < 0 or values.max() > num_steps):
            raise ValueError(
                f"seq_lengths: expected values in [0, {num_steps}] (T), "
                f"got min {values.min()} and max {values.max()}"
            )
    return seq_lengths
