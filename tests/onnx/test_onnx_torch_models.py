"""Models exported by ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``) run on
``InferenceSession`` and agree with torch: embedding -> LSTM / GRU / RNN (tanh, relu; 1 and 2
layers; bidirectional; batch_first) -> linear head, at a batch and length other than the export's.

The committed golden files (``tests/golden/onnx_torch``, from ``scripts/make_onnx_golden.py``) hold
the exported graphs and torch's outputs, so the check runs where torch is not installed.
"""
import numpy as np
import pytest

from tests.onnx.onnx_reference import GOLDEN_TORCH_DIR, golden_names, load_case, torch_case, torch_cases

from model_core.onnx import InferenceSession

TOL = dict(rtol=1e-5, atol=1e-5)


def assert_outputs(session, feed, expected):
    got = session.run(list(expected), feed)
    for g, (name, e) in zip(got, expected.items()):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        np.testing.assert_allclose(g, e, err_msg=name, **TOL)


@pytest.mark.torch
@pytest.mark.parametrize("name", list(torch_cases()))
def test_fresh_export_matches_torch(device, name):
    pytest.importorskip("torch")
    model, feed, expected = torch_case(torch_cases()[name])
    session = InferenceSession(model, device=device)
    assert [i.name for i in session.get_inputs()] == list(feed)
    assert_outputs(session, feed, expected)


def test_golden_files_cover_the_cases():
    assert set(golden_names(GOLDEN_TORCH_DIR)) == set(torch_cases())


@pytest.mark.parametrize("name", golden_names(GOLDEN_TORCH_DIR))
def test_golden_export(device, name):
    model, feed, expected = load_case(GOLDEN_TORCH_DIR, name)
    assert_outputs(InferenceSession(model, device=device), feed, expected)


def test_state_carries_across_chunks(device):
    """Feeding h_n back as h0 over two chunks equals one run over the whole sequence."""
    model, feed, _ = load_case(GOLDEN_TORCH_DIR, "lstm_l1_op17")
    session = InferenceSession(model, device=device)
    tokens, h0, c0 = feed["tokens"], feed["h0"], feed["c0"]  # tokens (T, N): not batch_first
    whole = session.run(None, {"tokens": tokens, "h0": h0, "c0": c0})
    first = session.run(None, {"tokens": tokens[:3], "h0": h0, "c0": c0})
    second = session.run(None, {"tokens": tokens[3:], "h0": first[1], "c0": first[2]})
    np.testing.assert_allclose(np.concatenate([first[0], second[0]]), whole[0], **TOL)
    np.testing.assert_allclose(second[1], whole[1], **TOL)
    np.testing.assert_allclose(second[2], whole[2], **TOL)
