"""Loading is where a model is refused: everything unsupported is listed at once, external data
never escapes the model's folder, sizes are capped before anything is allocated, and bytes that
are not an ONNX model give a clear ``OnnxLoadError``. None of these tests needs onnxruntime.
"""
import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx.onnx_reference import RecurrentCase, make_model, recurrent_model

from model_core.onnx import InferenceSession, OnnxLoadError

F = TensorProto.FLOAT


def relu_model(opset=13, **attrs):
    return make_model([helper.make_node("Relu", ["x"], ["y"], **attrs)], [("x", F)], [("y", F)], opset)


def weights_model(weights: np.ndarray):
    """y = x @ w with ``w`` an initializer."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", F)], [("y", F)], 13,
                      [numpy_helper.from_array(weights, "w")])


def lstm_node(output="y", **attrs):
    attrs = {"hidden_size": 2, **attrs}
    return helper.make_node("LSTM", ["x", "w", "r"], [output], **attrs)


# -- unsupported things are listed together ---------------------------------------------------------
def test_every_unsupported_thing_is_listed_at_once():
    nodes = [helper.make_node("Foo", ["x"], ["a"]), helper.make_node("Foo", ["a"], ["b"]),
             helper.make_node("FusedMatMul", ["b", "b"], ["c"], domain="com.microsoft"),
             lstm_node("l", layout=2), helper.make_node("Relu", ["c"], ["y"], bogus=1)]
    model = make_model(nodes, [("x", F), ("w", F), ("r", F)], [("y", F)], 14)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(OnnxLoadError) as info:
        InferenceSession(model.SerializeToString())
    message = str(info.value)
    assert message.startswith("unsupported: ")
    for expected in ("op Foo (2 nodes)", "op com.microsoft.FusedMatMul", "LSTM attribute layout=2",
                     "Relu attribute bogus"):
        assert expected in message


@pytest.mark.parametrize("attrs, expected", [
    (dict(direction="sideways"), "LSTM attribute direction=sideways"),
    (dict(activations=["Sigmoid", "Swish", "Tanh"]), "LSTM activation Swish"),
    (dict(activations=["Sigmoid", "Tanh"]), "LSTM with 2 activations"),
    (dict(clip=-1.0), "LSTM attribute clip=-1.0"),
    (dict(hidden_size=0), "LSTM attribute hidden_size=0"),
    (dict(hidden_size=2.5), "LSTM attribute hidden_size of type FLOAT"),
])
def test_bad_recurrent_attributes(attrs, expected):
    model = make_model([lstm_node(**attrs)], [("x", F), ("w", F), ("r", F)], [("y", F)], 14)
    with pytest.raises(OnnxLoadError, match=expected):
        InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("opset", [6, 99])
def test_unsupported_opset(opset):
    with pytest.raises(OnnxLoadError, match=f"opset {opset}"):
        InferenceSession(relu_model(opset).SerializeToString())


def test_opset_error_also_lists_unknown_ops():
    model = make_model([helper.make_node("Foo", ["x"], ["y"])], [("x", F)], [("y", F)], 6)
    with pytest.raises(OnnxLoadError, match="opset 6.*op Foo"):
        InferenceSession(model.SerializeToString())


def test_control_flow_and_unsupported_types_are_refused():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "b", [], [helper.make_tensor_value_info("z", F, None)])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                       [("c", TensorProto.BOOL), ("x", F)], [("y", F)], 13)
    with pytest.raises(OnnxLoadError, match="op If"):
        InferenceSession(model.SerializeToString())
    strings = make_model([helper.make_node("Identity", ["s"], ["y"])], [("s", TensorProto.STRING)],
                         [("y", TensorProto.STRING)], 13)
    with pytest.raises(OnnxLoadError, match="STRING value 's'"):
        InferenceSession(strings.SerializeToString())
    bf16 = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [("x", F)], [("y", F)], 13,
                      [helper.make_tensor("b", TensorProto.BFLOAT16, [1], [1.0])])
    with pytest.raises(OnnxLoadError, match="BFLOAT16"):
        InferenceSession(bf16.SerializeToString())


@pytest.mark.parametrize("training, refused", [(None, True), (True, True), (False, False)])
def test_dropout_in_training_mode_is_refused(training, refused):
    inits = [] if training is None else [numpy_helper.from_array(np.array(training), "training")]
    inputs = [("x", F)] + ([("training", TensorProto.BOOL)] if training is None else [])
    model = make_model([helper.make_node("Dropout", ["x", "", "training"], ["y"])], inputs, [("y", F)], 13, inits)
    if refused:
        with pytest.raises(OnnxLoadError, match="Dropout in training mode"):
            InferenceSession(model.SerializeToString())
    else:
        x = np.ones((2, 3), np.float32)
        np.testing.assert_array_equal(InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], x)


def test_broken_graphs_are_refused():
    dangling = make_model([helper.make_node("Relu", ["nowhere"], ["y"])], [("x", F)], [("y", F)], 13)
    with pytest.raises(OnnxLoadError, match="'nowhere' .* never produced"):
        InferenceSession(dangling.SerializeToString())
    cycle = make_model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                       [("x", F)], [("a", F)], 13)
    with pytest.raises(OnnxLoadError, match="cycle"):
        InferenceSession(cycle.SerializeToString())
    missing_input = make_model([helper.make_node("MatMul", ["x"], ["y"])], [("x", F)], [("y", F)], 13)
    with pytest.raises(OnnxLoadError, match="MatMul with 1 inputs"):
        InferenceSession(missing_input.SerializeToString())


def test_constant_folding_errors_surface_at_load():
    model = make_model([helper.make_node("Reshape", ["w", "shape"], ["y"])], [], [("y", F)], 13,
                       [numpy_helper.from_array(np.ones(6, np.float32), "w"),
                        numpy_helper.from_array(np.array([4, -1], np.int64), "shape")])
    with pytest.raises(OnnxLoadError, match="Reshape node fails on its constant inputs"):
        InferenceSession(model.SerializeToString())


# -- bytes that are not a model -----------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"not an onnx model at all", bytes(range(256)) * 4,
                                  pickle.dumps({"weights": [1, 2, 3]})],
                         ids=["empty", "zeros", "text", "noise", "pickle"])
def test_garbage_bytes(data):
    with pytest.raises(OnnxLoadError, match="not an ONNX model"):
        InferenceSession(data)


def test_truncated_model():
    data = recurrent_model(RecurrentCase("GRU")).SerializeToString()
    with pytest.raises(OnnxLoadError):
        InferenceSession(data[: len(data) // 2])


def test_paths_that_are_not_model_files(tmp_path):
    with pytest.raises(OnnxLoadError, match="cannot read"):
        InferenceSession(tmp_path / "missing.onnx")
    with pytest.raises(OnnxLoadError, match="not a regular file"):
        InferenceSession(tmp_path)
    with pytest.raises(TypeError):
        InferenceSession(12345)


# -- size limits ------------------------------------------------------------------------------------
def test_file_over_the_limit(tmp_path):
    model = weights_model(np.ones((64, 64), np.float32))
    path = tmp_path / "big.onnx"
    onnx.save_model(model, path)
    with pytest.raises(OnnxLoadError, match="over the limit"):
        InferenceSession(path, max_bytes=4096)
    with pytest.raises(OnnxLoadError, match="over the limit"):
        InferenceSession(model.SerializeToString(), max_bytes=4096)
    assert InferenceSession(path).run(None, {"x": np.ones((1, 64), np.float32)})[0].shape == (1, 64)


def test_tensor_claiming_huge_dims_is_refused_before_decoding():
    claim = TensorProto(name="w", data_type=F, dims=[1 << 20, 1 << 20])  # 4 TiB claimed, no data
    model = weights_model(np.ones((2, 2), np.float32))
    model.graph.initializer[0].CopyFrom(claim)
    with pytest.raises(OnnxLoadError, match="over the limit"):
        InferenceSession(model.SerializeToString())


def test_tensor_grown_from_a_shape_is_capped():
    shape = numpy_helper.from_array(np.array([1 << 16, 1 << 16], np.int64), "shape")
    folded = make_model([helper.make_node("ConstantOfShape", ["shape"], ["y"])], [], [("y", F)], 13, [shape])
    with pytest.raises(OnnxLoadError, match="over the limit"):
        InferenceSession(folded.SerializeToString(), max_bytes=1 << 20)
    fed = make_model([helper.make_node("ConstantOfShape", ["shape"], ["y"])], [("shape", TensorProto.INT64)],
                     [("y", F)], 13)
    session = InferenceSession(fed.SerializeToString(), max_bytes=1 << 20)
    with pytest.raises(ValueError, match="over the limit"):
        session.run(None, {"shape": np.array([1 << 16, 1 << 16], np.int64)})


# -- external data ----------------------------------------------------------------------------------
def save_external(model, folder, location="weights.bin"):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return folder / "model.onnx"


def point_external_data(path, location):
    model = onnx.load_model(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_inside_the_folder_is_read(tmp_path):
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = save_external(weights_model(weights), tmp_path / "m")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(InferenceSession(path).run(None, {"x": x})[0], x @ weights)
    with pytest.raises(OnnxLoadError, match="only read for a model loaded from a path"):
        InferenceSession(path.read_bytes())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin",
                                      "*/_ORT_MEM_ADDR_/*", "absent.bin", ""])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(12, np.float32).tobytes())
    path = save_external(weights_model(np.ones((3, 4), np.float32)), tmp_path / "m")
    point_external_data(path, location)
    with pytest.raises(OnnxLoadError, match="external data"):
        InferenceSession(path)


def test_external_data_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(12, np.float32).tobytes())
    path = save_external(weights_model(np.ones((3, 4), np.float32)), tmp_path / "m")
    (tmp_path / "m" / "link.bin").symlink_to(tmp_path / "secret.bin")
    point_external_data(path, "link.bin")
    with pytest.raises(OnnxLoadError, match="not a file inside the model's folder"):
        InferenceSession(path)


def test_external_data_that_is_too_short_is_refused(tmp_path):
    path = save_external(weights_model(np.ones((3, 4), np.float32)), tmp_path / "m")
    (tmp_path / "m" / "weights.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(OnnxLoadError, match="too short"):
        InferenceSession(path)
