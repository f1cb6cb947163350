"""Opt-in bfloat16 weights (``freeze(weights="bfloat16")``, ``model_core/native/bf16_body.h``).

The kernel's promise: float32 arithmetic on weights rounded once to bfloat16. So its outputs are
checked against the NumPy reference cells run on the same rounded weights (to float32's rounding),
on every path a frozen layer serves: forward (layers, directions, ragged batches, initial states,
batch_first), step() through the compiled entry and through Python, in any batch, on one thread or
two, and in the AVX2 build. Against float32 weights the outputs move by what the rounding moves.
"""
from __future__ import annotations

import numpy as np
import pytest

import model_core
from model_core import native
from model_core.cells.native_bf16 import round_weights
from model_core.nn import GRU, LSTM, RNN
from tests.engine.test_native_kernels import _on_the_numpy_cell
from tests.helpers import run_python

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=f"native kernels unavailable: {native.REASON}")

CELLS = [LSTM, GRU]


def _pair(cls, I, H, **kw):
    """(a layer frozen with bfloat16 weights, the NumPy reference cell on the same weights rounded)."""
    layer = cls(I, H, seed=7, **kw)
    ref = cls(I, H, seed=7, **kw)
    ref.load_state_dict(round_weights(layer.state_dict()))
    _on_the_numpy_cell(ref)
    return layer.freeze(weights="bfloat16"), ref


def _close(a, b, tol=2e-6):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol, float(np.abs(a - b).max())


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("I, H, T, B, layers, bidirectional", [
    (64, 256, 5, 1, 1, False),       # the served step's shape
    (5, 33, 7, 3, 2, False),         # odd I and H: padded rows and a partial block
    (1, 7, 4, 5, 1, True),           # one input, fewer units than a vector
    (16, 48, 6, 4, 2, True),         # whole blocks, a bidirectional stack
    (3, 17, 1, 2, 1, False),         # one step, one unit past a block
])
def test_the_forward_is_float32_arithmetic_on_rounded_weights(cls, I, H, T, B, layers, bidirectional):
    layer, ref = _pair(cls, I, H, num_layers=layers, bidirectional=bidirectional)
    assert layer.weight_format == "bfloat16" and ref.weight_format == "float32"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    D = 2 if bidirectional else 1
    state = tuple(rng.standard_normal((layers * D, B, H)).astype(np.float32) * 0.5 for _ in range(layer.state_size))
    for lengths in (None, rng.integers(0, T + 1, B)):
        got_y, got_s = layer.forward_states(x, state, lengths)
        want_y, want_s = ref.forward_states(x, state, lengths)
        _close(got_y, want_y)
        for g, w in zip(got_s, want_s):
            _close(g, w)


@pytest.mark.parametrize("cls", CELLS)
def test_batch_first_and_torch_s_state_form(cls):
    layer, ref = _pair(cls, 4, 20, batch_first=True)
    x = np.random.default_rng(2).standard_normal((3, 6, 4)).astype(np.float32)
    (gy, gs), (wy, ws) = layer.forward(x), ref.forward(x)
    _close(gy, wy)
    for g, w in zip(gs if isinstance(gs, tuple) else (gs,), ws if isinstance(ws, tuple) else (ws,)):
        _close(g, w)


