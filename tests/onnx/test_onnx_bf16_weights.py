"""``InferenceSession(weights="bfloat16")``: the LSTM and GRU nodes read W and R rounded once to
bfloat16 with float32 arithmetic, through the kernel a frozen layer's ``freeze(weights="bfloat16")``
runs. Checked against our float32 session on the same graph with W and R rounded beforehand (the
reference the nn layers' bfloat16 tests use), against the float32 weights (the rounding must show),
and bit for bit against an exported model's own bfloat16 layers. Nodes that cannot read them are
refused with the reason, as ``WeightFormatError``."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_core import native
from model_core.cells.native_bf16 import round_bf16
from model_core.onnx import InferenceSession, OnnxLoadError, WeightFormatError
from tests.onnx.onnx_reference import (RecurrentCase, assert_concurrent_runs_match, make_model, recurrent_feed,
                                       recurrent_model)

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=f"native kernels unavailable: {native.REASON}")

WEIGHTS = ("W", "R", "B")


def _with_initializers(case: RecurrentCase, feed: dict, rounded: bool = False) -> bytes:
    """The case's graph with W, R and B as initializers (W and R rounded to bfloat16 if asked)."""
    model = recurrent_model(case)
    graph = model.graph
    for name in WEIGHTS:
        if name in feed:
            value = round_bf16(feed[name]) if rounded and name != "B" else feed[name]
            graph.initializer.append(numpy_helper.from_array(value, name))
            graph.input.remove(next(i for i in graph.input if i.name == name))
    return model.SerializeToString()


def _run(case: RecurrentCase, weights: str = "float32", rounded: bool = False):
    feed = recurrent_feed(case)
    session = InferenceSession(_with_initializers(case, feed, rounded), weights=weights)
    return session, session.run(None, {k: v for k, v in feed.items() if k not in WEIGHTS})


CASES = [
    RecurrentCase("LSTM", "forward", shape=(9, 3, 5, 19), seed=1),                  # ragged, a partial 16-unit block
    RecurrentCase("LSTM", "reverse", shape=(7, 4, 6, 32), lengths="with_zero", seed=2),
    RecurrentCase("LSTM", "bidirectional", layout=1, shape=(6, 5, 4, 24), seed=3),
    RecurrentCase("LSTM", "forward", shape=(12, 1, 7, 40), lengths=None, initial_state=False, seed=4),  # one row
    RecurrentCase("LSTM", "bidirectional", shape=(5, 40, 8, 17), bias=False, seed=5),   # past the fused batch
    RecurrentCase("GRU", "forward", linear_before_reset=True, shape=(9, 3, 5, 21), seed=6),
    RecurrentCase("GRU", "bidirectional", linear_before_reset=True, shape=(8, 4, 6, 16), lengths="with_zero",
                  seed=7),
    RecurrentCase("GRU", "reverse", layout=1, linear_before_reset=True, shape=(10, 1, 3, 33), lengths=None, seed=8),
    RecurrentCase("GRU", "forward", linear_before_reset=True, shape=(4, 2, 3, 8), bias=False,
                  outputs=(False, True, False), seed=9),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.direction}-layout{c.layout}-{c.dims()}")
def test_bfloat16_nodes_match_float32_on_the_rounded_weights(case):
    session, got = _run(case, "bfloat16")
    assert session.weight_format == "bfloat16"
    _, want = _run(case, rounded=True)
    _, exact = _run(case)
    assert len(got) == len(want) == len(exact)
    moved = 0.0
    for g, w, e in zip(got, want, exact):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6)
        moved = max(moved, float(np.abs(g - e).max()))
    assert 1e-5 < moved < 2e-2                           # the rounding shows, and stays small


