"""What the native cells hand the kernels: data pointers, element strides, and the recurrent
weights in the layout a call should read them in.

``recurrent_weights`` is the one place that chooses between the two layouts the kernels accept
(see ``model_core/native/rnn_kernels.c``): W_hh^T as the layer stores it, read in place, or a
packed copy with each unit group's gates side by side. Packing costs one pass over the weights
(about two products' worth at H=256), so it is made per call, only when the call runs enough rows
to pay for it, and kept only for read-only weights: weights updated in place by an optimiser are
always current. A read-only W_hh^T (``SequenceModel.freeze``: the service's loaded models) cannot
change in place, so its packed copy is made once and kept while its storage lives; a batched step
then pays one product, not three. The per-call copy goes into a per-thread scratch buffer: a fresh
1 MiB array would cost ~256 page faults per call, more than the copy itself.
"""
from __future__ import annotations

import math
import threading
import weakref
from typing import NamedTuple

import numpy as np

from model_core.native import data_pointer, lib

NULL = None
PACK_MIN_BATCH = 16       # rows per step from which packing pays even for a single step
PACK_MIN_ROWS = 64        # rows (B x T) in one call from which a packed copy pays for itself
_GROUP = 8                # hidden units per packed group: one vector of float32
_PANEL = 32               # the RNN's units per packed panel: four vectors, the LSTM tile's width
FUSED_MIN_BATCH = 2       # the input projection is made in the kernel's tile from 2 rows; at one, over
                          # all T steps first (``projected``: the LSTM's and GRU's, in the tile's order)
ALIGN = 64                # bytes: kernel buffers start on a cache line (see ``aligned_empty``)
_scratch = threading.local()
_frozen: dict[tuple, tuple[weakref.ref, np.ndarray]] = {}      # packed copies of read-only weights


