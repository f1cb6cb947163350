"""ONNX LSTM / GRU / RNN through ``model_core.onnx.InferenceSession``, against onnxruntime.

Graphs are built from the operator spec with ``onnx.helper``; every attribute and optional input
is exercised on random data. The committed golden files (``tests/golden/onnx_ops``, written by
``scripts/make_onnx_golden.py``) keep the check running where onnxruntime is not installed.
Each test runs on ``cpu`` and, when CuPy and a CUDA device are present, on ``gpu``.
"""
from dataclasses import replace

import numpy as np
import pytest

from tests.onnx.onnx_reference import (ACTIVATIONS, GOLDEN_OPS_DIR, RecurrentCase, assert_concurrent_runs_match,
                                       golden_names, golden_recurrent_cases, load_case, ort_recurrent, recurrent_feed,
                                       recurrent_model)

from model_core.onnx import InferenceSession

OPS = ("LSTM", "GRU", "RNN")
DIRECTIONS = ("forward", "reverse", "bidirectional")
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-10)}


def check(ort, case: RecurrentCase, device: str):
    feed = recurrent_feed(case)
    expected = ort_recurrent(ort, case, feed)
    got = InferenceSession(recurrent_model(case).SerializeToString(), device=device).run(None, feed)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert isinstance(g, np.ndarray) and g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, **TOL[case.dtype])
    return got


# -- the grid: every op, direction and layout, with every optional input ----------------------------
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
def test_direction_and_layout(ort, device, op, direction, layout):
    for seed in range(2):
        check(ort, RecurrentCase(op, direction, layout, peepholes=op == "LSTM", seed=seed), device)