@pytest.mark.parametrize("cls", CELLS)
def test_a_step_gives_the_forward_s_bits_in_any_batch(cls):
    """step() (the compiled entry), a length-1 forward and the same row in a bigger batch: one set
    of bits, since every tile sums a row's even and odd weight rows apart in the same order."""
    layer, ref = _pair(cls, 64, 256, num_layers=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 64)).astype(np.float32)
    entry_steps = native.step_entry.steps() if native.step_entry is not None else None
    state = None
    for t in range(6):
        y, state = layer.step_states(x[t, :1], state)
    if entry_steps is not None:
        assert native.step_entry.steps() > entry_steps            # the compiled entry ran them
    whole, whole_state = layer.forward_states(x[:, :1])
    assert np.array_equal(y, whole[-1])
    assert all(np.array_equal(s, w) for s, w in zip(state, whole_state))
    batch, batch_state = layer.forward_states(x)                   # row 0 among five: 2-row tiles
    assert np.array_equal(batch[:, :1], whole)
    assert all(np.array_equal(s[:, :1], w) for s, w in zip(batch_state, whole_state))
    _close(whole, ref.forward_states(x[:, :1])[0])


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("I, H, T, B, lengths", [
    (64, 256, 5, 3, None),                                   # one row chunk
    (6, 264, 4, 37, "ranked"),                               # three chunks, the last partial; 17 blocks
    (5, 40, 3, 50, "unranked"),                              # 3 blocks, 4 chunks; rows ending anywhere
])
def test_two_threads_give_one_thread_s_bits(cls, I, H, T, B, lengths):
    """The team's items (row chunks x a thread's blocks, taken by whichever thread is free) sum each
    row as one thread does: the same bits, in a forward over several chunks, ragged or not, and in a
    one-row step."""
    layer, _ = _pair(cls, I, H)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lens = None if lengths is None else rng.integers(0, T + 1, B)
    if lengths == "ranked":
        lens = np.sort(lens)[::-1].copy()
    one = layer.forward_states(x, lengths=lens)
    one_step = layer.step_states(x[0, :1], None)
    teams = native.lib.mc_team_forwards()
    try:
        model_core.set_num_threads(2)
        two = layer.forward_states(x, lengths=lens)
        two_step = layer.step_states(x[0, :1], None)
        team = native.threads() > 1
    finally:
        model_core.set_num_threads(1)
    assert native.lib.mc_team_forwards() > teams or not team          # every forward here is past TEAM_MIN_MACS
    for a, b in ((one[0], two[0]), (one_step[0], two_step[0]), *zip(one[1], two[1])):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cls", CELLS)
def test_against_float32_weights_outputs_move_by_the_rounding(cls):
    """What a user trades: at H=256 over 20 steps, h moves by ~1e-3 (bfloat16 keeps 8 bits of each
    weight); far less than the outputs' own scale, far more than float32's rounding."""
    layer = cls(64, 256, seed=5)
    exact = cls(64, 256, seed=5).freeze()
    layer.freeze(weights="bfloat16")
    x = np.random.default_rng(5).standard_normal((20, 2, 64)).astype(np.float32)
    diff = np.abs(layer.forward(x)[0] - exact.forward(x)[0]).max()
    assert 1e-5 < diff < 2e-2, diff


def test_freeze_checks_the_format_and_the_layer():
    with pytest.raises(ValueError, match="weights must be one of float32, bfloat16, got 'float16'"):
        LSTM(4, 8).freeze(weights="float16")
    with pytest.raises(ValueError, match="serve LSTM and GRU layers, this is an RNN"):
        RNN(4, 8).freeze(weights="bfloat16")
    with pytest.raises(ValueError, match="compiled kernels on the CPU, float32"):
        GRU(4, 8, dtype="float64").freeze(weights="bfloat16")
    layer = LSTM(4, 8)
    assert layer.weight_format == "float32" and layer.freeze().weight_format == "float32"


def test_the_float32_parameters_stay_and_serve_again_when_refrozen():
    layer = LSTM(6, 24, seed=1)
    before = layer.state_dict()
    layer.freeze(weights="bfloat16")
    after = layer.state_dict()
    assert all(after[k].dtype == np.float32 and np.array_equal(after[k], before[k]) for k in before)
    x = np.random.default_rng(6).standard_normal((4, 2, 6)).astype(np.float32)
    exact = LSTM(6, 24, seed=1).freeze().forward(x)[0]
    assert not np.array_equal(layer.forward(x)[0], exact)
    layer.freeze()                                                  # float32 again
    assert layer.weight_format == "float32" and np.array_equal(layer.forward(x)[0], exact)


