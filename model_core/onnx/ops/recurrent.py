"""ONNX LSTM, GRU and RNN with the operators' full semantics, matched to onnxruntime.

Supported: ``direction`` forward / reverse / bidirectional, ``layout`` 0 and 1, the optional
inputs B, sequence_lens, initial_h, initial_c and P (peepholes), ``clip``, ``input_forget``,
``linear_before_reset``, every activation the spec lists with ``activation_alpha`` / ``_beta``,
and any subset of the outputs Y, Y_h, Y_c.

Ragged batches follow onnxruntime: Y is zero past each sequence's length, Y_h / Y_c hold the
state at its last valid step, the reverse direction starts at each sequence's own last valid
step, and a sequence of length 0 gets zero Y_h / Y_c (not initial_h).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_core.backend import to_numpy
from model_core.onnx.ops.activations import bind_activations
from model_core.onnx.ops.recurrent_loops import gru_loop, lstm_loop, rnn_loop
from model_core.onnx.ops.registry import Unsupported, register

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


@dataclass(frozen=True)
class RecurrentConfig:
    op_type: str
    hidden_size: int | None      # None: taken from R's shape at run time
    reversed_dirs: tuple         # per direction: does it read the sequence backwards
    batch_major: bool            # layout 1: X (N, T, I), Y (N, T, D, H), Y_h (N, D, H)
    clip: float | None
    activations: tuple           # per slot (f, g, h): a tuple with one callable per direction
    input_forget: bool           # LSTM: couple the forget gate to the input gate, f = 1 - i
    linear_before_reset: bool    # GRU: apply the reset gate after R's product


def parse_config(node) -> RecurrentConfig:
    """The node's attributes, checked; every problem is reported, not only the first."""
    op, problems = node.op_type, []
    direction = node.attr("direction", "forward")
    if direction not in DIRECTIONS:
        problems.append(f"{op} attribute direction={direction}")
    layout = node.int_attr("layout", 0) if node.since >= 14 else 0
    if layout not in (0, 1):
        problems.append(f"{op} attribute layout={layout}")
    hidden_size = node.attr("hidden_size", None)
    if hidden_size is not None and hidden_size <= 0:
        problems.append(f"{op} attribute hidden_size={hidden_size}")
    clip = node.attr("clip", None)
    if clip is not None and not clip > 0:
        problems.append(f"{op} attribute clip={clip}")
    input_forget = bool(node.int_attr("input_forget", 0)) if op == "LSTM" else False
    linear_before_reset = bool(node.int_attr("linear_before_reset", 0)) if op == "GRU" else False
    try:
        activations = _parse_activations(node, len(DIRECTIONS.get(direction, (False,))))
    except Unsupported as exc:
        problems.append(str(exc))
    if problems:
        raise Unsupported(", ".join(problems))
    return RecurrentConfig(op, hidden_size, DIRECTIONS[direction], layout == 1,
                           None if clip is None else float(clip), activations, input_forget, linear_before_reset)


def _parse_activations(node, num_directions):
    op = node.op_type
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    names = node.attr("activations", DEFAULT_ACTIVATIONS[op] * num_directions)
    if op == "RNN" and num_directions == 1 and len(names) == 2:
        names = names[:1]  # the spec's default is [Tanh, Tanh]; onnxruntime uses the first
    if len(names) != per_direction * num_directions:
        raise Unsupported(f"{op} with {len(names)} activations for {num_directions} direction(s)")
    bound = bind_activations(node.xp, op, names, node.attr("activation_alpha", []), node.attr("activation_beta", []))
    slots = []
    for k in range(per_direction):
        fns = tuple(bound[d * per_direction + k] for d in range(num_directions))
        slots.append(fns[:1] if len(set(fns)) == 1 else fns)  # one call when all directions agree
    return tuple(slots)


