"""Independent float64 NumPy reference of the equations in DESIGN.md §1.

Written from the textbook form ``W · [h_{t-1}, x_t]`` (one concatenated weight
per gate) rather than the two-block form the library uses, and looped one
sequence at a time, so it shares no code path with jrnn.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np(params):
    return {k: (None if v is None else np.asarray(v, np.float64)) for k, v in params._asdict().items()}


def _gate(p, k, H):
    """``W_k`` (H + I, H) acting on ``[h, x]`` and ``b_k``, gate block k."""
    W = np.concatenate([p["w_h"], p["w_x"]], axis=0)
    return W[:, k * H : (k + 1) * H], p["b"][k * H : (k + 1) * H]


BLOCKS = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def step(kind, params, carry, x, *, reset_after=False, activation="tanh"):
    """One step for a single sequence; ``carry`` is ``h`` or ``(h, c)``; returns ``(carry, h)``.

    An LSTM with a projection ``w_hr (H, P)`` (LSTMP) has ``h = (o ⊙ tanh(c)) @ w_hr`` of size P.
    """
    p = _np(params)
    H = p["b"].shape[0] // BLOCKS[kind]  # the gate (and cell state) width
    if kind == "lstm":
        h, c = carry
        hx = np.concatenate([h, x])
        (W_i, b_i), (W_f, b_f), (W_C, b_C), (W_o, b_o) = (_gate(p, k, H) for k in range(4))
        f = sigmoid(hx @ W_f + b_f)
        i = sigmoid(hx @ W_i + b_i)
        C_tilde = np.tanh(hx @ W_C + b_C)
        c = f * c + i * C_tilde
        o = sigmoid(hx @ W_o + b_o)
        h = o * np.tanh(c)
        if p.get("w_hr") is not None:
            h = h @ p["w_hr"]
        return (h, c), h
    h = carry
    hx = np.concatenate([h, x])
    if kind == "simple_rnn":
        W, b = _gate(p, 0, H)
        act = np.tanh if activation == "tanh" else (lambda a: np.maximum(a, 0.0))
        h = act(hx @ W + b)
        return h, h
    (W_z, b_z), (W_r, b_r), (W_n, b_n) = (_gate(p, k, H) for k in range(3))
    z = sigmoid(hx @ W_z + b_z)
    r = sigmoid(hx @ W_r + b_r)
    if reset_after:
        W_hn, W_xn = W_n[:H], W_n[H:]
        h_tilde = np.tanh(x @ W_xn + b_n + r * (h @ W_hn + p["b_hn"]))
    else:
        h_tilde = np.tanh(np.concatenate([r * h, x]) @ W_n + b_n)
    h = (1 - z) * h + z * h_tilde
    return h, h


def run(kind, params, xs, carry=None, *, seq_lengths=None, reverse=False, **cell_options):
    """Run every sequence of ``xs (*batch, T, I)`` on its own, unpadded.

    Returns ``(carry, ys)`` with the library's layout; padding outputs are zero.
    """
    xs = np.asarray(xs, np.float64)
    batch_shape, (T, _) = xs.shape[:-2], xs.shape[-2:]
    H = np.asarray(params.w_h).shape[0]  # the hidden state's width (P with a projection)
    C = np.asarray(params.b).shape[0] // BLOCKS[kind]  # the cell state's
    flat_x = xs.reshape(-1, T, xs.shape[-1])
    n = flat_x.shape[0]
    lengths = np.full(n, T) if seq_lengths is None else np.asarray(seq_lengths).reshape(n)
    if carry is None:
        carry = (np.zeros((n, H)), np.zeros((n, C))) if kind == "lstm" else np.zeros((n, H))
    else:
        as_rows = lambda c: np.asarray(c, np.float64).reshape(n, -1)
        carry = tuple(as_rows(c) for c in carry) if kind == "lstm" else as_rows(carry)
    ys = np.zeros((n, T, H))
    finals = []
    for b in range(n):
        state = tuple(c[b] for c in carry) if kind == "lstm" else carry[b]
        order = range(lengths[b])
        for t in (reversed(order) if reverse else order):
            state, ys[b, t] = step(kind, params, state, flat_x[b, t], **cell_options)
        finals.append(state)
    if kind == "lstm":
        final = tuple(np.stack([s[k] for s in finals]).reshape(*batch_shape, -1) for k in range(2))
    else:
        final = np.stack(finals).reshape(*batch_shape, H)
    return final, ys.reshape(*batch_shape, T, H)
