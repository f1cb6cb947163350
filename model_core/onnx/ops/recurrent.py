"""ONNX LSTM, GRU and RNN with the operators' full semantics, matched to onnxruntime.

Supported: ``direction`` forward / reverse / bidirectional, ``layout`` 0 and 1, the optional
inputs B, sequence_lens, initial_h, initial_c and P (peepholes), ``clip``, ``input_forget``,
``linear_before_reset``, every activation the spec lists with ``activation_alpha`` / ``_beta``,
and any subset of the outputs Y, Y_h, Y_c.

Speed: W, R and B are laid out once (at load time when they are initializers): one GEMM projects
every step of every direction. With the default activations and no clip, peepholes or
input_forget (and, for the GRU, linear_before_reset=1, as torch exports it), LSTM and GRU run the
engine's native kernels (``model_core.native``): the gates are reordered to the engine's order
(i, f, g, o; r, z, n) and R packed once, at load, and a whole direction, ragged or not, is one
compiled call that also adds the biases. So does the RNN with Tanh or Relu and no clip. Every
other configuration runs the NumPy loops of ``recurrent_loops``: each step is one
(N, H) @ (H, G*H) GEMM into a preallocated buffer and in-place gate math; reverse directions read
the projection backwards through a view, and masking runs only at steps where some sequence has
ended.

A session made with ``weights="bfloat16"`` has every LSTM and GRU node read W and R rounded once
to bfloat16, with float32 arithmetic (``model_core.cells.native_bf16``, the kernel a frozen
layer's ``freeze(weights="bfloat16")`` runs): the configurations the native kernels run, with W, R
and B initializers. Any other recurrent node refuses it (``WeightsUnsupported``).

Ragged batches follow onnxruntime: Y is zero past each sequence's length, Y_h / Y_c hold the
state at its last valid step, the reverse direction starts at each sequence's own last valid
step, and a sequence of length 0 gets zero Y_h / Y_c (not initial_h).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from model_core import native
from model_core.backend import to_numpy
from model_core.cells import native_bf16
from model_core.cells.native_weights import (FUSED_MIN_BATCH, aligned_copy, aligned_empty, pack, packed_weights,
                                             project_packed, reads_row_form, stored_weights)
from model_core.onnx.ops.activations import bind_activations
from model_core.onnx.ops.recurrent_loops import GATES, gru_loop, lstm_loop, lstm_loop_halved, native_loop, rnn_loop
from model_core.onnx.ops.registry import Unsupported, WeightsUnsupported, register

DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}
# ONNX gate blocks in the engine's order: LSTM i,o,f,c -> i,f,g,o; GRU z,r,h -> r,z,n; RNN as it is
ENGINE_GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}

ONE_ROW_PROJECTED = ("LSTM", "GRU")     # ops whose one-row input is projected by mc_project (_directions)
BF16_OPS = ("LSTM", "GRU")              # ops whose nodes can read bfloat16 weights (Node.weights)


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
    constant = _constant_weights(node, cfg)  # W, R, B laid out for the loops once, not per call
    if node.weights == "bfloat16":
        constant = _with_bf16(node, cfg, constant)
        node.reads_bf16 = True

    def kernel(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        return run_recurrent(xp, cfg, wants, X, W, R, B, sequence_lens, initial_h, initial_c, P, constant)
    return kernel


@dataclass(frozen=True)
class Weights:
    """W, R and B as the loops use them. W_T (I, D*G*H): every direction's input weights side by
    side, so one GEMM projects all steps of all directions; bias (D*G*H,) or None: W's and R's
    biases summed, less R's candidate bias under linear_before_reset, which is ``rb_h`` (per
    direction (H,)); R_T: per direction (H, G*H), contiguous, the per-step GEMM's right operand.
    ``halved``: per direction, whether the LSTM's i, o, f columns are scaled by 1/2 (see
    ``halved_gates``). ``kernel``: per direction, R packed for the native kernels, or None when
    the NumPy loops run (then the gates keep the ONNX order). ``kernel_in``: per direction, W
    packed the same way, for the input projection inside the kernel (None off the native path).
    ``bf16``: per direction, W, R and the biases rounded and packed for the bfloat16 kernel
    (``native_bf16.pack``), which then runs the node (and ``kernel``, ``kernel_in`` are None: no
    float32 copies kept for nothing); None: float32 weights."""
    W_T: object
    bias: object
    R_T: tuple
    rb_h: tuple | None
    halved: tuple
    kernel: tuple | None = None
    kernel_in: tuple | None = None
    bf16: tuple | None = None

    @property
    def on_kernels(self) -> bool:
        """Do compiled kernels run the node (float32 or bfloat16 weights), rather than the NumPy loops?"""
        return self.kernel is not None or self.bf16 is not None


def halved_gates(cfg, peepholes: bool) -> tuple:
    """Per direction: can the LSTM's sigmoid gates take the fast path? With the default
    activations and no peepholes, W, R and B's i, o, f columns are scaled by 1/2 up front (exact:
    a power of two), so sigmoid(x) = tanh(x/2)/2 + 1/2 needs no scaling pass per step and one
    tanh covers all four gates."""
    if cfg.op_type != "LSTM" or peepholes:
        return (False,) * len(cfg.reversed_dirs)
    names = [tuple(slot[d if len(slot) > 1 else 0].key[0] for slot in cfg.activations)
             for d in range(len(cfg.reversed_dirs))]
    return tuple(n == ("sigmoid", "tanh", "tanh") for n in names)


def _activation_names(cfg, d: int) -> tuple:
    """Direction d's activations by name (lower case), one per slot."""
    return tuple(slot[d if len(slot) > 1 else 0].key[0] for slot in cfg.activations)