@register(("LSTM", "GRU", "RNN"), 7, 14, 22)
def prepare_recurrent(node):
    cfg = parse_config(node)
    xp = node.xp
    wants = tuple(node.has_output(k) for k in range(len(node.outputs)))

    def kernel(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        return run_recurrent(xp, cfg, wants, X, W, R, B, sequence_lens, initial_h, initial_c, P)
    return kernel


def run_recurrent(xp, cfg, wants, X, W, R, B, sequence_lens, initial_h, initial_c, P):
    """One recurrent node. Shapes (layout 0): X (T, N, I), W (D, G*H, I), R (D, G*H, H),
    B (D, 2*G*H), sequence_lens (N,), initial_h / initial_c (D, N, H), P (D, 3H)."""
    if cfg.batch_major:
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
        initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
    T, N, I = X.shape
    D, G = len(cfg.reversed_dirs), GATES[cfg.op_type]
    H = cfg.hidden_size or R.shape[-1]
    _expect(cfg, "W", W, (D, G * H, I))
    _expect(cfg, "R", R, (D, G * H, H))
    _expect(cfg, "B", B, (D, 2 * G * H))
    _expect(cfg, "initial_h", initial_h, (D, N, H))
    _expect(cfg, "initial_c", initial_c, (D, N, H))
    _expect(cfg, "P", P, (D, 3 * H))
    lengths = _lengths(cfg, sequence_lens, T, N)

    # project every step at once: one matmul per direction instead of one per step
    xw = xp.matmul(X.reshape(T * N, I)[None], W.transpose(0, 2, 1)).reshape(D, T, N, G * H)
    rb_h = None
    if B is not None:
        wb, rb = B[:, :G * H], B[:, G * H:]  # (D, G*H) each
        if cfg.linear_before_reset:
            # R's candidate bias sits inside the reset gate's product, so it stays separate
            rb_h = rb[:, None, 2 * H:]  # (D, 1, H)
            rb = xp.concatenate([rb[:, :2 * H], xp.zeros_like(rb[:, 2 * H:])], axis=1)
        xw = xw + (wb + rb)[:, None, None, :]
    elif cfg.linear_before_reset:
        rb_h = xp.zeros((D, 1, H), X.dtype)

    reverse_index = None if lengths is None else _reverse_index(xp, lengths, T)
    xw = _in_direction_order(xp, cfg, xw, reverse_index)  # (D, T, N, G*H)
    mask = None if lengths is None else xp.asarray(np.arange(T)[:, None] < lengths[None, :])[..., None]  # (T, N, 1)
    h = xp.zeros((D, N, H), X.dtype) if initial_h is None else initial_h
    ys = xp.empty((D, T, N, H), X.dtype) if wants[0] else None
    R_T = R.transpose(0, 2, 1)  # (D, H, G*H)

    c = None
    if cfg.op_type == "LSTM":
        c = xp.zeros((D, N, H), X.dtype) if initial_c is None else initial_c
        P3 = None if P is None else P[:, None, :]  # (D, 1, 3H)
        h, c = lstm_loop(xp, cfg, xw, R_T, P3, h, c, mask, ys)
    elif cfg.op_type == "GRU":
        h = gru_loop(xp, cfg, xw, R_T, rb_h, h, mask, ys)
    else:
        h = rnn_loop(xp, cfg, xw, R_T, h, mask, ys)

    if lengths is not None and (lengths == 0).any():
        # onnxruntime's Y_h / Y_c for an empty sequence: zeros, not the initial state
        empty = xp.asarray(lengths == 0)[None, :, None]  # (1, N, 1)
        h = xp.where(empty, 0, h).astype(X.dtype, copy=False)
        c = None if c is None else xp.where(empty, 0, c).astype(X.dtype, copy=False)
    outputs = [None, None, None]
    if ys is not None:
        ys = _in_direction_order(xp, cfg, ys, reverse_index)  # back to input time order
        if mask is not None:
            ys = xp.where(mask[None], ys, 0).astype(X.dtype, copy=False)
        outputs[0] = ys.transpose(2, 1, 0, 3) if cfg.batch_major else ys.transpose(1, 0, 2, 3)
    states = (h, c)
    for k in (1, 2):
        if k < len(wants) and wants[k]:
            outputs[k] = states[k - 1].transpose(1, 0, 2) if cfg.batch_major else states[k - 1]
    return tuple(outputs[:len(wants)])


def _expect(cfg, name, array, shape):
    if array is not None and tuple(array.shape) != shape:
        raise ValueError(f"{cfg.op_type} input {name} has shape {tuple(array.shape)}, expected {shape}")


def _lengths(cfg, sequence_lens, T, N):
    """Host int64 lengths (N,), or None when every sequence runs the full T steps."""
    if sequence_lens is None:
        return None
    lengths = np.asarray(to_numpy(sequence_lens)).astype(np.int64).reshape(-1)  # one device sync
    if lengths.shape != (N,):
        raise ValueError(f"{cfg.op_type} input sequence_lens has shape {lengths.shape}, expected ({N},)")
    if ((lengths < 0) | (lengths > T)).any():
        raise ValueError(f"{cfg.op_type} sequence_lens must lie in [0, {T}], got {lengths.tolist()}")
    return None if (lengths == T).all() else lengths


def _reverse_index(xp, lengths, T):
    """Time index (T, N) that reverses each sequence's first ``len`` steps and leaves the padding:
    ``index[t, b] = len_b - 1 - t`` for ``t < len_b``, else ``t``. It is its own inverse."""
    t = np.arange(T)[:, None]
    return xp.asarray(np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t))


def _in_direction_order(xp, cfg, a, reverse_index):
    """Reverse in time the directions that run backwards. a (D, T, N, K)."""
    if not any(cfg.reversed_dirs):
        return a
    parts = []
    for d, backwards in enumerate(cfg.reversed_dirs):
        if not backwards:
            parts.append(a[d])
        elif reverse_index is None:
            parts.append(a[d, ::-1])
        else:
            parts.append(a[d][reverse_index, xp.arange(a.shape[2])[None, :]])  # (T, N, K)
    return parts[0][None] if len(parts) == 1 else xp.stack(parts)