VARIANTS = {
    "no_bias": dict(bias=False),
    "no_lengths": dict(lengths=None),
    "full_lengths": dict(lengths="full"),
    "length_zero": dict(lengths="with_zero"),
    "all_lengths_zero": dict(lengths="all_zero"),
    "no_initial_state": dict(initial_state=False),
    "only_x_w_r": dict(bias=False, lengths=None, initial_state=False),
    "one_step": dict(shape=(1, 3, 2, 4)),
    "one_sequence": dict(shape=(6, 1, 3, 2), lengths="full"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", OPS)
def test_optional_inputs_and_edges(ort, device, op, variant):
    for direction in DIRECTIONS:
        check(ort, RecurrentCase(op, direction, seed=5, **VARIANTS[variant]), device)


@pytest.mark.parametrize("op", OPS)
def test_hidden_size_taken_from_r(ort, device, op):
    """The spec makes hidden_size optional (onnxruntime requires it): without it, R's shape decides."""
    case = RecurrentCase(op, "bidirectional", seed=3)
    feed = recurrent_feed(case)
    expected = ort_recurrent(ort, case, feed)
    model = recurrent_model(case)
    attributes = model.graph.node[0].attribute
    attributes.remove(next(a for a in attributes if a.name == "hidden_size"))
    for g, e in zip(InferenceSession(model.SerializeToString(), device=device).run(None, feed), expected):
        np.testing.assert_allclose(g, e, **TOL["float32"])


@pytest.mark.parametrize("outputs", [(True, False, False), (False, True, False), (False, False, True),
                                     (False, True, True), (True, False, True)])
@pytest.mark.parametrize("op", OPS)
def test_omitted_outputs(ort, device, op, outputs):
    if op != "LSTM" and outputs[2]:
        pytest.skip("only LSTM has Y_c")
    got = check(ort, RecurrentCase(op, "bidirectional", outputs=outputs, seed=7), device)
    assert len(got) == sum(outputs)


def test_length_zero_gives_zero_state(ort, device):
    """onnxruntime's choice for an empty sequence: Y_h and Y_c are 0, not initial_h / initial_c."""
    case = RecurrentCase("LSTM", "bidirectional", lengths="with_zero", seed=8)
    y, y_h, y_c = check(ort, case, device)
    assert recurrent_feed(case)["sequence_lens"][-1] == 0
    assert not y[:, :, -1].any() and not y_h[:, -1].any() and not y_c[:, -1].any()


# -- activations, coefficients and the op-specific options ----------------------------------------
@pytest.mark.parametrize("with_coefficients", [False, True], ids=["defaults", "alpha_beta"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("op", OPS)
def test_every_activation(ort, device, op, activation, with_coefficients):
    slots = {"LSTM": 3, "GRU": 2, "RNN": 1}[op]
    coefficients = dict(alphas=(0.6, 0.3, 0.9), betas=(0.2, 0.4, 0.7)) if with_coefficients else {}
    # three steps: Softplus in all three LSTM slots grows the cell past exp's range at the fourth,
    # where onnxruntime's log(1 + exp(x)) gives inf and our overflow-free form stays finite
    case = RecurrentCase(op, "forward", activations=(activation,) * slots, seed=9, shape=(3, 3, 3, 4),
                         **coefficients)
    check(ort, case, device)


PACKED = {
    "LSTM": (("HardSigmoid", "Elu", "Softsign", "LeakyRelu", "ScaledTanh", "Affine"),
             (0.3, 0.8, 0.05, 1.5, 0.7), (0.4, 0.9, 0.1)),
    "GRU": (("Affine", "ThresholdedRelu", "Sigmoid", "ScaledTanh"), (0.5, 0.1, 0.9), (0.2, 1.1)),
    "RNN": (("LeakyRelu", "Affine"), (0.2, 0.7), (0.3,)),
}


@pytest.mark.parametrize("op", OPS)
def test_alpha_beta_consumed_in_order(ort, device, op):
    """Coefficients go, in order, to the activations that take them, across both directions."""
    activations, alphas, betas = PACKED[op]
    check(ort, RecurrentCase(op, "bidirectional", activations=activations, alphas=alphas, betas=betas,
                             seed=10), device)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_clip(ort, device, op, direction):
    check(ort, RecurrentCase(op, direction, clip=0.4, peepholes=op == "LSTM", seed=11), device)


@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_input_forget_and_peepholes(ort, device, direction, peepholes):
    check(ort, RecurrentCase("LSTM", direction, input_forget=True, peepholes=peepholes, seed=12), device)
    check(ort, RecurrentCase("LSTM", direction, peepholes=peepholes, lengths="with_zero", seed=13), device)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("linear_before_reset", [False, True])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gru_linear_before_reset(ort, device, direction, linear_before_reset, layout):
    check(ort, RecurrentCase("GRU", direction, layout, linear_before_reset=linear_before_reset, seed=14), device)
    check(ort, RecurrentCase("GRU", direction, layout, linear_before_reset=linear_before_reset, bias=False,
                             seed=15), device)


@pytest.mark.parametrize("opset", [7, 13, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_opsets(ort, device, op, opset):
    check(ort, RecurrentCase(op, "bidirectional", opset=opset, seed=16), device)


@pytest.mark.parametrize("op", OPS)
def test_float64_agrees_with_float32_reference(ort, device, op):
    """onnxruntime's CPU kernels run float32 only; our float64 path must agree to float32 precision."""
    case = RecurrentCase(op, "bidirectional", peepholes=op == "LSTM", dtype="float64", seed=17)
    feed = recurrent_feed(case)
    as_float32 = replace(case, dtype="float32")
    expected = ort_recurrent(ort, as_float32, {k: v.astype(np.float32) if v.dtype == np.float64 else v
                                               for k, v in feed.items()})
    got = InferenceSession(recurrent_model(case).SerializeToString(), device=device).run(None, feed)
    for g, e in zip(got, expected):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


# -- behaviour of the session around the op ---------------------------------------------------------
def test_bad_lengths_and_shapes_raise_clear_errors(device):
    case = RecurrentCase("GRU", "forward", shape=(4, 2, 3, 5))
    session = InferenceSession(recurrent_model(case).SerializeToString(), device=device)
    feed = recurrent_feed(case)
    with pytest.raises(ValueError, match="sequence_lens must lie in"):
        session.run(None, {**feed, "sequence_lens": np.array([5, 1], np.int32)})
    with pytest.raises(ValueError, match="input W has shape"):
        session.run(None, {**feed, "W": feed["W"][:, :-1]})


def test_concurrent_runs_share_one_session(device):
    """No per-call state on the session: threads running different feeds get their own answers."""
    case = RecurrentCase("LSTM", "bidirectional", shape=(6, 3, 4, 5), peepholes=True)
    session = InferenceSession(recurrent_model(case).SerializeToString(), device=device)
    assert_concurrent_runs_match(session, [recurrent_feed(replace(case, seed=s)) for s in range(8)], calls=5)


# -- committed golden files: run without onnxruntime ------------------------------------------------
def test_golden_files_cover_the_cases():
    assert set(golden_names(GOLDEN_OPS_DIR)) >= set(golden_recurrent_cases())


@pytest.mark.parametrize("name", golden_names(GOLDEN_OPS_DIR))
def test_golden(device, name):
    model, feed, expected = load_case(GOLDEN_OPS_DIR, name)
    session = InferenceSession(model, device=device)
    got = session.run(list(expected), feed)
    for g, (key, e) in zip(got, expected.items()):
        assert g.shape == e.shape, key
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=key)
