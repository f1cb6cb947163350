"""A frozen layer's ``step()`` as one compiled call (``model_core/native/step_entry.c``).

* It gives the Python step's bits (same kernels, same order), for every cell, depth, batch and
  bias, through ``step`` (torch's state form) and ``step_states`` (the engine's tuple), on one
  thread or two, and from many Python threads at once (it releases the GIL).
* It takes only the plain case and leaves the rest to the Python step, which converts or raises
  the error that says what to fix: the same results and the same messages as without it.
* It never runs stale weights: a parameter made writable or replaced is read afresh, as
  ``_step_weights`` reads it.
* It leaks nothing, and a build of other sources is not loaded.
"""
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import model_core
from model_core import native
from model_core.nn import GRU, LSTM, RNN
from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(native.step_entry is None,
                                reason=f"the compiled step entry is unavailable: {native.STEP_ENTRY_REASON}")


def RNN_RELU(*args, **kwargs):
    return RNN(*args, nonlinearity="relu", **kwargs)


CLASSES = [LSTM, GRU, RNN, RNN_RELU]


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


def _python_step(layer, x, state):
    """The Python step alone, in torch's form."""
    y, states = layer._step_python(x, layer._tuple_form(state, "state"))
    return y, layer._torch_form(states)


def _random_state(layer, B, rng):
    states = tuple(rng.standard_normal(s.shape, dtype=np.float32) for s in layer.init_states(B))
    return layer._torch_form(states)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("B", [1, 3, 20])                       # 20: the kernels pack W_ih and W_hh as a batch
@pytest.mark.parametrize("cls", CLASSES)
def test_a_frozen_layers_step_is_one_compiled_call_with_the_python_steps_bits(cls, B, layers, bias):
    layer = cls(7, 19, num_layers=layers, bias=bias, seed=3).freeze()
    rng = np.random.default_rng(B)
    state = _random_state(layer, B, rng)
    layer.step(rng.standard_normal((B, 7), dtype=np.float32), state)      # the first step makes the plan
    for _ in range(3):                                                      # the state carries over
        x = rng.standard_normal((B, 7), dtype=np.float32)
        before = native.step_entry.steps()
        y, new = layer.step(x, state)
        assert native.step_entry.steps() == before + 1
        y_py, new_py = _python_step(layer, x, state)
        assert type(new) is type(new_py) and len(_parts(new)) == len(_parts(new_py))
        for a, b in zip((y, *_parts(new)), (y_py, *_parts(new_py))):
            assert a.dtype == np.float32 and a.flags.c_contiguous and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        y_t, new_t = layer.step_states(x, layer._tuple_form(state, "state"))   # the engine's tuple form
        assert native.step_entry.steps() == before + 2 and isinstance(new_t, tuple)
        np.testing.assert_array_equal(y_t, y)
        for a, b in zip(new_t, _parts(new)):
            np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(y, _parts(new)[0])                 # y is its own array, as in Python
        state = new


@pytest.mark.parametrize("cls", CLASSES)
def test_two_threads_give_the_compiled_steps_one_thread_bits(cls):
    layer = cls(64, 256, seed=1).freeze()                        # B=1, H=256: the team takes the step
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((20, 1, 64), dtype=np.float32)

    def run():
        state, ys = None, []
        for x in xs:
            y, state = layer.step(x, state)
            ys.append(y)
        return ys

    want = run()
    try:
        model_core.set_num_threads(2)
        before = native.step_entry.steps()
        got = run()
        assert native.step_entry.steps() - before == len(xs) - 1      # all but the first (no state yet)
    finally:
        model_core.set_num_threads(1)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_many_python_threads_step_one_frozen_layer_at_once():
    """The service steps sessions from several threads: the entry releases the GIL while the kernels
    run, and every call has its own arrays, so each thread gets its own sequence's results."""
    layer = LSTM(16, 48, num_layers=2, seed=2).freeze()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((30, 2, 16), dtype=np.float32) for _ in range(6)]

    def run(xs):
        state, ys = layer.init_state(2), []
        for x in xs:
            y, state = layer.step(x, state)
            ys.append(y)
        return ys

    want = [run(xs) for xs in inputs]
    got = [None] * len(inputs)
    before = native.step_entry.steps()

    def worker(i):
        got[i] = run(inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert native.step_entry.steps() - before == 6 * 30
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)