def aligned_empty(shape) -> np.ndarray:
    """An uninitialised float32 array whose data starts on a cache line, for what the kernels stream
    as vectors (packed weights, work buffers). NumPy's large arrays start 16 bytes past a line
    (malloc's header), where half of the kernels' 32-byte loads and stores span two lines: with the
    packed weights or the LSTM's c buffer there, an LSTM forward at B=32 took 1.2x the time (in-process
    A/B), and which alignment a call got depended on the allocator's state, i.e. on what ran before."""
    size = math.prod(shape) if isinstance(shape, (tuple, list)) else int(shape)   # np.prod of a tuple: ~10 us
    raw = np.empty(size + ALIGN // 4, np.float32)
    start = (-data_pointer(raw) % ALIGN) // 4
    return raw[start:start + size].reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of ``a`` starting on a cache line (``aligned_empty``)."""
    out = aligned_empty(a.shape)
    out[...] = a
    return out


def _scratch_buffer(shape) -> np.ndarray:
    """A float32 array of ``shape`` owned by this thread, reused by its next call (never returned
    to a caller: it only lives for the duration of one kernel call)."""
    size = math.prod(shape)
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = aligned_empty(size)
    return buf[:size].reshape(shape)


class KernelWeights(NamedTuple):
    """A weight matrix as the kernels read it: data pointer and element strides between rows k,
    gates and unit groups; ``keep`` holds the array alive for the duration of the call."""
    ptr: int
    wk: int
    wg: int
    wu: int
    keep: np.ndarray

    @property
    def packed(self) -> bool:
        """The register tile's layout (the kernels mark the row-streaming one by wu == 8)."""
        return self.wu != _GROUP


def ptr(a: np.ndarray | None) -> int | None:
    """A float32 array's data pointer (None passes a NULL pointer). The caller keeps ``a`` bound
    to a name until the kernel returns: a pointer into a temporary would dangle."""
    return None if a is None else data_pointer(a)


def c_array(a) -> np.ndarray:
    """``a`` as a C-contiguous float32 array: itself when it already is one (checked first: the
    streaming step calls this on every state, and the check is cheaper than the call)."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def rows_contiguous(a: np.ndarray) -> bool:
    """Can the kernels write ``a`` (B, H) as rows of H floats ``a.strides[0]`` bytes apart?"""
    return (a.strides[1] == 4 or a.shape[1] <= 1) and a.strides[0] % 4 == 0 and a.strides[0] >= 0


def row_strides(a: np.ndarray) -> tuple[int, int]:
    """Element strides of the first two axes of a (T, B, N) float32 array whose rows are contiguous."""
    return a.strides[0] // 4, a.strides[1] // 4


def backward_strides(a: np.ndarray) -> np.ndarray:
    """``a`` (T, B, N) with contiguous rows, as the kernels read it: a copy only when needed."""
    if a.dtype != np.float32 or a.strides[2] != 4 or a.strides[0] % 4 or a.strides[1] % 4:
        return np.ascontiguousarray(a, dtype=np.float32)
    return a


def pack(weight_t: np.ndarray, scratch: bool = False, gates: int | None = None, panels: bool = False) -> np.ndarray:
    """(K, G*H) -> (U, K, G, 8): per group of 8 hidden units, every gate's 8 columns of each row
    side by side (zero past H), so the kernel's register tile reads one contiguous stream.
    W_hh^T is square per gate (K = H, G inferred); W_ih^T (K = I) needs ``gates``.
    ``panels``: the RNN's layout instead, (K, H) -> (ceil(H/32), K, 32) (``mc_pack_panels``).
    ``scratch``: into this thread's reusable buffer, valid until its next packing."""
    K, GH = weight_t.shape
    if panels:
        shape = (-(-GH // _PANEL), K, _PANEL)
    else:
        G = gates or GH // K
        H = GH // G
        shape = (-(-H // _GROUP), K, G, _GROUP)
    packed = _scratch_buffer(shape) if scratch else aligned_empty(shape)
    if panels:
        lib.mc_pack_panels(K, GH, ptr(weight_t), ptr(packed))
    else:
        lib.mc_pack_rows(K, H, G, ptr(weight_t), ptr(packed))
    return packed


def _reads_packed(weight_hh_t: np.ndarray, B: int, T: int) -> bool:
    """Does a call of T steps of B rows read W_hh^T packed? (``recurrent_weights``' rule) Read-only
    weights always do, from their kept copy: a frozen layer's step reads it too, so a sequence
    gives the same bits in one call or in pieces (``fuses_input``)."""
    return B >= PACK_MIN_BATCH or B * T >= PACK_MIN_ROWS or frozen(weight_hh_t)


def reads_row_form(weight_hh_t: np.ndarray, B: int, kept: bool) -> bool:
    """Does a call of B rows read W_hh^T (H, G*H) as stored, in the kernels' row form
    (``mc_row_form``: one row, W_hh^T within 1 MiB and on a cache line, where a layer stores it)?
    Its sums are the packed pair tile's, so the choice never changes a bit. A GRU row always does:
    0.82x the pair tile's time a step, and no copy. An LSTM row only without a ``kept`` packed copy
    (writable weights): the 16-lane pair tile reads one faster (6.5 against 7.1 us a step at H=256,
    C harness), but a writable layer would pack per call (about 70 us at H=256) or, for short calls,
    stream W_hh^T row by row through memory accumulators."""
    H, GH = weight_hh_t.shape
    return bool(lib.mc_row_form(B, H, GH // H, ptr(weight_hh_t))) and (GH == 3 * H or not kept)


def fuses_input(weight_ih_t: np.ndarray, B: int) -> bool:
    """Does an RNN sequence of B rows make its input projection in the kernel's tile? From
    FUSED_MIN_BATCH rows, and at any batch for read-only weights: a frozen layer's step makes it
    there (from the kept copies), and a sequence must give the step's bits whether a session
    sends it in one call or in pieces. (The LSTM and GRU project a one-row sequence first, with
    the same bits: ``projected``.)"""
    return B >= FUSED_MIN_BATCH or frozen(weight_ih_t)


def projected(x: np.ndarray, weight_ih_t: np.ndarray, bias: np.ndarray | None, gates: int) -> np.ndarray:
    """x (T, 1, I) @ W_ih^T + bias, (T, 1, G*H), made by ``mc_project``: each value from the bias
    over k in order, as the fused tile makes it before it turns to h, so a one-row sequence
    projected first gives the bits of a frozen layer's ``step()`` (one call or in pieces). W_ih^T
    packed (``input_weights``). Why not a GEMM: OpenBLAS's AVX-512 sgemm leaves the kernel that
    follows it 1.10-1.14x slower for milliseconds (see ``project_rows`` in the kernels). Why not
    the fused tile, at one row: it reads W_ih at every step. Frozen, against the fused tile:
    0.91-0.93x the time at H=256, 0.78-0.79x at H=512 (in-process A/B, median of 21); writable,
    against the GEMM first: 0.89x (GRU) and 0.93x (LSTM) run alone, level when the two take turns
    (the sgemm's slowdown then reaches both). Xeon, 1 thread, 2026-12-03."""
    return project_packed(x, input_weights(weight_ih_t, gates), bias, weight_ih_t.shape[1] // gates, gates)


def project_packed(x: np.ndarray, wi: np.ndarray, bias: np.ndarray | None, H: int, gates: int) -> np.ndarray:
    """``projected`` from W_ih^T already packed (``pack``; an ONNX session's kept copy)."""
    T, B, I = x.shape
    if B != 1:
        raise ValueError(f"the projection takes one-row sequences (T, 1, I), got {x.shape}")
    x = fused_input(x)
    out = aligned_empty((T, 1, gates * H))
    bias = None if bias is None else c_array(bias)
    if lib.mc_project(T, I, H, gates, ptr(x), x.strides[0] // 4, ptr(wi), ptr(bias), ptr(out), gates * H):
        raise ValueError(f"mc_project takes the LSTM's 4 gates or the GRU's 3, got {gates}")
    return out


def recurrent_weights(weight_hh_t: np.ndarray, B: int, T: int = 1) -> KernelWeights:
    """W_hh^T (H, G*H) in the layout a call of T steps of B rows reads fastest: packed once the
    batch is big enough for the register tile to beat streaming the rows (B >= 16), or the
    sequence long enough to pay for the copy. At B=1 too, where both read the same bytes: the
    one-row tile runs two unit groups at once, and a team splits a step by them. With a copy per
    call (writable weights, 1 thread) a B=1 forward took 0.64-0.69x the time of the rows as stored
    at H=512, 0.88-0.93x at H=128, level at H=256 (Xeon, in-process A/B, median of 21; on Zen 3
    it was level at H=256); a kept copy (read-only weights) 0.91-0.95x at H=256. A single step
    stays as it is stored whatever the weights, as ``step()`` reads them. One row may read it as
    stored in the kernels' row form instead (``reads_row_form``)."""
    weight_hh_t = c_array(weight_hh_t)                                  # the layer's storage already is
    H, GH = weight_hh_t.shape
    G = GH // H
    if not reads_row_form(weight_hh_t, B, frozen(weight_hh_t)) and _reads_packed(weight_hh_t, B, T):
        packed = frozen_pack(weight_hh_t)
        if packed is None:
            packed = pack(weight_hh_t, scratch=True)
        return KernelWeights(ptr(packed), G * _GROUP, _GROUP, H * G * _GROUP, packed)
    return stored_weights(weight_hh_t)


def stored_weights(weight_hh_t: np.ndarray) -> KernelWeights:
    """W_hh^T (H, G*H), C-contiguous float32, as stored: the layout the kernels stream by rows, and
    one row reads in the row form (``reads_row_form``)."""
    H, GH = weight_hh_t.shape
    return KernelWeights(ptr(weight_hh_t), GH, H, _GROUP, weight_hh_t)


def recurrent_panels(weight_hh_t: np.ndarray, B: int, T: int = 1) -> tuple[np.ndarray, int]:
    """The RNN's W_hh^T (H, H) as a call of T steps of B rows reads it (``recurrent_weights``' rule,
    in the RNN's panels: the kept copy of read-only weights, or a copy per call), and whether it is
    packed (1) or as stored (0)."""
    weight_hh_t = c_array(weight_hh_t)
    if not _reads_packed(weight_hh_t, B, T):
        return weight_hh_t, 0
    packed = frozen_pack(weight_hh_t, panels=True)
    return (pack(weight_hh_t, scratch=True, panels=True) if packed is None else packed), 1


def packed_weights(weight_hh_t: np.ndarray, panels: bool = False) -> KernelWeights:
    """Always the packed layout: for weights that never change (an ONNX graph's initializers).
    ``panels``: the RNN's (``pack``), whose strides are (32, 8, 32H)."""
    H, GH = weight_hh_t.shape
    G = GH // H
    packed = pack(np.ascontiguousarray(weight_hh_t, dtype=np.float32), panels=panels)
    if panels:
        return KernelWeights(ptr(packed), _PANEL, _GROUP, H * _PANEL, packed)
    return KernelWeights(ptr(packed), G * _GROUP, _GROUP, H * G * _GROUP, packed)


def step_keeps_pack(weight_hh_t: np.ndarray, B: int) -> bool:
    """Should a B-row inference step read the kept packed copy (``frozen_pack``)? The step entry
    points pack per call from ``PACK_MIN_BATCH`` rows; for read-only weights the copy is kept."""
    return B >= PACK_MIN_BATCH and frozen(weight_hh_t)


def step_input_weights(weight_ih_t: np.ndarray, weight_hh_t: np.ndarray, gates: int,
                       panels: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(W_ih, W_hh, packed) for the step entry points that take the raw input (``mc_*_input_step``):
    the kept packed copies of read-only weights (packed = 1: the projection is made in the register
    tile, at one row by the pair tile), else W_ih^T and W_hh^T as stored (0). ``panels``: the RNN's."""
    wi = frozen_pack(weight_ih_t, gates=gates, panels=panels)
    wh = frozen_pack(weight_hh_t, panels=panels) if wi is not None else None
    if wh is None:
        return c_array(weight_ih_t), c_array(weight_hh_t), 0
    return wi, wh, 1


def train_cache(cache_shapes, n_state: int, T: int, B: int, H: int, reverse: bool) -> tuple[dict, tuple]:
    """What BPTT reads, laid out as ``nn.bptt`` lays it out: each step's arrays (the cell's
    ``cache_shapes``, in its order) and the states entering each step; and the kernels' pointers
    to them, in that order."""
    steps = {k: np.empty((T, *s), np.float32) for k, s in cache_shapes(B, H).items()}
    prev = [np.empty((T, B, H), np.float32) for _ in range(n_state)]
    return {"steps": steps, "prev": prev, "reverse": reverse}, tuple(ptr(a) for a in (*steps.values(), *prev))


def length_one(step_forward_input, weights, cache_shapes, n_state: int, x, state0, y_out, reverse: bool,
               train: bool) -> tuple:
    """A length-1 sequence as ``step()`` runs it, for the bits to be the same: one call of the
    cell's ``step_forward_input`` on x[0] with its ``step_weights`` value, h' into y_out[0].
    Returns (final state, a length-1 ``train_cache`` or None)."""
    B, H = x.shape[1], y_out.shape[2]
    out = tuple([np.empty((B, H), np.float32) for _ in range(n_state)])
    cache = train_cache(cache_shapes, n_state, 1, B, H, reverse)[0] if train else None
    step_forward_input(x[0], weights, state0, out, cache)
    y_out[0] = out[0]
    return out, cache


def input_weights(weight_ih_t: np.ndarray, gates: int, panels: bool = False) -> np.ndarray:
    """W_ih^T (I, G*H) packed like W_hh^T, for the kernels that make the input projection in their
    tile (``mc_*_forward_fused``): kept for read-only weights, else packed per call."""
    packed = frozen_pack(weight_ih_t, gates=gates, panels=panels)
    return pack(c_array(weight_ih_t), gates=gates, panels=panels) if packed is None else packed


def fused_input(x: np.ndarray) -> np.ndarray:
    """The raw input (T, B, I) as the fused kernels read it: float32 with contiguous rows."""
    return x if x.dtype == np.float32 and x.strides[2] == 4 else np.ascontiguousarray(x, dtype=np.float32)


def frozen(a: np.ndarray) -> bool:
    """Can ``a``'s values never change in place? Read-only, and so is the memory it views."""
    owner = a.base if a.base is not None else a
    return not a.flags.writeable and not getattr(getattr(owner, "flags", None), "writeable", False)


def forget_packs(arrays) -> None:
    """Drop the packed copies kept for these arrays (views of the same storage included): a freeze
    after writes were turned back on must not find copies of the old values (``RecurrentBase.freeze``)."""
    owners = {id(a.base if a.base is not None else a) for a in arrays if isinstance(a, np.ndarray)}
    for key in [k for k in _frozen if k[0] in owners]:
        _frozen.pop(key, None)


def frozen_pack(weight_t: np.ndarray, gates: int | None = None, panels: bool = False) -> np.ndarray | None:
    """The packed copy of a read-only W^T (see ``pack``), made on first use and kept while its
    storage lives (the transposed view is new per call; the array it views is not); None for
    writable weights."""
    if not frozen(weight_t) or not weight_t.flags.c_contiguous:     # a copy would be new per call anyway
        return None
    owner = weight_t.base if weight_t.base is not None else weight_t
    key = (id(owner), data_pointer(weight_t), weight_t.shape, weight_t.strides, None if panels else gates, panels)
    hit = _frozen.get(key)
    if hit is not None and hit[0]() is owner:       # the same storage, not a new one at a reused address
        return hit[1]
    packed = pack(weight_t, gates=gates, panels=panels)
    packed.flags.writeable = False
    _frozen[key] = (weakref.ref(owner, lambda _, key=key: _frozen.pop(key, None)), packed)
    return packed