def relu_dirs(cfg) -> tuple:
    """Per direction: does an RNN node's direction run Relu (else Tanh), as the native kernel takes it."""
    return tuple(_activation_names(cfg, d) == ("relu",) for d in range(len(cfg.reversed_dirs)))


def runs_native(xp, cfg, peepholes: bool, dtype) -> bool:
    """Can the native kernels run this node? They implement the default activations only, and for
    the RNN Tanh or Relu (neither takes coefficients)."""
    if not native.AVAILABLE or xp is not np or np.dtype(dtype) != np.float32:
        return False
    if cfg.clip is not None or peepholes or cfg.input_forget:
        return False
    if cfg.op_type == "GRU" and not cfg.linear_before_reset:      # r multiplies h before R's product
        return False
    default = tuple(n.lower() for n in DEFAULT_ACTIVATIONS[cfg.op_type])     # sigmoid, tanh: no coefficients
    allowed = {default, ("relu",)} if cfg.op_type == "RNN" else {default}
    return all(_activation_names(cfg, d) in allowed for d in range(len(cfg.reversed_dirs)))


def _engine_order(a, op_type, H, axis):
    """Gate blocks of size H along ``axis`` reordered from ONNX's order to the engine's."""
    blocks = [np.take(a, np.arange(k * H, (k + 1) * H), axis=axis) for k in ENGINE_GATE_ORDER[op_type]]
    return np.concatenate(blocks, axis=axis)