def test_weights_made_writable_since_are_not_served_from_the_stale_copy():
    layer = GRU(6, 24, seed=1).freeze(weights="bfloat16")
    x = np.random.default_rng(7).standard_normal((4, 2, 6)).astype(np.float32)
    layer.step_states(x[0], None)                                   # a step plan, made from the kept copy
    for p in layer.parameters().values():
        if isinstance(p.base, np.ndarray):
            p.base.flags.writeable = True                               # the memory it views first
        p.flags.writeable = True
    layer.parameters()["weight_hh_l0"][...] *= 0.5
    assert layer.weight_format == "float32"
    fresh = GRU(6, 24, seed=1)
    fresh.load_state_dict(layer.state_dict())
    assert np.array_equal(layer.forward(x)[0], fresh.forward(x)[0])
    assert np.array_equal(layer.step_states(x[0], None)[0], fresh.step_states(x[0], None)[0])


def test_no_bias_and_an_empty_sequence():
    layer, ref = _pair(LSTM, 5, 18, bias=False)
    x = np.random.default_rng(8).standard_normal((3, 2, 5)).astype(np.float32)
    _close(layer.forward(x)[0], ref.forward(x)[0])
    state = tuple(np.full((1, 2, 18), 0.25, np.float32) for _ in range(2))
    y, final = layer.forward_states(np.zeros((0, 2, 5), np.float32), state)
    assert y.shape == (0, 2, 18) and all(np.array_equal(f, s) for f, s in zip(final, state))


def test_a_model_freezes_its_recurrent_layers_to_bfloat16():
    from model_core.config import ModelConfig
    from model_core.model import SequenceModel
    config = ModelConfig(task="classify", cell="lstm", input_encoding="embedding", input_size=20,
                         embedding_dim=8, hidden_size=32, output_size=3)
    model = SequenceModel(config, seed=0).freeze(weights="bfloat16")
    assert model.weight_format == "bfloat16"
    logits, _ = model.forward(np.array([[1, 2], [3, 4], [5, 6]]))
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


@pytest.mark.skipif(not native.REASON.endswith("avx512vl"), reason=f"no AVX-512 build here ({native.REASON})")
def test_the_avx2_build_gives_the_avx512_build_s_bits(tmp_path):
    """8 lanes a vector there, 16 here: each lane sums the same products in the same order."""
    code = ("import numpy as np, sys; from model_core import native; "
            "assert native.REASON.endswith('avx2+fma'), native.REASON; "
            "from tests.engine.test_bf16_weights import _outputs; np.savez(sys.argv[1], **_outputs())")
    path = tmp_path / "avx2.npz"
    run_python({"MODEL_CORE_NATIVE_ISA": "avx2"}, code, str(path))
    want = np.load(path)
    got = _outputs()
    assert sorted(got) == sorted(want.files)
    for name, a in got.items():
        assert np.array_equal(a, want[name]), name


def test_the_portable_build_matches_the_reference():
    code = ("from model_core import native; assert native.REASON.endswith('baseline'), native.REASON; "
            "from tests.engine.test_bf16_weights import test_the_forward_is_float32_arithmetic_on_rounded_weights as t; "
            "from model_core.nn import LSTM, GRU; "
            "[t(c, 5, 33, 7, 3, 2, False) or t(c, 16, 48, 6, 4, 2, True) for c in (LSTM, GRU)]")
    run_python({"MODEL_CORE_NATIVE_ISA": "baseline"}, code)


def _outputs() -> dict:
    out = {}
    rng = np.random.default_rng(9)
    for cls in CELLS:
        for I, H, B, lens in ((64, 256, 1, None), (5, 33, 3, None), (7, 40, 2, None), (6, 24, 5, [4, 1, 3, 0, 2])):
            layer = cls(I, H, seed=2).freeze(weights="bfloat16")
            x = rng.standard_normal((4, B, I)).astype(np.float32)
            y, s = layer.forward_states(x, lengths=lens)     # ragged: a tile's rows end apart
            out[f"{cls.__name__}-{H}-{B}-y"] = y
            out[f"{cls.__name__}-{H}-{B}-step"] = layer.step_states(x[0], s)[0]
    return out