def _outcome(fn):
    try:
        y, state = fn()
    except Exception as exc:                                     # the error is the outcome
        return type(exc), str(exc)
    return y, state


class _Sub(np.ndarray):
    """An ndarray subclass: its methods may differ, so the compiled step leaves it to Python."""


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_what_is_not_plain_goes_to_the_python_step_with_its_results_and_its_errors(cls):
    layer = cls(5, 8, num_layers=2, seed=1).freeze()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5), dtype=np.float32)
    state = _random_state(layer, 3, rng)
    layer.step(x, state)                                          # the plan is made
    h = _parts(state)[0]
    lstm = cls is LSTM
    cases = {
        "no state yet": (x, None),
        "float64 input": (x.astype(np.float64), state),
        "a list as input": (x.tolist(), state),
        "a strided input": (np.repeat(x, 2, axis=1)[:, ::2], state),
        "a Fortran-order state": (x, tuple(np.asfortranarray(p) for p in _parts(state)) if lstm else np.asfortranarray(h)),
        "a float64 state": (x, tuple(p.astype(np.float64) for p in _parts(state)) if lstm else h.astype(np.float64)),
        "a big-endian input": (x.astype(">f4"), state),
        "a big-endian state": (x, tuple(p.astype(">f4") for p in _parts(state)) if lstm else h.astype(">f4")),
        "an ndarray subclass as input": (x.view(_Sub), state),
        "an empty batch": (x[:0], None),
        # what the Python step refuses, with its own message
        "too many features": (rng.standard_normal((3, 6), dtype=np.float32), state),
        "a 1-D input": (x[0], state),
        "a state of another batch": (x[:2], state),
        "a state of another depth": (x, tuple(p[:1] for p in _parts(state)) if lstm else h[:1]),
        "a single array for (h, c)": (x, h) if lstm else (x, (h, h)),
    }
    for what, (xi, si) in cases.items():
        before = native.step_entry.steps()
        got = _outcome(lambda: layer.step(xi, si))
        assert native.step_entry.steps() == before, what                 # the compiled entry declined
        want = _outcome(lambda: _python_step(layer, xi, si))
        if isinstance(got[0], type):
            assert got == want, what
            assert issubclass(got[0], ValueError), what
        else:
            for a, b in zip((got[0], *_parts(got[1])), (want[0], *_parts(want[1]))):
                np.testing.assert_array_equal(a, b, err_msg=what)
    assert _outcome(lambda: layer.step(x, list(state) if lstm else state))[0].shape == (3, 8)   # torch accepts a list


@pytest.mark.parametrize("cls", CLASSES)
def test_the_compiled_step_never_runs_weights_that_changed(cls):
    """Writes turned back on, a changed weight, a replaced one, a new freeze: each step gives what
    a fresh layer with the same values gives (the entry checks identity and read-only flags per call)."""
    layer = cls(6, 10, num_layers=2, seed=4).freeze()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6), dtype=np.float32)
    state = _random_state(layer, 2, rng)

    def expected():
        ref = cls(6, 10, num_layers=2)
        ref.load_state_dict(layer.state_dict())
        return _python_step(ref, x, state)

    def check(got, want):
        for a, b in zip((got[0], *_parts(got[1])), (want[0], *_parts(want[1]))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)

    layer.step(x, state)
    before = native.step_entry.steps()
    check(layer.step(x, state), expected())
    assert native.step_entry.steps() == before + 1
    params = layer.parameters()
    w = params["weight_hh_l1"]
    w.base.flags.writeable = True                                   # the memory a parameter views
    w.flags.writeable = True
    w[...] *= 0.5
    before = native.step_entry.steps()
    changed = layer.step(x, state)
    assert native.step_entry.steps() == before                      # writable: the Python step
    check(changed, expected())
    layer.freeze()
    check(layer.step(x, state), expected())
    before = native.step_entry.steps()
    check(layer.step(x, state), expected())
    assert native.step_entry.steps() == before + 1                  # frozen again: compiled again
    layer._params["bias_ih_l0"] = params["bias_ih_l0"] + 0.25          # replaced (writable, then frozen)
    layer._params["bias_ih_l0"].flags.writeable = False
    check(layer.step(x, state), expected())
    before = native.step_entry.steps()
    check(layer.step(x, state), expected())
    assert native.step_entry.steps() == before + 1
    clone = layer.to("cpu")                                         # a copy steps with its own arrays
    assert clone._step_plan is None
    check(clone.step(x, state), expected())