def prepare_weights(xp, cfg, W, R, B, H, halved, use_native=False) -> Weights:
    if use_native:
        W, R = _engine_order(W, cfg.op_type, H, 1), _engine_order(R, cfg.op_type, H, 1)
        if B is not None:
            GH = B.shape[1] // 2
            B = np.concatenate([_engine_order(B[:, :GH], cfg.op_type, H, 1),
                                _engine_order(B[:, GH:], cfg.op_type, H, 1)], axis=1)
    D, GH, I = W.shape
    scale = xp.ones((D, GH), W.dtype)  # (D, G*H)
    for d, half in enumerate(halved):
        if half:
            scale[d, :3 * H] = 0.5
    W_T = xp.ascontiguousarray((W * scale[:, :, None]).transpose(2, 0, 1).reshape(I, D * GH))  # (I, D*G*H)
    # (H, G*H) each; for the kernels on a cache line, as a layer stores it (the GRU's row form reads it)
    R_T = tuple((aligned_copy if use_native else xp.ascontiguousarray)((R[d] * scale[d][:, None]).T) for d in range(D))
    bias, rb_h = None, None
    if B is not None:
        wb, rb = B[:, :GH], B[:, GH:]  # (D, G*H) each
        if cfg.linear_before_reset:
            # R's candidate bias sits inside the reset gate's product, so it stays separate
            rb_h = tuple(xp.ascontiguousarray(rb[d, 2 * H:]) for d in range(D))
            rb = xp.concatenate([rb[:, :2 * H], xp.zeros_like(rb[:, 2 * H:])], axis=1)
        bias = ((wb + rb) * scale).reshape(D * GH)
    panels = cfg.op_type == "RNN"                   # the RNN's kernel reads panels of 32 units
    kernel = tuple(packed_weights(r, panels) for r in R_T) if use_native else None
    G = GATES[cfg.op_type]
    kernel_in = (tuple(pack(xp.ascontiguousarray(W_T[:, d * GH:(d + 1) * GH]), gates=G, panels=panels)
                       for d in range(D)) if use_native else None)
    return Weights(W_T, bias, R_T, rb_h, tuple(halved), kernel, kernel_in)


def _constant_weights(node, cfg) -> Weights | None:
    """Weights prepared at load time when W, R (and B, if given) are initializers of the right
    shapes; None otherwise, and the kernel prepares them per call (and reports bad shapes)."""
    W, R = node.constant(1), node.constant(2)
    B = node.constant(3)
    if W is None or R is None or (node.has_input(3) and B is None) or W.ndim != 3 or R.ndim != 3:
        return None
    D, G = len(cfg.reversed_dirs), GATES[cfg.op_type]
    H = cfg.hidden_size or R.shape[-1]
    if W.shape[:2] != (D, G * H) or R.shape != (D, G * H, H) or (B is not None and B.shape != (D, 2 * G * H)):
        return None
    xp = node.xp
    use_native = runs_native(xp, cfg, node.has_input(7), W.dtype)
    return prepare_weights(xp, cfg, xp.asarray(W), xp.asarray(R), None if B is None else xp.asarray(B), H,
                           (False,) * D if use_native else halved_gates(cfg, node.has_input(7)), use_native)


def _with_bf16(node, cfg, constant: Weights | None) -> Weights:
    """``constant`` with each direction's weights packed for the bfloat16 kernel (the session asked
    for ``weights="bfloat16"``), or WeightsUnsupported saying why this node cannot read them."""
    if cfg.op_type not in BF16_OPS:
        why = "bfloat16 weights serve LSTM and GRU nodes"
    elif constant is None:
        why = "bfloat16 weights need W, R (and B) as initializers of the right shapes"
    elif constant.kernel is None:
        why = ("bfloat16 weights need what the native kernels run: the CPU, float32, the default activations, "
               "no clip, peepholes or input_forget, and for a GRU linear_before_reset=1")
    else:
        why = None
    if why:
        raise WeightsUnsupported(f"{node.label} ({why})")
    G, H = GATES[cfg.op_type], constant.R_T[0].shape[0]
    GH = G * H
    packed = []
    for d in range(len(cfg.reversed_dirs)):
        bias = None if constant.bias is None else constant.bias[d * GH:(d + 1) * GH]
        # the GRU's R candidate bias (linear_before_reset) as the last third of the hidden biases
        bias_hh = None if constant.rb_h is None else np.concatenate([np.zeros(2 * H, np.float32), constant.rb_h[d]])
        packed.append(native_bf16.pack(G, constant.W_T[:, d * GH:(d + 1) * GH], constant.R_T[d], bias, bias_hh))
    return replace(constant, kernel=None, kernel_in=None, bf16=tuple(packed))


