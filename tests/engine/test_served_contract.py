"""Both served model classes implement ``ServedModel``: the service never asks which one it holds."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from model_core import ModelConfig, SequenceModel
from model_core.onnx.exporter import to_onnx
from model_core.onnx.sequence_model import OnnxSequenceModel
from model_core.served import ServedModel


CONTRACT = [n for n, v in vars(ServedModel).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))]


def _models(cell="lstm"):
    config = ModelConfig(cell=cell, task="lm", input_size=5, hidden_size=4, output_size=5,
                         input_encoding="embedding", embedding_dim=3)
    model = SequenceModel(config, seed=0)
    return model, OnnxSequenceModel.load(to_onnx(model).SerializeToString())


def test_the_contract_names_what_the_service_calls():
    assert {"init_state", "step", "forward", "forward_steps", "describe", "xp", "device", "dtype"} <= set(CONTRACT)
    assert "config" in ServedModel.__annotations__


@pytest.mark.parametrize("cls", [SequenceModel, OnnxSequenceModel])
def test_each_class_declares_every_method_with_the_contract_signature(cls):
    for name in CONTRACT:
        declared = getattr(ServedModel, name)
        implemented = getattr(cls, name, None)
        assert implemented is not None, f"{cls.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(implemented, property), f"{cls.__name__}.{name} must be a property"
            continue
        want = list(inspect.signature(declared).parameters)
        have = list(inspect.signature(implemented).parameters)
        assert have == want, f"{cls.__name__}.{name}{have} differs from ServedModel.{name}{want}"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_both_instances_satisfy_it_and_agree_on_the_state_form(cell):
    model, graph = _models(cell)
    assert isinstance(model, ServedModel) and isinstance(graph, ServedModel)
    assert not isinstance(object(), ServedModel)
    for m in (model, graph):
        state = m.init_state(2)
        assert isinstance(state, tuple) and len(state) == (2 if cell == "lstm" else 1)
        logits, new = m.step(np.array([1, 2]), state)
        assert logits.shape == (2, 5) and isinstance(new, tuple) and len(new) == len(state)
        assert isinstance(m.describe(), dict)
    a, _ = model.forward(np.array([[1], [3]]))
    b, _ = graph.forward(np.array([[1], [3]]))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_every_entry_point_applies_the_one_input_rule():
    """An id past the vocabulary and a non-finite feature: the engine, the ONNX model, the JSON
    encoder and the v2 tensor parser all answer with ``model_core.inputs``' words."""
    from service.encoding import encode_sequence
    from service.errors import ServiceError
    from service.openinference.tensors import _features, _ids
    from service.openinference.types import InferInput

    model, graph = _models()
    rule = r"token ids must lie in \[0, 5\), got min 1 max 7"
    for m in (model, graph):
        with pytest.raises(ValueError, match=rule):
            m.forward(np.array([[1], [7]]))
    with pytest.raises(ServiceError, match=rule):
        encode_sequence(model.config, [1, 7], 10)
    with pytest.raises(ServiceError, match=rule):
        _ids(model.config, InferInput("INPUT_IDS", "INT64", (1, 2), np.array([[1, 7]])))
    features = ModelConfig(cell="gru", task="seq2seq", input_size=2, hidden_size=3, output_size=2)
    with pytest.raises(ServiceError, match="features must be finite"):
        encode_sequence(features, [[1.0, 1e300]], 10)
    with pytest.raises(ServiceError, match="features must be finite"):
        _features(features, InferInput("INPUT", "FP64", (1, 1, 2), np.array([[[1.0, np.nan]]])))