def test_the_compiled_step_frees_what_it_makes():
    layer = LSTM(8, 32, seed=0).freeze()
    x = np.ones((4, 8), np.float32)
    state = layer.step(x, None)[1]
    refs = sys.getrefcount(x)
    for _ in range(200):                                            # warm: the kernels' scratch, NumPy's caches
        state = layer.step(x, state)[1]
    tracemalloc.start()
    try:
        for _ in range(2000):
            y, state = layer.step(x, state)
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            y, state = layer.step(x, state)
        assert tracemalloc.get_traced_memory()[0] - first < 4096
    finally:
        tracemalloc.stop()
    assert sys.getrefcount(x) == refs
    # counted outside the assert, whose rewriting keeps temporaries: the tuple's or the name's, and the call's
    counts = [sys.getrefcount(state[0]), sys.getrefcount(state[1]), sys.getrefcount(y)]
    assert counts == [2, 2, 2]


def test_a_build_of_other_sources_is_not_loaded_and_the_switch_turns_it_off():
    """The installed module carries its source's hash; the loader compiles these sources where the
    hash differs (a checkout updated without rebuilding), and MODEL_CORE_NATIVE_STEP_ENTRY=0 leaves
    step() on the ctypes calls."""
    assert native.step_entry.SOURCE_HASH == native.step_entry_hash()
    code = ("from model_core import native; from model_core.nn import LSTM; import numpy as np; "
            "l = LSTM(3, 4).freeze(); s = l.step(np.ones((1, 3), np.float32), None)[1]; l.step(np.ones((1, 3), np.float32), s); "
            "print(native.step_entry is None, l._step_plan is None, native.STEP_ENTRY_REASON)")
    env = {**os.environ, "MODEL_CORE_NATIVE_STEP_ENTRY": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split()[:2] == ["True", "True"] and "disabled by MODEL_CORE_NATIVE_STEP_ENTRY=0" in out.stdout


def test_a_module_built_from_other_sources_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_CORE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "step_entry_hash", lambda: "0123456789abcdef")   # the installed one is "stale"
    if native._step_entry_flags("0123456789abcdef") is None:
        pytest.skip("no Python or NumPy headers to compile against")
    mod, how = native._load_step_entry()
    assert mod is not None and mod.SOURCE_HASH == "0123456789abcdef" and "compiled by" in how
    assert list(tmp_path.glob("step_entry-*"))


@pytest.mark.parametrize("missing", ["Python.h", "numpy/arrayobject.h"])
def test_without_headers_to_build_it_the_reason_names_the_missing_one(monkeypatch, tmp_path, missing):
    """Where the installed module is stale and a header is missing (a base image without Python's
    headers), the step runs through ctypes and STEP_ENTRY_REASON says which header is missing."""
    monkeypatch.setenv("MODEL_CORE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "step_entry_hash", lambda: "0123456789abcdef")   # the installed one is "stale"
    if missing == "Python.h":
        monkeypatch.setattr(native.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    else:
        monkeypatch.setattr(native.np, "get_include", lambda: str(tmp_path))
    mod, why = native._load_step_entry()
    assert mod is None
    assert why == f"none built at install, and no {tmp_path / missing} to compile it"
    assert not list(tmp_path.glob("step_entry-*"))                  # nothing compiled


@pytest.mark.parametrize("name", ["charlm", "temporal-order"])
def test_the_services_models_step_through_the_compiled_entry(name):
    """The bundled models as the service loads them (frozen): each keystroke's ``SequenceModel.step``
    is one compiled call for the whole stack of layers, with the Python step's bits."""
    from service.registry import ModelRegistry
    from service.settings import Settings
    registry = ModelRegistry(Settings().model_dir)
    registry.load_all()
    model = registry.get(name).model
    c = model.config
    inputs = np.arange(3) % c.input_size if c.uses_tokens else np.ones((3, c.input_size), np.float32)
    logits, state = model.step(inputs, None)                       # no state yet: the Python step
    before = native.step_entry.steps()
    got_logits, got_state = model.step(inputs, state)
    assert native.step_entry.steps() == before + 1
    x_t = model.encode(np.asarray(inputs)[None])[0]
    y_py, state_py = model.rnn._step_python(x_t, state)
    np.testing.assert_array_equal(got_logits, model.head.forward(y_py))
    for a, b in zip(got_state, state_py):
        np.testing.assert_array_equal(a, b)
