"""Both served model classes implement ``ServedModel``: the service never asks which one it holds."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from model_core import ModelConfig, SequenceModel
from model_core.served import ServedModel

onnx = pytest.importorskip("onnx")

from model_core.onnx.exporter import to_onnx  # noqa: E402
from model_core.onnx.sequence_model import OnnxSequenceModel  # noqa: E402

CONTRACT = [n for n, v in vars(ServedModel).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))]


def _models(cell="lstm"):
    config = ModelConfig(cell=cell, task="lm", input_size=5, hidden_size=4, output_size=5,
                         input_encoding="embedding", embedding_dim=3)
    model = SequenceModel(config, seed=0)
    return model, OnnxSequenceModel.load(to_onnx(model).SerializeToString())


def test_the_contract_names_what_the_service_calls():
    assert {"init_state", "step", "forward", "forward_steps", "describe", "config"} <= set(CONTRACT) | {"config"}


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