def test_a_float32_session_reports_float32_and_is_unchanged():
    case = CASES[0]
    session, got = _run(case)
    assert session.weight_format == "float32"
    again = InferenceSession(_with_initializers(case, recurrent_feed(case)), weights="float32")
    for a, b in zip(got, again.run(None, {k: v for k, v in recurrent_feed(case).items() if k not in WEIGHTS})):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_exported_model_reads_its_layers_bfloat16_bits(cell, tmp_path):
    """One kernel for every path: the exported graph under weights="bfloat16" gives the bits of the
    model it came from, frozen with weights="bfloat16", step after step of a chunked stream too."""
    from model_core.config import ModelConfig
    from model_core.model import SequenceModel
    from model_core.onnx import export
    from model_core.onnx.sequence_model import OnnxSequenceModel

    config = ModelConfig(task="seq2seq", cell=cell, input_encoding="features", input_size=6, hidden_size=40,
                         output_size=3, num_layers=2)
    model = SequenceModel(config, seed=11)
    export(model, tmp_path / "model.onnx")
    served = OnnxSequenceModel.load(tmp_path / "model.onnx", weights="bfloat16")
    frozen = model.freeze(weights="bfloat16")
    assert served.weight_format == frozen.weight_format == "bfloat16"
    x = np.random.default_rng(11).standard_normal((9, 3, 6)).astype(np.float32)
    want, want_state = frozen.forward(x)
    got, state = served.forward(x)
    assert np.array_equal(got, want)
    for a, b in zip(state, want_state):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    first, state = served.forward(x[:4])
    rest, _ = served.forward(x[4:], state)
    assert np.array_equal(np.concatenate([first, rest]), want)


def test_one_bfloat16_session_serves_many_threads_at_once():
    """The service runs a session from many threads: the packed weights are read-only and each call
    has its own scratch, so threads with different feeds (batch sizes, lengths) at once get the bits
    each feed gets alone, call after call."""
    case = replace(CASES[1], shape=(7, 4, 6, 32))
    session = InferenceSession(_with_initializers(case, recurrent_feed(case)), weights="bfloat16")
    rng = np.random.default_rng(0)
    feeds = [{"X": rng.standard_normal((7, N, 6)).astype(np.float32),
              "sequence_lens": rng.integers(0, 8, N).astype(np.int32),
              "initial_h": rng.standard_normal((1, N, 32)).astype(np.float32),
              "initial_c": rng.standard_normal((1, N, 32)).astype(np.float32)} for N in (4, 1, 3, 4)]
    assert_concurrent_runs_match(session, feeds, calls=20)


def _refused(model_bytes, match):
    with pytest.raises(WeightFormatError, match=match) as info:
        InferenceSession(model_bytes, weights="bfloat16")
    assert isinstance(info.value, OnnxLoadError)
    InferenceSession(model_bytes)                        # float32 runs the same graph


@pytest.mark.parametrize("case, why", [
    (RecurrentCase("RNN", "forward", shape=(3, 2, 3, 4)), "serve LSTM and GRU nodes"),
    (RecurrentCase("LSTM", "forward", peepholes=True, shape=(3, 2, 3, 4)), "no clip, peepholes"),
    (RecurrentCase("LSTM", "forward", clip=1.0, shape=(3, 2, 3, 4)), "no clip"),
    (RecurrentCase("GRU", "forward", shape=(3, 2, 3, 4)), "linear_before_reset=1"),
    (RecurrentCase("GRU", "forward", linear_before_reset=True, activations=("HardSigmoid", "Tanh"),
                   shape=(3, 2, 3, 4)), "default activations"),
    (RecurrentCase("LSTM", "forward", dtype="float64", shape=(3, 2, 3, 4)), "float32"),
])
def test_nodes_that_cannot_read_bfloat16_are_refused_with_the_reason(case, why):
    _refused(_with_initializers(case, recurrent_feed(case)), why)


def test_weights_fed_at_run_time_are_refused():
    case = RecurrentCase("LSTM", "forward", shape=(3, 2, 3, 4))
    _refused(recurrent_model(case).SerializeToString(), "initializers")


def test_a_graph_without_a_recurrent_node_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", TensorProto.FLOAT)],
                       [("y", TensorProto.FLOAT)], 14)
    _refused(model.SerializeToString(), "no LSTM or GRU node")


def test_every_refusal_is_listed_and_a_broken_graph_stays_an_ordinary_load_error():
    lstm = replace(CASES[0], peepholes=True)
    model = onnx.load_from_string(_with_initializers(lstm, recurrent_feed(lstm)))
    with pytest.raises(WeightFormatError, match="peepholes"):
        InferenceSession(model.SerializeToString(), weights="bfloat16")
    model.graph.node.append(helper.make_node("NoSuchOp", ["Y"], ["Z"]))
    with pytest.raises(OnnxLoadError, match="NoSuchOp") as info:
        InferenceSession(model.SerializeToString(), weights="bfloat16")
    assert not isinstance(info.value, WeightFormatError)


def test_an_unknown_format_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="float32, bfloat16"):
        InferenceSession(_with_initializers(CASES[0], recurrent_feed(CASES[0])), weights="float16")
