"""The native kernels beyond what ``test_fast_paths`` compares on every path:

* the portable build (no AVX) and a two-thread team give the reference's results;
* ``model_core.set_num_threads`` reaches OpenBLAS and the kernels;
* ``step()``'s entry point (array handles, scratch and packing in C) agrees with the reference
  step, with and without biases, on states laid out any way;
* ONNX LSTM/GRU nodes take the kernels exactly when their attributes allow it, and agree with the
  NumPy loops they replace (onnxruntime parity is ``test_onnx_recurrent``'s).
"""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper, numpy_helper

import model_core
from model_core import native
from model_core.cells import select
from model_core.nn import GRU, LSTM, RNN
from model_core.onnx import InferenceSession
from tests.helpers import ROOT, run_python

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=f"native kernels unavailable: {native.REASON}")


def RNN_RELU(*args, **kwargs):
    """The Elman RNN with relu (the kernel's other activation), built as the classes are."""
    return RNN(*args, nonlinearity="relu", **kwargs)


CLASSES = [LSTM, GRU, RNN, RNN_RELU]


def _on_the_numpy_cell(layer):
    """Switch ``layer`` to the NumPy reference cell (float32), the one the kernels are checked against."""
    layer._cell = select(layer._kind, np, np.float32, getattr(layer, "nonlinearity", "tanh"), reference=True)
    layer._consts = layer._cell.gate_constants(np, layer.hidden_size, np.float32)
    return layer