def run_recurrent(xp, cfg, wants, X, W, R, B, sequence_lens, initial_h, initial_c, P, constant=None):
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
    if constant is None or (constant.on_kernels and X.dtype != np.float32):
        use_native = runs_native(xp, cfg, P is not None, X.dtype)
        w = prepare_weights(xp, cfg, W, R, B, H, (False,) * D if use_native else halved_gates(cfg, P is not None),
                            use_native)
    else:
        w = constant
    order = None
    if w.on_kernels and lengths is not None and (np.diff(lengths) > 0).any():
        # the native kernels run a step over the rows still running when the lengths are ranked,
        # longest first (a prefix): rank the batch once for every direction, restore it after
        order = np.argsort(-lengths, kind="stable")
        X, lengths = np.take(X, order, axis=1), lengths[order]
        initial_h, initial_c = (None if s is None else np.take(s, order, axis=1) for s in (initial_h, initial_c))
    ys, hs, cs = _directions(xp, cfg, wants, X, w, H, lengths, initial_h, initial_c, P)
    if order is not None:
        back = np.argsort(order)
        ys, hs, cs = (None if a is None else np.take(a, back, axis=a.ndim - 2) for a in (ys, hs, cs))
    outputs = [None, None, None]
    if ys is not None:
        outputs[0] = ys.transpose(2, 0, 1, 3) if cfg.batch_major else ys
    for k, state in ((1, hs), (2, cs)):
        if k < len(wants) and wants[k]:
            outputs[k] = state.transpose(1, 0, 2) if cfg.batch_major else state
    return tuple(outputs[:len(wants)])


