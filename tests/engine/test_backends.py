"""Backends and the layer contract: CuPy against NumPy, device selection, argument errors,
thread safety, forward/forward_train/step agreement, untouched inputs and edge sizes.

The device tests are written once and run on ``cpu`` and ``gpu``; the GPU run is skipped when
CuPy or a CUDA device is missing.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model_core import backend
from model_core.backend import DeviceError, device_of, gpu_available, to_device, to_numpy
from model_core.nn import GRU, LSTM, RNN

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
TOL = {"float64": dict(fwd=1e-10, grad=1e-10), "float32": dict(fwd=1e-5, grad=1e-4)}


def make(cell, I=3, H=4, **kw):
    kw.setdefault("seed", 0)
    if cell.startswith("rnn_"):
        return RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": LSTM, "gru": GRU}[cell](I, H, **kw)


def _parts(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def _pack(parts):
    return tuple(parts) if len(parts) == 2 else parts[0]


def _inputs(layer, T=5, B=3, seed=0):
    """x, state0, dy, dstate as NumPy arrays in ``layer``'s layout and dtype."""
    rng = np.random.default_rng(seed)
    S, D, H, dt = layer.num_layers * layer.num_directions, layer.num_directions, layer.hidden_size, layer.dtype
    tb = (B, T) if layer.batch_first else (T, B)
    x = rng.standard_normal((*tb, layer.input_size)).astype(dt)
    dy = rng.standard_normal((*tb, D * H)).astype(dt)
    state0 = _pack([(0.5 * rng.standard_normal((S, B, H))).astype(dt) for _ in range(layer.state_size)])
    dstate = _pack([rng.standard_normal((S, B, H)).astype(dt) for _ in range(layer.state_size)])
    return x, state0, dy, dstate


def _run(layer, x, state0, dy, dstate, lengths):
    """forward, forward_train + backward; everything returned as a flat dict of host arrays."""
    y_inf, s_inf = layer.forward(x, state0, lengths=lengths)
    y, s, cache = layer.forward_train(x, state0, lengths=lengths)
    dx, d0, grads = layer.backward(cache, dy, dstate)
    out = {"y_inf": y_inf, "y": y, "dx": dx, **{f"grad.{k}": g for k, g in grads.items()}}
    out.update({f"state_inf{k}": v for k, v in enumerate(_parts(s_inf))})
    out.update({f"state{k}": v for k, v in enumerate(_parts(s))})
    out.update({f"dstate0_{k}": v for k, v in enumerate(_parts(d0))})
    return out


