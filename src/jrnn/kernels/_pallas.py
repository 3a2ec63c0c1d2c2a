"""What the Pallas recurrent kernels share: batch tiling, the ``pallas_call``
wrapper (pinned to the Triton backend), the split of the hidden state into
chunks, the recurrent weights' blocks (kept on chip across the time loop
where they fit), the in-kernel products, and padding the batch to whole tiles.

The state ``h (B, H)`` is held as ``n`` chunks of ``C`` columns and each gate's
``(H, H)`` weight block as ``n × n`` blocks of ``(C, C)``, so that every
Triton dot is small, ``(16, C) × (C, C)``, whatever H is (an earlier version,
with one ``(H, H)`` dot operand per gate and no backend named, asked an H100
for 8.9 MB of shared memory at H = 512). ``benchmarks/triton_resources.py``
compiles every configuration for an H100 without one.

Inside a kernel everything is computed in float32; the products take their
operands in the weights' dtype (bfloat16 or float32) and accumulate in
float32. A float32 product follows ``jax.default_matmul_precision`` as XLA's
own products do: TF32 by default, IEEE float32 under ``"highest"``.

JAX deprecates Pallas' Triton backend from jax 0.11 (a warning at each
lowering); :func:`available` tells whether this jax still has it.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp

BLOCK_B = 16  # batch rows per program (Triton's dot needs at least 16)
NT = (((1,), (1,)), ((), ()))  # dot_general dimension numbers of d @ wᵀ
MAX_CHUNK, MAX_CHUNKS = 64, 4  # the state is split into at most 4 chunks of at most 64 columns
# The recurrent weights are loaded once, before the time loop, into shared
# memory, when they take at most this many bytes (an H100 has 227 KiB per
# block; the kernels need up to 20 KiB more): LSTM float32 up to H = 96,
# bfloat16 up to H = 128, GRU float32 and bfloat16 up to H = 128.
# Larger weights are re-read (from L2) at every step.
ON_CHIP_BYTES = 200 * 1024
# 8 warps: with 4, Triton's sm_90 code for H ≥ 128 spilled registers to the stack
NUM_WARPS = 8
# one stage: the time loop is a true recurrence, so Triton's software
# pipelining of its loads would only multiply the shared memory they take
NUM_STAGES = 1


def chunking(hidden_size):
    """``(C, n)`` with ``hidden_size = n·C``: C the largest power of two that divides
    it, at most 64 (Triton's tensors have power-of-two sizes), and n ≤ 4; ``None``
    for the sizes the kernels do not take."""
    chunk = min(hidden_size & -hidden_size, MAX_CHUNK)
    if hidden_size <= 0 or chunk < 16 or hidden_size // chunk > MAX_CHUNKS:
        return None
    return chunk, hidden_size // chunk


HIDDEN_SIZES = tuple(h for h in range(16, MAX_CHUNK * MAX_CHUNKS + 1, 16) if chunking(h))  # 16, 32, 48, …, 256


def sigmoid(a):
    return 1.0 / (1.0 + jnp.exp(-a))


def weights_on_chip(w_h) -> bool:
    """Whether the kernels keep ``w_h (H, G)`` (an array or a ref) on chip for the
    whole loop (see ``ON_CHIP_BYTES``)."""
    return math.prod(w_h.shape) * jnp.dtype(w_h.dtype).itemsize <= ON_CHIP_BYTES


def columns(j, C, gate=0, H=0):
    """Column chunk ``j`` (width ``C``) of gate ``gate`` in a gate-blocked ``(…, G·H)`` axis."""
    from jax.experimental import pallas as pl

    return pl.ds(gate * H + j * C, C)


def weight_blocks(w_ref, num_gates, on_chip):
    """``block(k, g, j)`` -> the ``(C, C)`` block of ``w_h (H, num_gates·H)`` that maps
    chunk k of ``h_{t-1}`` to chunk j of gate g (see :func:`chunking`).

    ``on_chip``: the blocks are loaded here, once, and stay in registers or
    shared memory for the whole time loop (call this outside the loop);
    otherwise each ``block(k, g, j)`` inside the loop loads the block again.
    ``None``: as :func:`weights_on_chip` says.
    """
    on_chip = weights_on_chip(w_ref) if on_chip is None else on_chip
    H = w_ref.shape[0]
    C, n = chunking(H)
    load_block = lambda k, g, j: w_ref[columns(k, C), columns(j, C, g, H)]
    if not on_chip:
        return load_block
    blocks = {(k, g, j): load_block(k, g, j) for k in range(n) for g in range(num_gates) for j in range(n)}
    return lambda k, g, j: blocks[k, g, j]


def total(values):
    """The sum of a non-empty iterable of arrays."""
    return functools.reduce(operator.add, values)


def recurrent_product(h, w, g, j):
    """Chunk j of gate g of ``h_{t-1} W_h``: ``Σ_k h_k W[k, g, j]``, with ``h`` the
    state's chunks and ``w`` from :func:`weight_blocks`."""
    return total(matmul(h_k, w(k, g, j)) for k, h_k in enumerate(h))


def add_recurrent_product_t(acc, d, w, j):
    """``acc[k] + Σ_g d[g] W[k, g, j]ᵀ`` for every chunk k: chunk j's share of
    ``d W_hᵀ``, with ``d[g]`` chunk j of the gradient of gate g's recurrent
    product. Adding each chunk's share as soon as it is known keeps few chunks
    alive (registers) at once."""
    return [a_k + total(matmul_t(d_g, w(k, g, j)) for g, d_g in enumerate(d)) for k, a_k in enumerate(acc)]


def load_chunks(ref, C, num_chunks):
    """The ``num_chunks`` column chunks of a ``(B, H)`` ref, as float32."""
    return tuple(load(ref, (slice(None), columns(j, C))) for j in range(num_chunks))


def store_chunks(ref, chunks):
    """Write column chunks into a ``(B, H)`` ref."""
    for j, chunk in enumerate(chunks):
        store(ref, (slice(None), columns(j, chunk.shape[-1])), chunk)


def matmul(a, w):
    """``a @ w`` in float32, the operands in ``w``'s dtype."""
    return jnp.dot(a.astype(w.dtype), w, preferred_element_type=jnp.float32)


def matmul_t(a, w):
    """``a @ wᵀ`` in float32, the operands in ``w``'s dtype."""
    return jax.lax.dot_general(a.astype(w.dtype), w, NT, preferred_element_type=jnp.float32)


def load(ref, index=...):
    """``ref[index]`` as float32."""
    return ref[index].astype(jnp.float32)


def store(ref, index, value):
    """``ref[index] = value`` in the ref's dtype."""
    ref[index] = value.astype(ref.dtype)


def _specs(shapes_and_kinds, cooperative):
    """BlockSpecs: 'tb' arrays (T, B, N) and 'b' arrays (B, N) are tiled over batch;
    'w' arrays are whole. The grid is ``(batch tiles,)``, or ``(programs, batch
    tiles)`` when ``cooperative``, where all programs of a batch tile see its whole block."""
    from jax.experimental import pallas as pl

    def index(f):
        return (lambda p, b: f(b)) if cooperative else f

    specs = []
    for shape, kind in shapes_and_kinds:
        if kind == "tb":
            specs.append(pl.BlockSpec((shape[0], BLOCK_B, shape[2]), index(lambda b: (0, b, 0))))
        elif kind == "b":
            specs.append(pl.BlockSpec((BLOCK_B, shape[1]), index(lambda b: (b, 0))))
        else:
            origin = (0,) * len(shape)
            specs.append(pl.BlockSpec(shape, index(lambda b, origin=origin: origin)))
    return specs


def call(kernel, inputs, kinds, outputs, interpret, programs=None):
    """One program per batch tile of ``BLOCK_B`` rows; or, with ``programs``, that
    many cooperating programs per batch tile (see :func:`grid_barrier`).

    ``kinds`` as in :func:`_specs`; ``outputs`` is a list of ``(shape, dtype, kind)``.
    Cooperating programs get two more refs after the outputs: the barrier
    counters ``(batch tiles,)`` (int32, zero at the start) and a ``(batch tiles,
    programs)`` int32 output where each program writes 1 if it gave up waiting
    at a barrier; the call returns the outputs, then that array.
    The Triton backend is named explicitly: the kernels read their blocks through
    pointers at each step, which Mosaic GPU (JAX's default Pallas GPU backend
    in jax 0.10) would instead stage whole into shared memory.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    num_blocks = inputs[0].shape[1] // BLOCK_B if kinds[0] == "tb" else inputs[0].shape[0] // BLOCK_B
    grid, aliases = (num_blocks,), {}
    if programs is not None:
        grid = (programs, num_blocks)
        inputs, kinds = (*inputs, jnp.zeros((num_blocks,), jnp.int32)), (*kinds, "w")
        outputs = [*outputs, ((num_blocks,), jnp.int32, "w"), ((num_blocks, programs), jnp.int32, "w")]
        aliases = {len(inputs) - 1: len(outputs) - 2}
    results = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(shape, dtype) for shape, dtype, _ in outputs],
        grid=grid,
        in_specs=_specs([(x.shape, k) for x, k in zip(inputs, kinds)], programs is not None),
        out_specs=_specs([(shape, kind) for shape, _, kind in outputs], programs is not None),
        input_output_aliases=aliases,
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
    )(*inputs)
    if programs is None:
        return results
    *results, _counters, stalled = results
    return (*results, stalled)


def grid_barrier(counter_ref, index, target, stalled, *, max_spins, compiled):
    """Wait until every cooperating program of batch tile ``index`` has reached
    this barrier (``counter[index]`` reaches ``target``, which is the number of
    programs times the number of barriers passed so far, this one included).

    The program's threads first finish their stores (a block-wide barrier); one
    atomic add (acquire-release, GPU scope) announces the program, and atomic
    reads poll the counter. Returns the new ``stalled`` flag: a program that has
    polled ``max_spins`` times gives up, and never waits again, so a grid whose
    programs cannot all run at once ends instead of hanging (its outputs are then
    wrong, and the callers turn them into NaN). ``compiled``: False in interpret
    mode, which has no block-wide barrier (and runs one thread).
    """
    from jax.experimental.pallas import triton as pltriton

    zero = index * 0  # a traced 0: constants inside the polling loop break interpret mode
    if compiled:
        pltriton.debug_barrier()
    pltriton.atomic_add(counter_ref, (index,), zero + 1)
    count, _ = jax.lax.while_loop(
        lambda state: (state[0] < target) & (state[1] < max_spins) & ~stalled,
        lambda state: (pltriton.atomic_add(counter_ref, (index,), zero), state[1] + 1),
        (pltriton.atomic_add(counter_ref, (index,), zero), zero),
    )
    if compiled:
        pltriton.debug_barrier()
    return stalled | (count < target)


def tiled(projected, carry_leaves):
    """Flatten the batch axes of ``projected (T, *batch, G)`` and the carry leaves
    ``(*batch, H)`` and zero-pad the batch to whole tiles.

    Returns ``(projected (T, B', G), leaves (B', H), untile)``, where ``untile(a)``
    drops the padding rows of ``a (..., B', N)`` and restores ``*batch``.
    """
    T, batch_shape, G = projected.shape[0], projected.shape[1:-1], projected.shape[-1]
    size = 1
    for d in batch_shape:
        size *= d
    padded = -(-max(size, 1) // BLOCK_B) * BLOCK_B
    pad = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, padded - size), (0, 0)])
    px = pad(projected.reshape(T, size, G))
    leaves = [pad(c.reshape(size, c.shape[-1])) for c in carry_leaves]
    untile = lambda a: a[..., :size, :].reshape(*a.shape[:-2], *batch_shape, a.shape[-1])
    return px, leaves, untile


def available() -> bool:
    """Whether this jax has Pallas' Triton backend, which the kernels are
    written for (JAX deprecates it from 0.11, with a warning at each lowering)."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpret_default(interpret):
    """Compiled on a GPU, interpreted elsewhere, unless the caller says."""
    return jax.default_backend() != "gpu" if interpret is None else interpret


def lower_for_gpu(jitted, *args, device_kind="NVIDIA H100 80GB HBM3"):
    """Lower ``jitted(*args)`` for CUDA on any machine, a CPU-only one included:
    the compiler's input for a GPU of ``device_kind``, without one (tests, and
    ``benchmarks/triton_resources.py``). From jax 0.11 the Triton lowering asks
    the mesh for the GPU's kind; earlier versions assume sm_90 without a GPU."""
    if not hasattr(jax.sharding, "AbstractDevice"):  # older jax: no abstract devices, none needed
        return jitted.trace(*args).lower(lowering_platforms=("cuda",))
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("batch",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        return jitted.trace(*args).lower(lowering_platforms=("cuda",))