def _directions(xp, cfg, wants, X, w, H, lengths, initial_h, initial_c, P):
    """Every direction of one node in layout 0: Y (T, D, N, H) or None, Y_h, Y_c (D, N, H)."""
    T, N, I = X.shape
    D, G = len(cfg.reversed_dirs), GATES[cfg.op_type]

    # what ragged batches need, made only where it is read: the step masks for the NumPy/CuPy loops
    # (which zero CuPy's Y too; the native kernels take the lengths), the reversing index for a
    # backward direction
    on_kernels = w.on_kernels               # (not `native`: that name is the module read by runs_native)
    mask = None if lengths is None or on_kernels else xp.asarray(np.arange(T)[:, None] < lengths[None, :])[..., None]
    reverse_index = None if lengths is None or not any(cfg.reversed_dirs) else _reverse_index(xp, lengths, T)
    ys = None  # Y in layout 0, filled in place (on a cache line for the native kernels, which write it by vectors)
    if wants[0]:
        native_y = on_kernels and X.dtype == np.float32
        ys = aligned_empty((T, D, N, H)) if native_y else xp.empty((T, D, N, H), X.dtype)
    hs = _initial(xp, initial_h, (D, N, H), X.dtype)
    cs = _initial(xp, initial_c, (D, N, H), X.dtype) if cfg.op_type == "LSTM" else None
    # the native kernels make each direction's input projection in their register tile;
    # otherwise every step of every direction is projected at once: one GEMM instead of one per step
    bf16 = w.bf16 is not None                                       # the bfloat16 kernel reads X as it is
    fused = not bf16 and w.kernel_in is not None and X.dtype == np.float32 and N >= FUSED_MIN_BATCH
    # one row of an LSTM or GRU: each direction's projection by the kernels' own (8-lane) tile, as a
    # one-row layer's (native_weights.projected): after OpenBLAS's AVX-512 sgemm the step kernel
    # ran 1.10-1.14x slower on the Xeon. The bias stays the kernel's to add, as with the GEMM.
    one_row = (not bf16 and w.kernel_in is not None and X.dtype == np.float32 and N == 1 and not fused
               and cfg.op_type in ONE_ROW_PROJECTED)
    if not fused and not one_row and not bf16:
        xw = xp.matmul(X.reshape(T * N, I), w.W_T)  # (T*N, D*G*H)
        if w.bias is not None and not on_kernels:  # the native kernels add it in their gate epilogue
            xw += w.bias
        xw = xw.reshape(T, N, D, G * H)
    # a step needs masking only once some sequence has ended; the native kernels take lengths instead
    shortest = T if lengths is None else int(lengths.min())
    masks = None if on_kernels else [None if t < shortest else mask[t] for t in range(T)]
    for d, backwards in enumerate(cfg.reversed_dirs):
        if one_row:
            x_d = project_packed(X, w.kernel_in[d], None, H, G)                          # (T, 1, G*H)
        else:
            x_d = X if fused or bf16 else xw[:, :, d]  # (T, N, I) or (T, N, G*H), in input time order
        y_d = None if ys is None else ys[:, d]  # (T, N, H)
        if backwards and reverse_index is None and not on_kernels:
            x_d, y_d = x_d[::-1], None if y_d is None else y_d[::-1]  # views: reading backwards is free
        elif backwards and reverse_index is not None:
            # each sequence runs backwards from its own last step: gather once (X is I wide, the
            # projection G*H), scatter Y back after
            x_d = x_d[reverse_index, xp.arange(N)[None, :]]
            y_d = None if ys is None else xp.empty((T, N, H), X.dtype)
        acts = tuple(slot[d] if len(slot) > 1 else slot[0] for slot in cfg.activations)
        if bf16:
            state = native_bf16.sequence_forward(x_d, w.bf16[d], (hs[d],) if cs is None else (hs[d], cs[d]),
                                                 backwards and reverse_index is None,
                                                 aligned_empty((T, N, H)) if y_d is None else y_d, lengths)
            for kept, final in zip((hs, cs), state):
                kept[d] = final
        elif on_kernels:
            GH = G * H
            # one row may read R^T as stored, in the kernels' row form (a GRU's; an LSTM keeps its packed R)
            kernel = stored_weights(w.R_T[d]) if one_row and reads_row_form(w.R_T[d], 1, kept=True) else w.kernel[d]
            native_loop(cfg.op_type, x_d, kernel, None if w.bias is None else w.bias[d * GH:(d + 1) * GH],
                        None if w.rb_h is None else w.rb_h[d], hs[d], None if cs is None else cs[d], lengths, y_d,
                        backwards and reverse_index is None, w.kernel_in[d] if fused else None,
                        cfg.op_type == "RNN" and relu_dirs(cfg)[d])
        elif cfg.op_type == "LSTM":
            loop = lstm_loop_halved if w.halved[d] else lstm_loop
            loop(xp, cfg, acts, x_d, w.R_T[d], None if P is None else P[d], hs[d], cs[d], masks, y_d)
        elif cfg.op_type == "GRU":
            gru_loop(xp, cfg, acts, x_d, w.R_T[d], None if w.rb_h is None else w.rb_h[d], hs[d], masks, y_d)
        else:
            rnn_loop(xp, cfg, acts, x_d, w.R_T[d], hs[d], masks, y_d)
        if backwards and reverse_index is not None and ys is not None:
            ys[:, d] = y_d[reverse_index, xp.arange(N)[None, :]]  # the index is its own inverse

    if lengths is not None and (lengths == 0).any():
        # onnxruntime's Y_h / Y_c for an empty sequence: zeros, not the initial state
        empty = xp.asarray(lengths == 0)[None, :, None]  # (1, N, 1)
        xp.copyto(hs, 0, where=empty)
        if cs is not None:
            xp.copyto(cs, 0, where=empty)
    if ys is not None and lengths is not None:     # Y is zero past each sequence's length
        if xp is np:                                # a slice per short sequence: a masked copy visits every element
            for b, n in enumerate(lengths.tolist()):
                if n < T:
                    ys[n:, :, b] = 0
        else:                                       # CuPy: no native kernels, so the mask exists
            xp.copyto(ys, 0, where=~mask[:, None])
    return ys, hs, cs


def _initial(xp, given, shape, dtype):
    """A fresh C-ordered state array the loops update in place (the caller's initial state is never
    written; layout 1 hands in a transposed view, whose copy would otherwise keep its strides)."""
    return xp.zeros(shape, dtype) if given is None else xp.array(given, dtype=dtype, copy=True, order="C")


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