# -- the same forward + backward on every device ------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_device_matches_numpy(device, cell, dtype):
    ref = make(cell, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype)
    layer = ref.to(device)
    assert layer.device == device
    x, state0, dy, dstate = _inputs(ref)
    lengths = np.array([5, 1, 3])
    expected = _run(ref, x, state0, dy, dstate, lengths)

    def dev(a):
        return to_device(a, device)

    got = _run(layer, dev(x), _pack([dev(s) for s in _parts(state0)]), dev(dy),
               _pack([dev(s) for s in _parts(dstate)]), dev(lengths))
    assert got.keys() == expected.keys()
    for k, want in expected.items():
        assert device_of(got[k]) == device, k
        have = to_numpy(got[k])
        assert have.dtype == np.dtype(dtype), k
        if k.startswith(("grad.", "dx", "dstate0")):
            err = np.abs(have - want).max() / max(np.abs(want).max(), 1e-30)
            assert err <= TOL[dtype]["grad"], f"{k}: relative error {err:.1e}"
        else:
            np.testing.assert_allclose(have, want, rtol=0, atol=TOL[dtype]["fwd"], err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_step_on_device(device, cell):
    layer = make(cell, num_layers=2, dtype="float64").to(device)
    x, state0, _, _ = _inputs(layer)
    y_seq, s_seq = layer.forward(to_device(x, device))
    state = None
    for t in range(x.shape[0]):
        y_t, state = layer.step(to_device(x[t], device), state)
        np.testing.assert_allclose(to_numpy(y_t), to_numpy(y_seq[t]), rtol=1e-12, atol=1e-12)
    for a, b in zip(_parts(state), _parts(s_seq)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-12, atol=1e-12)


# -- devices --------------------------------------------------------------------------------------
@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend CuPy or the CUDA device is missing, whatever this machine has."""
    monkeypatch.setattr(backend, "_cupy", lambda: None)


def test_gpu_request_without_gpu_raises(no_gpu):
    with pytest.raises(DeviceError, match=r"device='gpu' was requested but no GPU is usable.*cupy"):
        LSTM(3, 4, device="gpu")
    with pytest.raises(DeviceError, match="no GPU"):
        LSTM(3, 4).to("gpu")


def test_auto_falls_back_to_cpu(no_gpu):
    layer = GRU(3, 4, device="auto")
    assert layer.device == "cpu" and layer.xp is np
    y, _ = layer.forward(np.zeros((2, 1, 3)))
    assert isinstance(y, np.ndarray)


def test_auto_picks_gpu_when_available():
    assert GRU(3, 4, device="auto").device == ("gpu" if gpu_available() else "cpu")


def test_to_cpu_is_an_independent_copy():
    layer = LSTM(3, 4, num_layers=2, seed=1)
    x, _, _, _ = _inputs(layer)
    y0, _ = layer.forward(x)
    clone = layer.to("cpu")
    np.testing.assert_array_equal(clone.forward(x)[0], y0)
    for p in clone.parameters().values():
        p += 1.0                                              # in place, as an optimiser would
    np.testing.assert_array_equal(layer.forward(x)[0], y0)
    layer.load_state_dict({k: np.zeros_like(v) for k, v in layer.state_dict().items()})
    assert all(np.all(v != 0) for v in clone.state_dict().values() if v.size > 1)
    assert clone.forward(x)[0].any()


# -- argument errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(input_size=0), "input_size must be a positive integer"),
    (dict(input_size=2.5), "input_size must be a positive integer"),
    (dict(input_size=True), "input_size must be a positive integer"),
    (dict(hidden_size=-1), "hidden_size must be a positive integer"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(nonlinearity="sigmoid"), "nonlinearity must be 'tanh' or 'relu'"),
    (dict(dtype="float16"), "dtype must be float32 or float64"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(device="tpu"), "device must be one of"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RNN(**{"input_size": 3, "hidden_size": 4, **kwargs})


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_call_errors(cell):
    layer = make(cell, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    good = layer.init_state(2)
    bad_state = _pack([np.zeros((2, 3, 4), np.float32)] * layer.state_size)
    cases = [
        (lambda: layer.forward(x[0]), r"input must be 3-D \(T, B, I\)"),
        (lambda: layer.forward(np.zeros((5, 2, 4))), "input has 4 features, expected input_size=3"),
        (lambda: layer.forward(x, bad_state), r"state must have shape \(2, 2, 4\)"),
        (lambda: layer.forward(x, lengths=np.array([6, 2])), r"lengths must lie in \[0, 5\]"),
        (lambda: layer.forward(x, lengths=np.array([-1, 2])), r"lengths must lie in \[0, 5\]"),
        (lambda: layer.forward(x, lengths=np.array([1, 2, 3])), r"lengths must be an integer array of shape \(2,\)"),
        (lambda: layer.forward(x, lengths=np.array([[1, 2]])), r"lengths must be an integer array of shape \(2,\)"),
        (lambda: layer.forward(x, lengths=np.array([1.0, 2.0])), "lengths must be an integer array"),
        (lambda: layer.backward(layer.forward_train(x)[2], np.zeros((5, 2, 5))), "dy must match the output's shape"),
        (lambda: layer.backward(layer.forward_train(x)[2], None, bad_state), r"dstate must have shape \(2, 2, 4\)"),
        (lambda: layer.step(x, good), r"step input must be 2-D \(B, I\)"),
        (lambda: make(cell, bidirectional=True).step(x[0], None), "step\\(\\) needs a unidirectional layer"),
        (lambda: layer.load_state_dict({**layer.state_dict(), "weight_hh_l0": np.zeros((3, 3))}),
         "'weight_hh_l0' has shape"),
    ]
    if cell == "lstm":
        one = make(cell)                                      # (L*D, B, H) = (1, 2, 4)
        cases.append((lambda: one.forward(x, one.init_state(2)[0]), r"must be a tuple \(h, c\)"))
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_python_lists_are_accepted_like_arrays():
    layer = GRU(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y, h = layer.forward(x, lengths=np.array([5, 2]))
    y_list, h_list = layer.forward(x, lengths=[5, 2])
    np.testing.assert_array_equal(y_list, y)
    np.testing.assert_array_equal(layer.forward(x.tolist())[0], layer.forward(x)[0])


# -- the layer contract -----------------------------------------------------------------------------
def test_thread_safety():
    """8 threads share one layer, each with its own input: every result equals its solo run."""
    layer = LSTM(6, 16, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    jobs = []
    for k in range(8):
        x, state0, dy, dstate = _inputs(layer, T=20, B=4, seed=100 + k)
        jobs.append((x, state0, dy, dstate, np.array([20, 1 + k, 20 - k, 7])))
    solo = [_run(layer, *job) for job in jobs]
    start = threading.Barrier(8)

    def threaded(k):
        start.wait()
        return [_run(layer, *jobs[k]) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(threaded, range(8)))
    for k, runs in enumerate(results):
        for run in runs:
            for name, want in solo[k].items():
                np.testing.assert_allclose(run[name], want, rtol=1e-12, atol=1e-12, err_msg=f"thread {k}: {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_forward_equals_forward_train(cell):
    """Inference and training passes agree; inference ignores dropout."""
    layer = make(cell, num_layers=3, bidirectional=True, batch_first=True)
    with_dropout = make(cell, num_layers=3, bidirectional=True, batch_first=True, dropout=0.3)  # same weights
    x, state0, _, _ = _inputs(layer)
    for lengths in (None, np.array([5, 1, 4])):
        y, s = layer.forward(x, state0, lengths=lengths)
        y_t, s_t, _ = layer.forward_train(x, state0, lengths=lengths)
        y_d, s_d = with_dropout.forward(x, state0, lengths=lengths)
        for a, b, c in zip((y, *_parts(s)), (y_t, *_parts(s_t)), (y_d, *_parts(s_d))):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_forward(cell, batch_first):
    layer = make(cell, num_layers=2, batch_first=batch_first, dtype="float64")
    x, state0, _, _ = _inputs(layer, T=6)
    y_seq, s_seq = layer.forward(x, state0)
    state = state0
    for t in range(6):
        y_t, state = layer.step(x[:, t] if batch_first else x[t], state)
        np.testing.assert_allclose(y_t, y_seq[:, t] if batch_first else y_seq[t], rtol=1e-13, atol=1e-13)
    for a, b in zip(_parts(state), _parts(s_seq)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_inputs_and_parameters_not_mutated(cell):
    layer = make(cell, num_layers=2, bidirectional=True, batch_first=True)
    x, state0, dy, dstate = _inputs(layer)
    lengths = np.array([5, 1, 3])
    arrays = [x, *_parts(state0), dy, *_parts(dstate), lengths]
    before = [a.copy() for a in arrays]
    params = layer.state_dict()
    layer.forward(x, state0, lengths=lengths)
    _, _, cache = layer.forward_train(x, state0, lengths=lengths)
    layer.backward(cache, dy, dstate)
    layer.backward(cache, dy, dstate)                         # a cache can be reused
    uni = make(cell, num_layers=2)
    step_state = _pack([s[:2] for s in _parts(state0)])
    step_before = [s.copy() for s in _parts(step_state)]
    uni.step(x[:, 0], step_state)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_parts(step_state), step_before):
        np.testing.assert_array_equal(a, b)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, params[k])


def test_output_dtype_follows_the_layer():
    layer = GRU(3, 4, seed=0)                                 # float32
    y, h = layer.forward(np.zeros((2, 1, 3), np.float64))
    assert y.dtype == h.dtype == np.float32


@pytest.mark.parametrize("cell", CELLS)
def test_zero_length_sequence_passes_state_through(cell):
    """A batch element of length 0 outputs zeros and keeps its initial state (forward and backward)."""
    layer = make(cell, dtype="float64", bidirectional=True)
    x, state0, dy, dstate = _inputs(layer, T=4, B=2)
    y, s, cache = layer.forward_train(x, state0, lengths=np.array([0, 4]))
    dx, d0, _ = layer.backward(cache, dy, dstate)
    assert not y[:, 0].any() and not dx[:, 0].any()
    for a, b, da, db in zip(_parts(s), _parts(state0), _parts(d0), _parts(dstate)):
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
        np.testing.assert_array_equal(da[:, 0], db[:, 0])


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_empty_sequence_returns_initial_state(cell):
    """T=0: no outputs, the final state is the initial state, and backward passes dstate through."""
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64")
    _, state0, _, dstate = _inputs(layer, T=1, B=2)
    x = np.zeros((0, 2, 3))
    y, s, cache = layer.forward_train(x, state0)
    assert y.shape == (0, 2, 8)
    for a, b in zip(_parts(s), _parts(state0)):
        np.testing.assert_array_equal(a, b)
    dx, d0, grads = layer.backward(cache, np.zeros((0, 2, 8)), dstate)
    assert dx.shape == x.shape and not any(g.any() for g in grads.values())
    for a, b in zip(_parts(d0), _parts(dstate)):
        np.testing.assert_array_equal(a, b)
