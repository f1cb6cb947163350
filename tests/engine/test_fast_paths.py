"""Every fast path against the reference path it replaces.

* both compiled float32 paths, the native kernels (``model_core.native``: LSTM, GRU) and the Numba
  cells (every cell), against the NumPy reference cells: forward, BPTT, step, ragged batches,
  NaN, threads; each test runs once per path (``PATHS``) and skips where a path is unavailable;
* the rational tanh they use against float64 ``tanh``, including NaN and ±inf;
* the weight layout (Fortran-ordered storage, C-ordered ``state_dict``, gradients in the weights'
  layout) and the tiled copy that backward uses;
* the lean ``step()`` against ``forward`` on a length-1 sequence;
* the choice itself: float32 on the CPU picks the compiled cells, float64 the reference, and
  ``MODEL_CORE_NATIVE=0`` / ``MODEL_CORE_JIT=0`` turn them off.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model_core import jit, native
from model_core.cells import select, uses_jit, uses_native
from model_core.cells.matmul import SMALL_MNK, recurrent_product
from model_core.nn import GRU, LSTM, RNN
from model_core.nn.bptt import c_layout
from model_core.optim.sgd import SGD
from tests.helpers import run_python

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
needs_jit = pytest.mark.skipif(not jit.AVAILABLE, reason=f"compiled path unavailable: {jit.REASON}")
PATHS = ("native", "numba")
# float32 results of two orderings of the same arithmetic, and a tanh within 3e-7 of the true one
RTOL, ATOL = 2e-5, 2e-6


def make(cell, I=5, H=8, **kw):
    kw.setdefault("seed", 0)
    if cell.startswith("rnn_"):
        return RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": LSTM, "gru": GRU}[cell](I, H, **kw)


def on_path(layer, path):
    """The same layer (shared weights) on one compiled path; skips where that path cannot run it."""
    if path == "native" and not uses_native(layer._kind, layer.xp, layer.dtype):
        pytest.skip(f"no native kernel for {layer._kind}: {native.REASON}")
    if path == "numba" and not jit.AVAILABLE:
        pytest.skip(f"Numba path unavailable: {jit.REASON}")
    twin = object.__new__(type(layer))
    twin.__dict__.update(layer.__dict__)
    twin._cell = select(layer._kind, layer.xp, layer.dtype, getattr(layer, "nonlinearity", "tanh"),
                        allow_native=path == "native")
    twin._consts = twin._cell.gate_constants(layer.xp, layer.hidden_size, layer.dtype)
    assert twin._cell.fused and twin._cell.native is (path == "native")
    return twin


def reference_twin(layer):
    """The same layer (shared weights) running the NumPy reference cell."""
    twin = object.__new__(type(layer))
    twin.__dict__.update(layer.__dict__)
    twin._cell = select(layer._kind, layer.xp, layer.dtype, getattr(layer, "nonlinearity", "tanh"), reference=True)
    twin._consts = twin._cell.gate_constants(layer.xp, layer.hidden_size, layer.dtype)
    return twin


def _parts(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def _inputs(layer, T=7, B=3, seed=0):
    rng = np.random.default_rng(seed)
    S, D, H = layer.num_layers * layer.num_directions, layer.num_directions, layer.hidden_size
    tb = (B, T) if layer.batch_first else (T, B)
    x = (2 * rng.standard_normal((*tb, layer.input_size))).astype(np.float32)
    dy = rng.standard_normal((*tb, D * H)).astype(np.float32)
    parts = [(0.5 * rng.standard_normal((S, B, H))).astype(np.float32) for _ in range(layer.state_size)]
    dparts = [rng.standard_normal((S, B, H)).astype(np.float32) for _ in range(layer.state_size)]
    pack = (lambda p: tuple(p)) if layer.state_size == 2 else (lambda p: p[0])
    return x, pack(parts), dy, pack(dparts)


def _everything(layer, x, state0, dy, dstate, lengths=None):
    y_inf, s_inf = layer.forward(x, state0, lengths=lengths)
    y, s, cache = layer.forward_train(x, state0, lengths=lengths)
    dx, d0, grads = layer.backward(cache, dy, dstate)
    out = {"y_inf": y_inf, "y": y, "dx": dx, **{f"grad.{k}": g for k, g in grads.items()}}
    out.update({f"state{k}": v for k, v in enumerate(_parts(s))})
    out.update({f"state_inf{k}": v for k, v in enumerate(_parts(s_inf))})
    out.update({f"dstate0_{k}": v for k, v in enumerate(_parts(d0))})
    return out


# -- the choice -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_selection_follows_dtype(cell):
    layer = make(cell)                                                         # float32, CPU
    assert layer._cell.native is uses_native(layer._kind, np, "float32")
    assert layer._cell.fused is (jit.AVAILABLE or layer._cell.native)
    assert make(cell, dtype="float64")._cell.fused is False
    assert uses_jit(np, "float64") is False and uses_native(layer._kind, np, "float64") is False


def test_env_vars_disable_the_compiled_paths():
    run_python({"MODEL_CORE_JIT": "0", "MODEL_CORE_NATIVE": "0"}, (
        "import numpy as np; from model_core import jit, native; from model_core.nn import LSTM; "
        "assert not jit.AVAILABLE and 'MODEL_CORE_JIT' in jit.REASON, jit.REASON; "
        "assert not native.AVAILABLE and 'MODEL_CORE_NATIVE' in native.REASON, native.REASON; "
        "l = LSTM(3, 4, seed=0); assert not l._cell.fused; "
        "y, _ = l.forward(np.ones((2, 1, 3), np.float32)); assert y.shape == (2, 1, 4)"), timeout=120)


@pytest.mark.skipif(not native.AVAILABLE, reason=f"native kernels unavailable: {native.REASON}")
def test_native_off_falls_back_to_numba_and_isa_cap_is_honoured():
    run_python({"MODEL_CORE_NATIVE": "0"}, (
        "from model_core import jit; from model_core.nn import GRU; "
        "l = GRU(3, 4, seed=0); assert not l._cell.native and l._cell.fused is jit.AVAILABLE"), timeout=120)
    run_python({"MODEL_CORE_NATIVE_ISA": "baseline"}, (
        "from model_core import native; assert native.REASON.endswith('baseline'), native.REASON"), timeout=120)


# -- the compiled cells against the reference ------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", [
    dict(),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False),
], ids=["plain", "deep-bidir-batch-first", "no-bias"])
def test_fused_matches_reference(cell, config, path):
    layer = on_path(make(cell, **config), path)
    ref = reference_twin(layer)
    assert not ref._cell.fused
    args = _inputs(layer)
    got, want = _everything(layer, *args), _everything(ref, *args)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_matches_reference_ragged(cell, path):
    layer = on_path(make(cell, num_layers=2, bidirectional=True), path)
    ref = reference_twin(layer)
    args = _inputs(layer, T=6, B=4)
    lengths = np.array([6, 1, 0, 4])
    got, want = _everything(layer, *args, lengths), _everything(ref, *args, lengths)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(5, 9), (9, 13)], ids=["rows-unpacked", "rows-packed"])
def test_fused_matches_reference_at_benchmark_size(cell, path, T, B):
    """A size where the rows are long enough for the vectorised loop bodies and their tails
    (H=70: eight full unit groups and one of six), read unpacked (B*T < 64) and packed."""
    layer = on_path(make(cell, I=16, H=70, seed=4), path)
    ref = reference_twin(layer)
    args = _inputs(layer, T=T, B=B, seed=4)
    got, want = _everything(layer, *args), _everything(ref, *args)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_step_matches_reference_step(cell, path):
    layer = on_path(make(cell, num_layers=2), path)
    ref = reference_twin(layer)
    x, state0, _, _ = _inputs(layer, T=4)
    s_fast, s_ref = state0, state0
    for t in range(4):
        y_fast, s_fast = layer.step(x[t], s_fast)
        y_ref, s_ref = ref.step(x[t], s_ref)
        np.testing.assert_allclose(y_fast, y_ref, rtol=RTOL, atol=ATOL)
    for a, b in zip(_parts(s_fast), _parts(s_ref)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", ("lstm", "gru", "rnn_tanh"))
def test_fused_propagates_nan_like_numpy(cell, path):
    layer = on_path(make(cell), path)
    x, state0, _, _ = _inputs(layer, T=3, B=2)
    x[0, 1, 0] = np.nan
    y, _ = layer.forward(x, state0)
    y_ref, _ = reference_twin(layer).forward(x, state0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, 0]).any()


@pytest.mark.parametrize("path", PATHS)
def test_fused_thread_safety(path):
    """8 threads share one float32 layer running the compiled cells (they release the GIL)."""
    layer = on_path(LSTM(6, 16, num_layers=2, seed=3), path)
    jobs = [_inputs(layer, T=20, B=4, seed=100 + k) for k in range(8)]
    solo = [_everything(layer, *job) for job in jobs]
    start = threading.Barrier(8)

    def threaded(k):
        start.wait()
        return [_everything(layer, *jobs[k]) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(threaded, range(8)))
    for k, runs in enumerate(results):
        for run in runs:
            for name, want in solo[k].items():
                np.testing.assert_array_equal(run[name], want, err_msg=f"thread {k}: {name}")


# -- the activation ----------------------------------------------------------------------------------
@needs_jit
def test_rational_tanh_accuracy():
    from model_core.jit.numba_activations import tanh_into

    x = np.concatenate([np.linspace(-20, 20, 400_001), np.logspace(-30, 1.5, 2000),
                        -np.logspace(-30, 1.5, 2000)]).astype(np.float32)
    out = np.empty_like(x)
    tanh_into(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(out - exact)) < 4e-7
    small = np.abs(x) < 1e-3                                          # relative accuracy near zero
    assert np.max(np.abs(out[small] - exact[small]) / np.maximum(np.abs(exact[small]), 1e-38)) < 4e-7
    assert np.abs(out).max() <= 1.0


@needs_jit
def test_rational_tanh_special_values():
    from model_core.jit.numba_activations import tanh_into

    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    out = np.empty_like(x)
    tanh_into(x, out)
    assert np.isnan(out[0])
    np.testing.assert_allclose(out[1:3], [1.0, -1.0], rtol=0, atol=4e-7)     # saturates like tanh
    np.testing.assert_array_equal(out[3:], [0.0, 0.0])


# -- weight layout -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_weights_stored_transposed_and_handed_out_in_c_order(cell):
    layer = make(cell, num_layers=2, bidirectional=True)
    for name, p in layer.parameters().items():
        if name.startswith("weight_"):
            assert p.flags.f_contiguous and p.T.flags.c_contiguous, name
    sd = layer.state_dict()
    assert all(v.flags.c_contiguous for v in sd.values())
    layer.load_state_dict({k: v * 2 for k, v in sd.items()})                  # in place: layout kept
    assert all(p.flags.f_contiguous for k, p in layer.parameters().items() if k.startswith("weight_"))


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_in_the_weights_layout_and_updates_keep_it(cell):
    layer = make(cell)
    _, _, cache = layer.forward_train(*_inputs(layer)[:2])
    _, _, grads = layer.backward(cache, _inputs(layer)[2])
    for name, g in grads.items():
        assert g.shape == layer.parameters()[name].shape
        if name.startswith("weight_"):
            assert g.flags.f_contiguous, name
    SGD(layer.parameters(), lr=0.1, momentum=0.9).step(grads)
    assert all(p.flags.f_contiguous for k, p in layer.parameters().items() if k.startswith("weight_"))


@pytest.mark.parametrize("shape", [(1024, 256), (96, 33), (7, 5), (64, 1)])
def test_tiled_copy_matches_numpy(shape):
    w = np.asfortranarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    c = c_layout(np, w)
    assert c.flags.c_contiguous
    np.testing.assert_array_equal(c, w)
    already = np.ascontiguousarray(w)
    assert c_layout(np, already) is already


def test_moved_layer_keeps_layout_and_cell():
    layer = LSTM(3, 4, seed=0, dtype="float64")
    moved = layer.to("cpu")
    assert moved._cell.fused is False and moved._cell.native is False and moved.parameters()["weight_hh_l0"].flags.f_contiguous
    np.testing.assert_array_equal(moved.parameters()["weight_hh_l0"], layer.parameters()["weight_hh_l0"])


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8, 9, 32])
@pytest.mark.parametrize("K,N", [(256, 1024), (512, 2048), (256, 768), (100, 300)])
def test_split_recurrent_product_matches_matmul(B, K, N):
    rng = np.random.default_rng(B)
    h = rng.standard_normal((B, K)).astype(np.float32)
    w_t = np.asfortranarray(rng.standard_normal((N, K)).astype(np.float32)).T      # as the layer holds it
    out = np.full((B, N), np.nan, np.float32)
    recurrent_product(np, h, w_t, out)
    np.testing.assert_allclose(out, h @ np.ascontiguousarray(w_t), rtol=1e-5, atol=1e-4)
    assert SMALL_MNK > 0


# -- step() against forward() ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_length_one_forward(cell, dtype):
    layer = make(cell, num_layers=3, dtype=dtype, batch_first=True)
    x, state0, _, _ = _inputs(layer, T=1, B=5)
    x, state0 = x.astype(dtype), tuple(s.astype(dtype) for s in _parts(state0))
    state0 = state0 if layer.state_size == 2 else state0[0]
    y_seq, s_seq = layer.forward(x, state0)
    y_step, s_step = layer.step(x[:, 0], state0)
    np.testing.assert_array_equal(y_step, y_seq[:, 0])
    for a, b in zip(_parts(s_step), _parts(s_seq)):
        np.testing.assert_array_equal(a, b)
    assert not np.shares_memory(y_step, _parts(s_step)[0])


def test_step_checks_its_input():
    layer = LSTM(3, 4, seed=0)
    with pytest.raises(ValueError, match="input has 2 features"):
        layer.step(np.zeros((1, 2), np.float32), None)
    with pytest.raises(ValueError, match="2-D"):
        layer.step(np.zeros((1, 1, 3), np.float32), None)