def _compare_with_reference(cls, I, H, T, B, seed=0):
    """Max |native - reference| over y, final state, dx and every gradient, float32."""
    layer = cls(I, H, seed=seed)
    ref = cls(I, H, seed=seed)
    _on_the_numpy_cell(ref)
    assert layer._cell.native and not ref._cell.fused
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y, s, cache = layer.forward_train(x)
    y_ref, s_ref, cache_ref = ref.forward_train(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _, grads = layer.backward(cache, dy)
    dx_ref, _, grads_ref = ref.backward(cache_ref, dy)
    errs = [np.abs(y - y_ref).max(), np.abs(dx - dx_ref).max()]
    errs += [np.abs(a - b).max() for a, b in zip(s if isinstance(s, tuple) else (s,),
                                                 s_ref if isinstance(s_ref, tuple) else (s_ref,))]
    errs += [np.abs(grads[k] - grads_ref[k]).max() / max(1.0, np.abs(grads_ref[k]).max()) for k in grads]
    return max(errs)


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
def test_data_pointer_reads_what_ctypes_does():
    from model_core.native import data_pointer
    base = np.arange(120, dtype=np.float32).reshape(10, 12)
    frozen = base.copy()
    frozen.flags.writeable = False
    for a in (base, base[3], base[2:, 5:], base.T, frozen, np.empty(0, np.float32), np.asfortranarray(base)):
        assert data_pointer(a) == a.ctypes.data


@pytest.mark.parametrize("frozen", [False, True])             # True: the kept packed copies, any B
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B", [1, 3, 20])                      # 20: the entry point packs W_ih^T and W_hh^T in C
@pytest.mark.parametrize("cls", CLASSES)
def test_step_entry_point_matches_the_reference_step(cls, B, bias, frozen):
    I, H = 7, 19                                               # H: a partial last unit group
    layer, ref = cls(I, H, num_layers=2, bias=bias, seed=5), cls(I, H, num_layers=2, bias=bias, seed=5)
    if frozen:
        layer.freeze()
    _on_the_numpy_cell(ref)
    rng = np.random.default_rng(B)
    parts = [rng.standard_normal((2, B, H)).astype(np.float32) for _ in range(layer.state_size)]
    for layout in (parts, [np.asfortranarray(p) for p in parts]):     # Fortran order: the general path
        state = tuple(layout) if layer.state_size == 2 else layout[0]
        for _ in range(3):                                            # the state carries over
            x = rng.standard_normal((B, I)).astype(np.float32)
            y, new = layer.step(x, state)
            y_ref, new_ref = ref.step(x, state)
            np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-6)
            for a, b in zip(new if isinstance(new, tuple) else (new,), new_ref if isinstance(new_ref, tuple) else (new_ref,)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
            state = new


def test_array_handles_are_checked_before_use():
    """The step entry point reads a data pointer from an array's address only where the loader
    verified that layout; either way ``handle`` resolves to something the kernel can use."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)[1:]
    assert native.handle(None) == 0
    assert native.handle(a) in (id(a), a.ctypes.data)
    assert native._handles_work() == (native.handle(a) == id(a))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("H, T, B", [(100, 6, 24),        # B*G*H*H past the team's threshold, B*T past packing
                                     (210, 70, 1)])       # one row, but G*H*H past it: packed and split too
def test_two_threads_match_the_reference(cls, H, T, B, monkeypatch):
    """The team splits unit groups (forward), rows and columns (BPTT)."""
    from model_core.cells import native_gru, native_lstm, native_rnn, native_weights
    packed = []
    real, real_panels = native_weights.recurrent_weights, native_weights.recurrent_panels
    for mod in (native_lstm, native_gru):
        monkeypatch.setattr(mod, "recurrent_weights", lambda *a: packed.append(real(*a).packed) or real(*a))
    monkeypatch.setattr(native_rnn, "recurrent_panels", lambda *a: packed.append(real_panels(*a)[1]) or real_panels(*a))
    if cls(1, 1)._kind == "rnn" and B == 1:
        H = 370                                           # the RNN's H*H past the threshold (G = 1)
    try:
        model_core.set_num_threads(2)
        split = native.lib.mc_team_forwards()
        assert _compare_with_reference(cls, I=6, H=H, T=T, B=B, seed=3) < 2e-5
        split = native.lib.mc_team_forwards() - split
        assert split == (1 if native.threads() > 1 else 0)         # the training forward ran on the team
    finally:
        model_core.set_num_threads(1)
    assert packed and all(packed)


def test_packing_on_two_threads_writes_what_one_thread_writes():
    """Weights larger than L2 are packed by the team at 2 threads (a share of the row blocks each):
    every element lands where one thread puts it, the zero padding of a partial group included."""
    from model_core.cells.native_weights import pack
    w = np.random.default_rng(1).standard_normal((203, 4 * 203), dtype=np.float32)   # 4*203*203 > L2
    want = pack(w)
    try:
        model_core.set_num_threads(2)
        got = pack(w)
    finally:
        model_core.set_num_threads(1)
    assert np.array_equal(got, want) and want[-1, :, :, 203 % 8:].max() == 0


def _skip_without_a_team():
    """Skip where this build has no OpenMP (one thread only); else start from 1 thread."""
    if native.lib.mc_set_threads(2) < 2:
        pytest.skip("this build has no OpenMP: one thread")
    model_core.set_num_threads(1)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("B, H, T, team", [(1, 256, 1, True),      # a streaming step, one row: B*G*H*H past twice the threshold
                                           (4, 128, 1, True),      # B*G*H*H past twice the threshold
                                           (1, 64, 1, False),      # a step too small to pay for the team
                                           (2, 128, 70, True),     # a short sequence (fused: at B=1 BLAS projects); not the RNN's
                                           (8, 32, 50, False)])    # a sequence step shorter than the wait
def test_the_team_takes_calls_with_enough_work_a_step(cls, B, H, T, team):
    """threads_for: 2 threads split a call once a step's recurrent product has TEAM_MIN_MACS
    multiply-adds (B*G*H*H), twice that for a single step, and give one thread's bits either way."""
    _skip_without_a_team()
    layer = cls(16, H, seed=5).freeze()
    G = {"lstm": 4, "gru": 3, "rnn": 1}[layer._kind]
    team = team and B * G * H * H >= (2 if T == 1 else 1) * 65536           # the GRU's and RNN's G
    x = np.random.default_rng(5).standard_normal((T, B, 16), dtype=np.float32)
    run = (lambda: layer.step(x[0], layer.init_state(B))[0]) if T == 1 else (lambda: layer.forward(x)[0])
    want = run()
    try:
        model_core.set_num_threads(2)
        split = native.lib.mc_team_forwards()
        got = run()
        split = native.lib.mc_team_forwards() - split
    finally:
        model_core.set_num_threads(1)
    assert split == int(team)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("H", [136, 264, 160])         # U = 17, 33: each with a last group alone; 160: the GRU's row form
@pytest.mark.parametrize("cls", CLASSES)
def test_one_row_on_a_team_runs_every_item_of_every_step_once(cls, H):
    """At B=1 the odd steps run each thread's share of items backwards (item_in_order), on one
    thread and on a team; each item's sums are the same either way, so a sequence gives the same
    bits on 1 and 2 kernel threads (the input projection, made first at B=1, too), and an item
    missed or run twice would not. One thread's run is checked against the reference."""
    _skip_without_a_team()
    T, I = 70, 16                                              # B*T past packing
    layer = cls(I, H, seed=6).freeze()
    x = np.random.default_rng(6).standard_normal((T, 1, I), dtype=np.float32)
    want = layer.forward(x)
    assert _compare_with_reference(cls, I=I, H=H, T=T, B=1, seed=6) < 2e-5
    try:
        native.set_threads(2)
        split = native.lib.mc_team_forwards()
        got = layer.forward(x)
        split = native.lib.mc_team_forwards() - split
    finally:
        native.set_threads(1)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[layer._kind]
    assert split == int(G * H * H >= 65536)
    for a, b in zip(_arrays(got), _arrays(want)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("H", [100, 264])                 # U = 13, 33: unequal shares, a partial last group
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_a_one_row_projection_on_a_team_gives_one_threads_bits(cls, H):
    """A one-row sequence's input projection (mc_project) is split across the team by unit groups
    from twice TEAM_MIN_MACS multiply-adds (N*I*G*H); each value is summed as on one thread, so the
    projection and the layer's forward give one thread's bits, where a group missed or made twice
    would not. A short sequence stays on one thread."""
    from model_core.cells.native_weights import input_weights, project_packed
    _skip_without_a_team()
    I = 40
    layer = cls(I, H, seed=9).freeze()
    G = 4 if layer._kind == "lstm" else 3
    rng = np.random.default_rng(9)
    w, bias = rng.standard_normal((I, G * H), dtype=np.float32), rng.standard_normal(G * H, dtype=np.float32)
    wi = input_weights(w, G)
    for T in (100, 2):
        team = T * I * G * H >= 2 * 65536
        x = np.random.default_rng(T).standard_normal((T, 1, I), dtype=np.float32)
        want_p, want_y = project_packed(x, wi, bias, H, G), layer.forward(x)
        try:
            model_core.set_num_threads(2)
            split = native.lib.mc_team_projections()
            got_p, got_y = project_packed(x, wi, bias, H, G), layer.forward(x)
            split = native.lib.mc_team_projections() - split
        finally:
            model_core.set_num_threads(1)
        assert team == (T == 100)
        assert split == 2 * int(team)                               # project_packed, then the forward's
        assert np.array_equal(got_p, want_p)
        for a, b in zip(_arrays(got_y), _arrays(want_y)):
            assert np.array_equal(a, b)
        np.testing.assert_allclose(want_p[:, 0], x[:, 0] @ w + bias, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("H", [256, 136])                    # 136: U = 17, a last unit group alone
@pytest.mark.parametrize("cls", CLASSES)
def test_a_one_row_step_runs_its_items_in_the_other_order_every_other_call(cls, H, frozen, threads):
    """step() at B=1 is a call of one step: every other such call runs item_in_order's odd-step
    order (first_step), starting on the weights the call before ended on. Each item sums the same
    either way, so the same input and state give the same bits call after call, in both orders,
    on 1 and 2 threads; an item skipped or run twice in one order would show as a difference."""
    if threads == 2:
        _skip_without_a_team()
    I = 24
    layer = cls(I, H, seed=8)
    if frozen:
        layer = layer.freeze()
    x = np.random.default_rng(8).standard_normal((1, I), dtype=np.float32)
    state = layer.step(x, layer.init_state(1))[1]                         # a state that is not zero
    try:
        model_core.set_num_threads(threads)
        calls = native.lib.mc_one_row_steps()
        outs = [list(_arrays(layer.step(x, state))) for _ in range(4)]
        calls = native.lib.mc_one_row_steps() - calls
    finally:
        model_core.set_num_threads(1)
    assert calls == 4                                                    # two calls in each order
    for got in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(got, outs[0]))
    ref = cls(I, H, seed=8)                                               # the same weights, the NumPy cell
    _on_the_numpy_cell(ref)
    np.testing.assert_allclose(outs[0][0], ref.step(x, state)[0], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_two_threads_give_one_threads_bits_call_after_call(cls):
    """A team step ends when its items are done (a count, not a barrier: a thread may run ahead into
    the next step or skip one it missed). Were any item read before it was written, some call out of
    many would differ: the packed kernels make the same sums in the same order on 1 or 2 threads, so
    every output and everything the training forward keeps for BPTT must match bit for bit."""
    B, T, I, H = 24, 30, 6, 100                                   # packed on 1 thread too (B*T >= 64)
    layer = cls(I, H, seed=4)
    x = np.random.default_rng(4).standard_normal((T, B, I), dtype=np.float32)
    want_y, want_cache = layer.forward(x)[0], layer.forward_train(x)[2]
    try:
        model_core.set_num_threads(2)
        split = native.lib.mc_team_forwards()
        for _ in range(20):
            assert np.array_equal(layer.forward(x)[0], want_y)
            got, want = list(_arrays(layer.forward_train(x)[2])), list(_arrays(want_cache))
            assert len(got) == len(want) >= 3 and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert native.lib.mc_team_forwards() - split == (40 if native.threads() > 1 else 0)
    finally:
        model_core.set_num_threads(1)


def _arrays(tree):
    """Every array in a nest of dataclasses, dicts, lists and tuples, in order."""
    if isinstance(tree, np.ndarray):
        yield tree
    elif dataclasses.is_dataclass(tree):
        for f in dataclasses.fields(tree):
            yield from _arrays(getattr(tree, f.name))
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _arrays(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _arrays(v)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("H", [16, 24, 40, 204, 210])  # U even / odd (a group left alone), a partial last group
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_row_makes_the_sums_a_row_of_a_batch_makes(cell, H, fused):
    """One row runs two unit groups side by side (``tile_row_pair``: twice the FMA chains), at B=1
    and for the last row of a batch that its tiles leave alone. Each output must be the same sum in
    the same order as a row of a wider tile: each row of a batch gives, bit for bit, what that row
    alone gives, y and the final state, what training keeps for BPTT, a row held past its length
    (lengths ranked longest first: the step runs the rows still running and copies the rest; else
    each row runs its tile and drops it), with and without the projection in the tile."""
    from model_core.cells.native_weights import NULL, aligned_empty, pack, ptr
    T, I, G, B = 9, 5, {"lstm": 4, "gru": 3, "rnn": 1}[cell], 8
    rng = np.random.default_rng(H)
    xs = rng.standard_normal((T, B, I if fused else G * H), dtype=np.float32)   # every row its own
    panels = cell == "rnn"                                                       # the RNN's layout
    wi = pack(rng.standard_normal((I, G * H), dtype=np.float32), gates=G, panels=panels)
    w = pack(rng.standard_normal((H, G * H), dtype=np.float32) * 0.2, panels=panels)
    bias, b_hn = rng.standard_normal(G * H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    states = [rng.standard_normal((B, H), dtype=np.float32) for _ in range(max(1, G // 2))]      # h (and c)
    lstm = cell == "lstm"

    lengths = {"ranked": np.full(B, T - 3, np.int64),                  # held for the last 3 steps
               "unranked": T - 3 + np.arange(B) % 3}                   # 6, 7, 8, 6, ...: each row its tile
    lengths["unranked"][0] = 0                                         # and one held from the start

    def run(rows, ragged):
        x, s0 = np.ascontiguousarray(xs[:, rows]), [np.ascontiguousarray(s[rows]) for s in states]
        B = len(rows)
        lens = np.ascontiguousarray(lengths[ragged][rows]) if ragged else None
        shapes = {"y": (T, B, H), "hT": (B, H), "cT": (B, H), "gates": (T, B, G * H), "tanhc_or_hn": (T, B, H),
                  "prev_h": (T, B, H), "prev_c": (T, B, H)}
        unused = () if lstm else ("cT", "prev_c", "tanhc_or_hn") if panels else ("cT", "prev_c")   # RNN: h' in "gates"
        out = {k: aligned_empty(v) for k, v in shapes.items() if k not in unused}

        def keep(k):                                                    # training keeps nothing for ragged rows
            return NULL if ragged else ptr(out[k])

        work = aligned_empty(6 * B * H)
        if panels:                                                      # mc_rnn_forward, tanh
            args = [T, B, H, I if fused else 0, 0, 0, ptr(x), B * x.shape[2], x.shape[2], ptr(wi) if fused else NULL,
                    ptr(bias), ptr(lens), ptr(w), 1, ptr(s0[0]), ptr(out["y"]), B * H, H, ptr(out["hT"]),
                    keep("gates"), keep("prev_h")]
            assert not native.lib.mc_rnn_forward(*args)
            return out if not ragged else {k: out[k] for k in ("y", "hT", "cT") if k in out}
        args = [T, B, H, *((I,) if fused else ()), 0, ptr(x), B * x.shape[2], x.shape[2]]
        args += [ptr(wi), ptr(bias)] if fused else [ptr(bias)]
        args += [ptr(lens), ptr(w), G * 8, 8, H * G * 8]
        args += [ptr(s0[0]), ptr(s0[1])] if lstm else [ptr(b_hn), ptr(s0[0])]
        args += [ptr(out["y"]), B * H, H, ptr(out["hT"]), *([ptr(out["cT"])] if lstm else [])]
        args += [keep("gates"), keep("tanhc_or_hn"), keep("prev_h"), *([keep("prev_c")] if lstm else []), ptr(work)]
        fn = getattr(native.lib, f"mc_{cell}_forward{'_fused' if fused else ''}")
        assert not fn(*args)
        return out if not ragged else {k: out[k] for k in ("y", "hT", "cT") if k in out}

    for ragged in (None, "ranked", "unranked"):
        ones = [run([r], ragged) for r in range(B)]
        for n in (2, 4, 5, 7, 8):                  # a last row left alone by 2-, 3-, 4-, 6- and 7-row tiles
            many = run(list(range(n)), ragged)
            for k, got in many.items():
                assert np.isfinite(got).all(), k
                for r in range(n):                 # the lone last row runs two groups at once, as B=1 does
                    a, b = ones[r][k], got
                    assert np.array_equal(a[..., 0, :] if a.ndim == 3 else a[0],
                                          b[..., r, :] if b.ndim == 3 else b[r]), (k, n, r)


@pytest.mark.parametrize("H", [16, 48, 144, 256])   # 1, 3, 9 and 16 vectors of 16 units: items of 1 to 8 vectors
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_row_read_as_stored_makes_the_packed_tile_s_sums(cell, H):
    """One LSTM or GRU row whose W_hh^T fits L2 and starts on a cache line can read it as stored
    (the row form, ``mc_row_form``), in runs of whole vectors per gate, where the packed pair tile
    reads two panels of 8 lanes. Each lane starts from the same value and sums over k in the same
    order, so every output is the pair tile's bit for bit: y and the final state, what training
    keeps for BPTT, with and without a bias, a row held past its length, and on a team. Off a cache
    line it streams the rows as before: close, not equal."""
    from model_core.cells.native_weights import NULL, aligned_copy, aligned_empty, pack, ptr
    T, G, lstm = 9, {"gru": 3, "lstm": 4}[cell], cell == "lstm"
    rng = np.random.default_rng(H)
    x = rng.standard_normal((T, 1, G * H), dtype=np.float32)
    wt = aligned_copy(rng.standard_normal((H, G * H), dtype=np.float32) * (2 / H) ** 0.5)
    off = np.empty(wt.size + 20, np.float32)
    off = off[(-ptr(off) % 64) // 4 + 4:][:wt.size].reshape(wt.shape)          # 16 bytes past a line
    off[...] = wt
    form = native.lib.mc_row_form
    assert form(1, H, G, ptr(wt)) and not form(1, H, G, ptr(off))
    assert not form(2, H, G, ptr(wt)) and not form(1, H, 1, ptr(wt))                        # the RNN: no
    assert not form(1, H + 8, G, ptr(wt)) and not form(1, 512, G, ptr(wt))              # 512: 3-4 MiB
    layouts = {"stored": (wt, (G * H, H, 8)), "packed": (pack(wt), (G * 8, 8, H * G * 8)),
               "off a line": (off, (G * H, H, 8))}                          # streamed by rows (axpy_product)
    b_hn = rng.standard_normal(H).astype(np.float32)
    h0, c0 = (rng.standard_normal((1, H), dtype=np.float32) for _ in range(2))

    def run(layout, bias, lens, train):
        w, strides = layouts[layout]
        out = {k: aligned_empty(s) for k, s in (("y", (T, 1, H)), ("hT", (1, H)), ("cT", (1, H)),
                                                ("gates", (T, 1, G * H)), ("hn_or_tanhc", (T, 1, H)),
                                                ("prev_h", (T, 1, H)), ("prev_c", (T, 1, H)))}
        kept_names = ("gates", "hn_or_tanhc", "prev_h", "prev_c")[:G]          # the GRU keeps no prev_c
        kept = [ptr(out[k]) if train else NULL for k in kept_names]
        work = aligned_empty(6 * H)                                     # named: alive through the call
        if lstm:
            native.lib.mc_lstm_forward(T, 1, H, 0, ptr(x), G * H, G * H, ptr(bias), ptr(lens), ptr(w), *strides,
                                       ptr(h0), ptr(c0), ptr(out["y"]), H, H, ptr(out["hT"]), ptr(out["cT"]), *kept,
                                       ptr(work))
        else:
            native.lib.mc_gru_forward(T, 1, H, 0, ptr(x), G * H, G * H, ptr(bias), ptr(lens), ptr(w), *strides,
                                      ptr(b_hn), ptr(h0), ptr(out["y"]), H, H, ptr(out["hT"]), *kept, ptr(work))
        made = ("y", "hT", "cT") if lstm else ("y", "hT")
        return {k: out[k] for k in made + (kept_names if train else ())}

    bias = rng.standard_normal(G * H).astype(np.float32)
    for b, lens, train in ((bias, None, True), (None, None, True), (bias, np.array([T - 3]), False),
                           (bias, np.array([0]), False)):
        want = run("packed", b, lens, train)
        for threads in (1, 2):
            native.set_threads(threads)
            try:
                got = run("stored", b, lens, train)
            finally:
                native.set_threads(1)
            for k in want:
                assert np.isfinite(got[k]).all() and np.array_equal(got[k], want[k]), (k, b is None, lens, threads)
        for k, got in run("off a line", b, lens, train).items():         # another sum order: close, not equal
            np.testing.assert_allclose(got, want[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_a_wide_single_step_splits_across_two_threads_and_matches_one(cls):
    """From B*H >= 16384 one step (T=1) runs on the team too: the same numbers as on one thread, up
    to the rounding of OpenBLAS's 2-thread input projection."""
    B, I, H = 64, 8, 256
    layer = cls(I, H, seed=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, I), dtype=np.float32)
    state = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))
    want = layer.step_states(x, state)
    try:
        model_core.set_num_threads(2)
        got = layer.step_states(x, state)
    finally:
        model_core.set_num_threads(1)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("G", [4, 3])
@pytest.mark.parametrize("B, H", [(1, 16), (13, 20), (32, 64), (25, 40)])      # 20, 40: a partial unit group
def test_the_probe_s_recurrent_product_matches_float64(G, B, H):
    """bench_core --probe times mc_product over the packed weights (the tile every step runs; 16
    lanes and no accumulator round trip in the AVX-512 build) and over W_hh^T as stored."""
    from model_core.cells.native_weights import pack, ptr
    rng = np.random.default_rng(B * H + G)
    h = rng.standard_normal((B, H), dtype=np.float32)
    wt = rng.standard_normal((H, G * H), dtype=np.float32)
    want = h.astype(np.float64) @ wt.astype(np.float64)
    packed = pack(wt)
    for w, strides in ((packed, (8 * G, 8, 8 * G * H)), (wt, (G * H, H, 8))):
        out = np.full((B, G * H), np.nan, np.float32)
        native.lib.mc_product(B, H, G, ptr(h), ptr(w), *strides, ptr(out))
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [1, 127, 128, 1000, 4096])             # 1000: 104 floats past the vectors
def test_the_read_loop_behind_a_step_s_floor_reads_every_float(n):
    """bench_core's step floor times mc_read_peak over a buffer the size of a step's weights: it has
    to read all of it, each pass, the tail past its vectors included."""
    a = (np.arange(n) % 7 + 1).astype(np.float32)                        # small integers: exact sums
    total = np.full(1, np.nan, np.float32)
    got = native.lib.mc_read_peak(a.ctypes.data, n, 3, total.ctypes.data)
    assert got == 3 * n * 4
    assert total[0] == 3 * float(a.sum())


@pytest.mark.parametrize("env, want", [({}, native.SPINCOUNT), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                       ({"OMP_WAIT_POLICY": "active"}, None)])
def test_the_team_spins_long_unless_the_user_says_otherwise(env, want):
    """After libgomp's default 300k spins a sleeping team woke slowly and unevenly on a KVM guest:
    the kernels set a longer spin before libgomp loads, unless the user chose one."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, model_core.native as n; print(os.environ.get('GOMP_SPINCOUNT'))"
    proc = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(want)


def test_the_one_row_projection_refuses_what_it_cannot_make():
    from model_core.cells.native_weights import pack, project_packed
    wi = pack(np.zeros((4, 16), np.float32), gates=2)
    with pytest.raises(ValueError, match="4 gates or the GRU's 3"):
        project_packed(np.zeros((3, 1, 4), np.float32), wi, None, 8, 2)
    with pytest.raises(ValueError, match="one-row sequences"):
        project_packed(np.zeros((3, 2, 4), np.float32), wi, None, 8, 4)


def test_portable_build_matches_the_reference():
    code = ("from model_core import native; "
            "assert native.REASON.endswith('baseline'), native.REASON; "
            "from tests.engine.test_native_kernels import _compare_with_reference as c, CLASSES; "
            "errs = [c(k, I, H, T, B) for k in CLASSES for (I, H, T, B) in ((5, 13, 7, 3), (6, 40, 9, 11), (4, 70, 5, 24))]; "
            "assert max(errs) < 2e-5, errs")
    run_python({"MODEL_CORE_NATIVE_ISA": "baseline"}, code)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("H", [24, 19, 32])                   # 19: a partial unit group; 32: the GRU's row form
def test_a_frozen_sequence_gives_the_same_bits_in_one_call_or_in_pieces(cls, B, H):
    """A session may send its steps one by one, in chunks or all at once: a frozen layer reads its
    kept packed copies and makes the input projection with the tile's sums on every path (in the
    step's tile, or at one row first, by mc_project), so the answer does not depend on the
    chunking (with few rows the sequence once read W_hh^T as stored and projected first by a
    GEMM, and a piece after a step's state drifted in the last bit)."""
    layer = cls(5, H, seed=3).freeze()
    x = np.random.default_rng(3).standard_normal((7, B, 5), dtype=np.float32)
    whole, whole_state = layer.forward_states(x, None)
    for cuts in ((1, 2, 3, 4, 5, 6), (2, 5), (3,), (1, 6)):
        state, ys = None, []
        for a, b in zip((0, *cuts), (*cuts, 7)):
            y, state = layer.forward_states(x[a:b], state)
            ys.append(y)
        assert np.array_equal(np.concatenate(ys), whole), cuts
        assert all(np.array_equal(s, w) for s, w in zip(state, whole_state)), cuts
    state = None
    for t in range(7):                                                       # step() too
        y, state = layer.step_states(x[t], state)
    assert np.array_equal(y, whole[-1]) and all(np.array_equal(s, w) for s, w in zip(state, whole_state))


WIDE_SHAPES = ((5, 40, 6, 1), (7, 72, 5, 13), (6, 136, 4, 25), (9, 64, 3, 32), (4, 13, 5, 12), (6, 64, 5, 1))


def _outputs(cls, I, H, T, B, seed=0) -> dict:
    """Every array the kernels make for one layer: the training forward and BPTT (y, final state,
    dx, gradients), a frozen layer's forward (the fused tile) and a frozen step from that state."""
    layer = cls(I, H, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y, s, cache = layer.forward_train(x)
    dx, _, grads = layer.backward(cache, rng.standard_normal(y.shape).astype(np.float32))
    states = s if isinstance(s, tuple) else (s,)
    frozen = cls(I, H, seed=seed).freeze()
    out = {"y": y, "dx": dx, "served": frozen.forward(x)[0], "step": frozen.step_states(x[-1], states)[0],
           "writable_step": layer.step_states(x[-1], states)[0]}
    out.update({f"s{i}": a for i, a in enumerate(states)})
    out.update({f"grad_{k}": v for k, v in grads.items()})
    return out


@pytest.mark.skipif(not native.REASON.endswith("avx512vl"), reason=f"no AVX-512 build here ({native.REASON})")
def test_the_512_bit_tiles_give_the_256_bit_build_s_bits(tmp_path):
    """The AVX-512 build's tiles hold two gates per 16-lane register (tile_wide), where the AVX2 build
    holds one per 8 lanes; each lane sums the same products in the same order, so every forward
    array is bit-identical (training, served, a step): batches whose last row is left alone (13,
    25), partial unit groups (H=13), B=1."""
    code = ("import numpy as np, sys; from model_core import native; "
            "assert native.REASON.endswith('avx2+fma'), native.REASON; "
            "from tests.engine.test_native_kernels import _outputs, CLASSES, WIDE_SHAPES; "
            "np.savez(sys.argv[1], **{f'{k.__name__}-{n}-{name}': a for k in CLASSES for n, sh in enumerate(WIDE_SHAPES) "
            "for name, a in _outputs(k, *sh).items()})")
    path = tmp_path / "avx2.npz"
    run_python({"MODEL_CORE_NATIVE_ISA": "avx2"}, code, str(path))
    want = np.load(path)
    checked = 0
    for cls in CLASSES:
        for n, shape in enumerate(WIDE_SHAPES):
            for name, got in _outputs(cls, *shape).items():
                ref = want[f"{cls.__name__}-{n}-{name}"]
                assert got.shape == ref.shape, (cls.__name__, shape, name)
                if name in ("dx",) or name.startswith("grad_"):
                    # BPTT's elementwise loops are vectorised by GCC per build (16 lanes and masked
                    # tails here): the last bit may differ, as it did before tile_wide
                    scale = max(1.0, float(np.abs(ref).max()))
                    assert np.abs(got - ref).max() <= 2e-6 * scale, (cls.__name__, shape, name)
                else:
                    assert np.array_equal(got, ref), (cls.__name__, shape, name)
                checked += 1
    assert checked == len(want.files)


def test_set_num_threads_reaches_openblas_and_the_kernels():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    try:
        summary = model_core.set_num_threads(2)
        assert "native=" in summary
        blas = [p for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
        assert blas and all(p["num_threads"] == 2 for p in blas), blas
        model_core.set_num_threads(1)
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas")
    finally:
        model_core.set_num_threads(1)
    with pytest.raises(ValueError, match="positive integer"):
        model_core.set_num_threads(0)


def test_openblas_runs_its_parallel_products_on_the_kernels_team_with_two_threads():
    """Two pools on two cores competed (each one's idle workers spin while the other computes): with
    more than one thread, OpenBLAS's jobs go to ``mc_blas_team``; with one, nothing is routed."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((600, 300), dtype=np.float32), rng.standard_normal((300, 500), dtype=np.float32)
    want = a.astype(np.float64) @ b
    try:
        summary = model_core.set_num_threads(2)
        if "on the native team" not in summary:
            pytest.skip(f"this OpenBLAS has no threads callback ({summary})")
        before = native.lib.mc_blas_team_calls()
        got = a @ b                                     # large enough for OpenBLAS to split it in two
        assert native.lib.mc_blas_team_calls() > before
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        assert _compare_with_reference(LSTM, I=6, H=100, T=6, B=24, seed=5) < 2e-5     # BLAS and kernels, one team
        model_core.set_num_threads(1)
        before = native.lib.mc_blas_team_calls()
        np.testing.assert_allclose(a @ b, want, rtol=1e-4, atol=1e-3)
        assert native.lib.mc_blas_team_calls() == before
    finally:
        model_core.set_num_threads(1)


# -- ONNX -------------------------------------------------------------------------------------------------
def _node_model(op, H=16, I=5, direction="bidirectional", **attrs):
    rng = np.random.default_rng(7)
    D, G = (2 if direction == "bidirectional" else 1), {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal(s)).astype(np.float32), n)
             for n, s in (("W", (D, G * H, I)), ("R", (D, G * H, H)), ("B", (D, 2 * G * H)))]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["X", "W", "R", "B", "sequence_lens"], outputs, hidden_size=H, direction=direction,
                            **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", 1, None),
                                            helper.make_tensor_value_info("sequence_lens", 6, None)],
                              [helper.make_tensor_value_info(o, 1, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


def _kernel_weights(session):
    """The prepared weights of the session's one recurrent node (None: the NumPy loops)."""
    from model_core.onnx.ops import recurrent

    found = []
    orig = recurrent.run_recurrent

    def spy(xp, cfg, wants, *args):
        found.append(args[-1])
        return orig(xp, cfg, wants, *args)

    recurrent.run_recurrent = spy
    try:
        x = np.random.default_rng(1).standard_normal((6, 3, 5)).astype(np.float32)
        out = session.run(None, {"X": x, "sequence_lens": np.array([6, 2, 4], np.int32)})
    finally:
        recurrent.run_recurrent = orig
    return found[0], out


@pytest.mark.parametrize("op,attrs,native_expected", [
    ("LSTM", {}, True),
    ("GRU", {"linear_before_reset": 1}, True),
    ("GRU", {}, False),                                        # r before R's product: the loop
    ("LSTM", {"clip": 2.0}, False),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"] * 2}, False),
    ("RNN", {}, True),
    ("RNN", {"activations": ["Relu", "Relu"]}, True),
    ("RNN", {"activations": ["Tanh", "Relu"]}, True),                # an activation per direction
    ("RNN", {"clip": 2.0}, False),
    ("RNN", {"activations": ["Sigmoid", "Sigmoid"]}, False),
    ("RNN", {"activations": ["LeakyRelu", "LeakyRelu"]}, False),
])
def test_onnx_nodes_take_the_kernels_when_their_attributes_allow(op, attrs, native_expected, monkeypatch):
    model = _node_model(op, **attrs)
    weights, got = _kernel_weights(InferenceSession(model))
    assert (weights.kernel is not None) is native_expected
    if native_expected:                                         # the same graph through the NumPy loops
        monkeypatch.setattr("model_core.onnx.ops.recurrent.native.AVAILABLE", False)
        _, want = _kernel_weights(InferenceSession(model))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
@pytest.mark.parametrize("cls", CLASSES)
def test_frozen_weights_keep_one_packed_copy_and_step_the_same(cls, monkeypatch):
    from model_core.cells import native_weights
    B, H = 32, 24                                      # B >= PACK_MIN_BATCH: a batched step packs W_hh
    rng = np.random.default_rng(3)
    layer = cls(7, H, num_layers=2)
    x = rng.standard_normal((B, 7), dtype=np.float32)
    h0 = layer.init_states(B)
    h0 = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in h0)
    want = layer.step_states(x, h0)
    packs = []
    real_pack = native_weights.pack
    monkeypatch.setattr(native_weights, "pack", lambda w, scratch=False, gates=None, panels=False:
                        packs.append(scratch) or real_pack(w, scratch, gates, panels))
    layer.freeze()
    for _ in range(3):
        got = layer.step_states(x, h0)
        assert np.array_equal(got[0], want[0]) and all(np.array_equal(a, b) for a, b in zip(got[1], want[1]))
        seq, _ = layer.forward_states(x[None].repeat(5, 0), h0)     # the sequence path uses the kept copy too
    # one kept copy per weight, made once, never per call: W_hh and W_ih of each layer (the inference
    # projection runs inside the kernel's tile)
    assert packs == [False] * 4
    with pytest.raises(ValueError, match="read-only"):
        layer.parameters()["weight_hh_l0"][...] += 1.0  # frozen really means frozen
    before = len(native_weights._frozen)
    del layer
    import gc
    gc.collect()
    assert len(native_weights._frozen) == before - len(packs)   # the copies go with the weights


@pytest.mark.parametrize("cls", CLASSES)
def test_one_row_of_frozen_weights_reads_the_kept_copy_and_a_step_is_a_length_one_forward(cls, monkeypatch):
    """At B=1 on one thread a sequence reads the kept packed copy of read-only weights (the one-row
    tile runs two unit groups at once), writable weights packed per call once B x T reaches
    PACK_MIN_ROWS and as stored below it. A step and a length-1 sequence make one and the same call, from the raw input: it
    reads the kept copies of W_ih and W_hh (the projection made in the tile) or both as stored, so
    ``step()`` is a length-1 ``forward`` bit for bit either way."""
    from model_core.cells import native_gru, native_lstm, native_rnn, native_weights
    layouts, steps = [], []
    real, real_panels = native_weights.recurrent_weights, native_weights.recurrent_panels
    real_step = native_weights.step_input_weights
    for mod in (native_lstm, native_gru, native_rnn):
        monkeypatch.setattr(mod, "recurrent_weights", lambda *a: layouts.append(real(*a).packed) or real(*a),
                            raising=False)
        monkeypatch.setattr(mod, "step_input_weights",
                            lambda *a, **k: steps.append(real_step(*a, **k)[2]) or real_step(*a, **k))
    monkeypatch.setattr(native_rnn, "recurrent_panels", lambda *a: layouts.append(bool(real_panels(*a)[1]))
                        or real_panels(*a))
    rng = np.random.default_rng(5)
    layer = cls(4, 12)
    x = rng.standard_normal((70, 1, 4), dtype=np.float32)                # B*T >= PACK_MIN_ROWS
    state = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(1))
    want = layer.forward(x)[0]
    short = layer.forward(x[:40])[0]                                     # B*T < PACK_MIN_ROWS: as stored
    np.testing.assert_allclose(short, want[:40], rtol=1e-5, atol=1e-6)
    want_step = layer.step_states(x[0], state)
    assert np.array_equal(layer.forward_states(x[:1], state)[0][0], want_step[0])
    layer.freeze()
    got = layer.forward(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)        # the bias added before, not after
    stepped = layer.step_states(x[0], state)
    assert np.array_equal(layer.forward_states(x[:1], state)[0][0], stepped[0])
    for a, b in zip(stepped[1], want_step[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert layouts == [True, False, True]              # the writable sequences, long and short; the frozen one
    assert steps == [0, 0, 1, 1]                       # step and length-1 forward: as stored, then kept copies


@pytest.mark.parametrize("cls", CLASSES)
def test_a_frozen_layer_keeps_its_step_weights_only_while_its_parameters_are_the_same_read_only_arrays(cls):
    """A frozen layer finds what its step kernel reads (the folded bias, the kept packed copies)
    once and keeps it; a parameter made writable again and changed, or replaced, is read afresh,
    and freezing again drops what was kept of the old values (the packed copies a sequence reads
    too), so a step always sees the weights as they are now."""
    rng = np.random.default_rng(11)
    layer = cls(6, 10, num_layers=2, seed=4).freeze()
    x = rng.standard_normal((2, 6), dtype=np.float32)
    state = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(2))

    def expected():
        ref = cls(6, 10, num_layers=2)
        ref.load_state_dict(layer.state_dict())
        _on_the_numpy_cell(ref)
        return ref.step_states(x, state)

    def check(got, want):
        for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)

    first = layer.step_states(x, state)
    check(first, expected())
    kept = dict(layer._kept_steps)
    assert sorted(kept) == [0, 1]                                  # one entry per layer, made once
    again = layer.step_states(x, state)
    assert all(layer._kept_steps[k] is kept[k] for k in kept)
    for a, b in zip((first[0], *first[1]), (again[0], *again[1])):
        np.testing.assert_array_equal(a, b)

    params = layer.parameters()
    for name in ("bias_hh_l0", "weight_ih_l1"):                    # writes turned back on: not frozen now
        if params[name].base is not None:
            params[name].base.flags.writeable = True
        params[name].flags.writeable = True
        params[name][...] += 0.25
    changed = layer.step_states(x, state)
    check(changed, expected())
    assert not np.allclose(changed[0], first[0])
    assert not layer._kept_steps                                   # writable now: nothing kept
    layer.freeze()                                                 # read-only again: kept afresh
    check(layer.step_states(x, state), expected())
    seq = rng.standard_normal((80, 1, 6), dtype=np.float32)        # B=1 reads the packed copies too
    ref = cls(6, 10, num_layers=2)
    ref.load_state_dict(layer.state_dict())
    np.testing.assert_allclose(layer.forward(seq)[0], ref.forward(seq)[0], rtol=1e-5, atol=2e-6)
    assert sorted(layer._kept_steps) == [0, 1] and layer._kept_steps[0] is not kept[0]
    layer._params["bias_ih_l1"] = layer._params["bias_ih_l1"] * 0.5      # replaced by a new (writable) array
    layer.freeze()
    check(layer.step_states(x, state), expected())


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("cls", CLASSES)
def test_a_length_one_sequence_in_both_directions_matches_the_reference(cls, frozen):
    """A length-1 forward runs the step's call once per layer and direction (the reverse direction
    too: one step either way), its h written into y and its state returned."""
    layer, ref = cls(5, 19, num_layers=2, bidirectional=True, seed=2), cls(5, 19, num_layers=2, bidirectional=True, seed=2)
    if frozen:
        layer.freeze()
    _on_the_numpy_cell(ref)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 5), dtype=np.float32)
    state = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(3))
    (y, got), (y_ref, want) = layer.forward_states(x, state), ref.forward_states(x, state)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-6)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(y[0, :, 19:], got[0][-1])            # the top layer's reverse h is y's second half


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("cls", CLASSES)
def test_an_empty_batch_steps_and_runs(cls, frozen):
    """B = 0: a step, a length-1 sequence (the same call) and a long one give empty results (a
    frozen layer's step reads packed copies, whose row chunk once was zero: SIGFPE)."""
    layer = cls(4, 8, seed=0)
    if frozen:
        layer.freeze()
    y, _ = layer.step_states(np.zeros((0, 4), np.float32), None)
    assert y.shape == (0, 8)
    for T in (1, 70):
        y, states = layer.forward_states(np.zeros((T, 0, 4), np.float32))
        assert y.shape == (T, 0, 8) and all(s.shape == (1, 0, 8) for s in states)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B, I, H", [(16, 7, 40), (25, 9, 61), (64, 64, 256), (37, 5, 61), (300, 3, 64)])
@pytest.mark.parametrize("cls", CLASSES)
def test_a_writable_step_gives_the_frozen_step_s_bits(cls, B, I, H, threads):
    """A writable layer's batched step packs W_ih and W_hh per call: with 512-bit tiles inside its
    first row block's tile as it reads them as stored (tile_wide_pack, gru_tile2_pack), for the
    blocks after it, elsewhere in a pass first (a GRU with an odd count of unit groups, H=40; an
    RNN whose last panel of 32 units is partial, H=40 and 61). Either way each lane sums what the
    kept packed copies of a frozen layer give it, in the same order: the same bits, for every row
    block (B past one tile's rows, a last block of one row), a partial last unit group (H=61), and
    a team of two."""
    rng = np.random.default_rng(B + H)
    layer = cls(I, H, seed=B)
    frozen = cls(I, H, seed=B).freeze()
    try:
        model_core.set_num_threads(threads)
        state = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))
        for _ in range(3):                                                  # the state carries over
            x = rng.standard_normal((B, I), dtype=np.float32)
            y, new = layer.step_states(x, state)
            y_frozen, new_frozen = frozen.step_states(x, state)
            assert np.array_equal(y, y_frozen)
            assert all(np.array_equal(a, b) for a, b in zip(new, new_frozen))
            state = new
    finally:
        model_core.set_num_threads(1)


def test_writable_weights_are_packed_per_call_so_in_place_updates_count():
    B, H = 32, 16
    layer = LSTM(5, H)
    x = np.ones((B, 5), np.float32)
    state = tuple(np.random.default_rng(1).standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))
    first, _ = layer.step_states(x, state)
    layer.parameters()["weight_hh_l0"][...] *= 0.5     # an optimiser's in-place update of W_hh alone
    second, _ = layer.step_states(x, state)
    fresh = LSTM(5, H)
    fresh.load_state_dict(layer.state_dict())
    assert not np.array_equal(first, second)
    assert np.array_equal(fresh.step_states(x, state)[0], second)


def test_served_checkpoints_are_frozen_and_training_models_are_not():
    from service.registry import ModelRegistry
    from service.settings import Settings
    registry = ModelRegistry(Settings().model_dir)
    registry.load_all()
    model = registry.get("charlm").model
    assert all(not p.flags.writeable for p in model.parameters().values())
    assert all(p.flags.writeable for p in model_core.SequenceModel(model.config).parameters().values())


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
@pytest.mark.parametrize("cls", CLASSES)
def test_inference_projected_in_chunks_matches_the_whole_projection(cls, monkeypatch):
    from model_core.nn import bptt
    T, B, I, H = 11, 3, 5, 8
    layer = cls(I, H, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    h0 = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))
    want_y, want_state, _ = layer.forward_train_states(x, h0)   # training: the whole projection at once
    calls, kernel_calls = [], []
    real, real_kernel = bptt.forward_direction_chunked, layer._cell.sequence_forward
    spy_cell = dataclasses.replace(layer._cell, sequence_forward=lambda *a: kernel_calls.append(len(a[0])) or real_kernel(*a))
    gates = layer._cell.GATES
    monkeypatch.setattr(bptt, "PROJECTION_CHUNK_BYTES", B * gates * H * 4 * 4)      # chunks of 4 steps: 4, 4, 3
    import model_core.nn.recurrent_base as rb
    monkeypatch.setattr(rb, "forward_direction_chunked", lambda cell, *a: calls.append(1) or real(spy_cell, *a))
    y, state = layer.forward_states(x, h0)
    assert len(calls) == 4 and kernel_calls == [4, 4, 3, 3, 4, 4] * 2    # 2 layers x 2 directions, 3 chunks each
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
    for a, b in zip(state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("B", [1, 2, 5, 32])
def test_projection_inside_the_kernel_matches_the_projection_first(cls, B, monkeypatch):
    """The fused kernels (``sequence_forward_fused``: inference, and training's forward with the
    cache BPTT reads) against the same layer projecting first: outputs, states and gradients."""
    T, I, H = 33, 13, 19          # B x T >= PACK_MIN_ROWS from B=2; H not a multiple of 8: the partial unit group
    rng = np.random.default_rng(B)
    layer = cls(I, H, num_layers=2, bidirectional=True)
    for name, p in layer.parameters().items():             # nonzero biases everywhere, b_hn included
        if name.startswith("bias"):
            p[...] = rng.standard_normal(p.shape, dtype=np.float32)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, 2 * H), dtype=np.float32)
    h0 = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))

    def run():
        y, state = layer.forward_states(x, h0)
        y_train, state_train, cache = layer.forward_train_states(x, h0)
        dx, _, grads = layer.backward_states(cache, dy, None)
        return (y, *state, y_train, *state_train, dx, *grads.values())

    real = layer._cell
    fused = []

    def spy(*a):                                                # did the kernel take it, or refuse?
        result = real.sequence_forward_fused(*a)
        fused.append(result is not None)
        return result

    monkeypatch.setattr(layer, "_cell", dataclasses.replace(real, sequence_forward_fused=None))
    want = run()                                                # every projection made first, by BLAS
    monkeypatch.setattr(layer, "_cell", dataclasses.replace(real, sequence_forward_fused=spy))
    got = run()
    # (inference + training) x 2 layers x 2 directions; at one row the LSTM and GRU project first
    # in the kernel module (native_weights.projected), the RNN through the caller's GEMM
    assert fused == [B >= 2 or cls in (LSTM, GRU)] * 8
    for a, b in zip(got, want, strict=True):       # gradients sum 2 x 33 x B float32 terms: scale-relative
        assert np.abs(a - b).max() <= 5e-5 * max(1.0, float(np.abs(b).max())), np.abs(a - b).max()


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lengths", [[7, 7, 7, 7], [7, 2, 5, 0]])                # full, and ragged with an empty row
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_onnx_projection_inside_the_kernel_matches_the_projection_first(op, direction, lengths, monkeypatch):
    from model_core.onnx.ops import recurrent, recurrent_loops
    session = InferenceSession(_node_model(op, H=19, I=5, direction=direction,
                                           **({"linear_before_reset": 1} if op == "GRU" else {})))
    x = np.random.default_rng(2).standard_normal((7, 4, 5)).astype(np.float32)
    full = np.array(lengths, np.int32)
    calls = []                                             # per kernel call: did it make the projection itself?
    real = recurrent_loops.native_loop
    monkeypatch.setattr(recurrent, "native_loop", lambda *a: calls.append(a[10] is not None) or real(*a))
    fused = session.run(None, {"X": x, "sequence_lens": full})
    dirs = 2 if direction == "bidirectional" else 1
    assert calls == [True] * dirs
    monkeypatch.setattr(recurrent, "FUSED_MIN_BATCH", 10**9)         # the projection first, as before
    plain = session.run(None, {"X": x, "sequence_lens": full})
    assert calls == [True] * dirs + [False] * dirs
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lengths", [[7], [4]])                                    # full, and shorter
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("H", [19, 32])                                  # 32: a GRU row in the row form
def test_onnx_one_row_projection_by_the_kernels_matches_the_gemm(op, direction, lengths, H, monkeypatch):
    from model_core.onnx.ops import recurrent
    session = InferenceSession(_node_model(op, H=H, I=5, direction=direction,
                                           **({"linear_before_reset": 1} if op == "GRU" else {})))
    x = np.random.default_rng(3).standard_normal((7, 1, 5)).astype(np.float32)
    feeds = {"X": x, "sequence_lens": np.array(lengths, np.int32)}
    calls, layouts = [], []
    real, real_loop = recurrent.project_packed, recurrent.native_loop
    monkeypatch.setattr(recurrent, "project_packed", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(recurrent, "native_loop", lambda *a: layouts.append(a[2].packed) or real_loop(*a))
    projected = session.run(None, feeds)
    assert calls == [H] * (2 if direction == "bidirectional" else 1)
    assert layouts == [not (op == "GRU" and H == 32)] * len(calls)      # R^T as stored in the row form
    monkeypatch.setattr(recurrent, "ONE_ROW_PROJECTED", ())                        # the GEMM first, as before
    plain = session.run(None, feeds)
    assert len(calls) == (2 if direction == "bidirectional" else 1)
    for a, b in zip(projected, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not native.AVAILABLE, reason="native kernels not built")
def test_a_stale_library_from_an_older_install_is_replaced_by_a_build_of_these_sources(monkeypatch, tmp_path):
    # a checkout updated without reinstalling keeps the old in-place library, which lacks the new
    # entry points: the loader must compile these sources rather than lose the native path
    import ctypes.util
    stale = ctypes.util.find_library("m")                       # a real shared library without our symbols
    monkeypatch.setattr(native, "_installed", lambda: stale)
    lib, reason = native._load()
    assert lib is not None and hasattr(lib, "mc_lstm_forward_fused")
    assert "does not match these sources" in reason and "compiled by" in reason


# argument positions of what the fused forwards stream by vectors: W_ih^T and W_hh^T packed, Y, work
_STREAMED = {"mc_lstm_forward_fused": {"w_ih": 8, "w_hh": 11, "y": 17, "work": 26},
             "mc_gru_forward_fused": {"w_ih": 8, "w_hh": 11, "y": 17, "work": 24},
             "mc_rnn_forward": {"w_ih": 9, "w_hh": 12, "y": 15}}


class _PointerSpy:
    """``native.lib`` recording the streamed pointers of each fused forward call."""

    def __init__(self, lib, seen: list):
        self._lib, self._seen = lib, seen

    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if name not in _STREAMED:
            return fn

        def call(*args):
            self._seen.append({k: args[i] for k, i in _STREAMED[name].items()})
            return fn(*args)
        return call


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("B, H", [(2, 8), (32, 256)])       # small heap blocks, and large (mmap'd: 16 past a line)
def test_what_the_kernels_stream_starts_on_a_cache_line(cls, B, H, monkeypatch):
    """A 32-byte load 16 bytes past a cache line spans two: NumPy's large arrays start there, and an
    LSTM forward took 1.2x the time with its packed weights or work buffer so placed (a B=4 step, with
    W_hh^T so placed). The layers' weights, nn (inference and the training forward) and the ONNX nodes
    must hand the kernels line-aligned buffers."""
    from model_core.cells import native_gru, native_lstm, native_rnn
    from model_core.cells.native_weights import ALIGN, aligned_empty
    from model_core.onnx.ops import recurrent_loops
    for n in (1, 7, 1000, 40_000, 300_000, 3_000_000):
        a = aligned_empty((n,))
        assert a.shape == (n,) and a.dtype == np.float32 and a.ctypes.data % ALIGN == 0
    seen = []
    for mod in (native_lstm, native_gru, native_rnn, recurrent_loops):
        monkeypatch.setattr(mod, "lib", _PointerSpy(native.lib, seen))
    x = np.random.default_rng(0).standard_normal((40, B, 16), dtype=np.float32)     # B x T >= PACK_MIN_ROWS
    layer = cls(16, H, bidirectional=True)
    for name, w in layer.parameters().items():        # W^T as stored: what small batches' steps stream
        if name.startswith("weight_"):
            assert w.T.flags.c_contiguous and w.ctypes.data % ALIGN == 0, name
    layer.forward(x)
    layer.forward_train(x)
    op = layer._kind.upper()
    session = InferenceSession(_node_model(op, H=H, I=16, direction="bidirectional",
                                           **({"linear_before_reset": 1} if op == "GRU" else {})))
    session.run(None, {"X": x, "sequence_lens": np.full(B, 40, np.int32)})
    assert len(seen) == 6                                     # (inference, training, ONNX) x 2 directions
    for call in seen:                     # 32-byte vectors never span two lines (the reverse direction's Y
        assert all(p % 32 == 0 for p in call.values()), call      # is a view H floats into the line)


class _ForwardCalls:
    """native.lib for recurrent_loops, recording each forward call's (T, B)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        fn = getattr(native.lib, name)
        return (lambda *a: self.calls.append((a[0], a[1])) or fn(*a)) if "forward" in name else fn


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_a_ragged_onnx_batch_computes_only_the_rows_still_running(op, direction, monkeypatch):
    """Rows ranked by length, longest first, in one kernel call per direction, whose steps run only
    the rows still running: with lengths 7, 2, 5, 0, 5 the kernel's tiles run 19 row-steps per
    direction where the batch has 35, and it agrees with the NumPy loops."""
    from model_core.onnx.ops import recurrent_loops
    model = _node_model(op, H=19, I=5, direction=direction, **({"linear_before_reset": 1} if op == "GRU" else {}))
    x = np.random.default_rng(5).standard_normal((7, 5, 5)).astype(np.float32)
    feed = {"X": x, "sequence_lens": np.array([7, 2, 5, 0, 5], np.int32)}
    spy, dirs = _ForwardCalls(), 2 if direction == "bidirectional" else 1
    monkeypatch.setattr(recurrent_loops, "lib", spy)
    before = native.lib.mc_row_steps_run()
    got = InferenceSession(model).run(None, feed)
    assert spy.calls == [(7, 5)] * dirs
    assert native.lib.mc_row_steps_run() - before == 19 * dirs
    monkeypatch.setattr("model_core.onnx.ops.recurrent.native.AVAILABLE", False)     # the NumPy loops
    want = InferenceSession(model).run(None, feed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_a_ragged_onnx_batch_on_a_team_runs_only_the_rows_still_running(op, monkeypatch):
    """On a team of two a ragged batch is one call split across the team, its steps over the rows
    still running (140 row-steps of 180 here): the same bits as one thread."""
    from model_core.onnx.ops import recurrent_loops
    _skip_without_a_team()
    model = _node_model(op, H=128, I=5, direction="forward", **({"linear_before_reset": 1} if op == "GRU" else {}))
    x = np.random.default_rng(6).standard_normal((9, 20, 5)).astype(np.float32)    # 20 x 128 rows split
    lengths = np.array([9] * 8 + [7] * 4 + [5] * 8, np.int32)
    np.random.default_rng(6).shuffle(lengths)
    feed = {"X": x, "sequence_lens": lengths}
    session, spy = InferenceSession(model), _ForwardCalls()
    monkeypatch.setattr(recurrent_loops, "lib", spy)
    steps, teams = native.lib.mc_row_steps_run(), native.lib.mc_team_forwards()
    try:
        model_core.set_num_threads(2)
        got = session.run(None, feed)
    finally:
        model_core.set_num_threads(1)
    assert native.lib.mc_team_forwards() - teams == 1
    assert native.lib.mc_row_steps_run() - steps == 8 * 9 + 4 * 7 + 8 * 5
    one = session.run(None, feed)
    assert spy.calls == [(9, 20)] * 2                         # the team's one call, then one thread's
    for g, o in zip(got, one, strict=True):
        assert np.array_equal(g, o)
