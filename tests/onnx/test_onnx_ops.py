"""The glue ops around a recurrent core (what torch.onnx.export and tf2onnx emit) and the session
API, each checked against onnxruntime.

Every op case runs twice: with its inputs fed at run time, and with them as initializers, so the
load-time constant folding takes the same kernels through the other path. Opset variants cover
the attribute-to-input moves (Squeeze, Unsqueeze, Slice, Split, Reduce*, Clip, Pad) and the
Softmax axis change at 13.
"""
from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx.onnx_reference import ELEM_TYPES, make_model, ort_run

from model_core import native
from model_core.backend import DeviceError, gpu_available
from model_core.onnx import InferenceSession

rng = np.random.default_rng(0)
F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
BIG = np.iinfo(np.int64).max


def f32(*shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


@dataclass
class OpCase:
    op: str
    inputs: list            # arrays, or None for an omitted optional input
    opset: int = 13
    outputs: int = 1
    out_types: tuple = ()   # element types of the outputs; default: the first input's
    attrs: dict = field(default_factory=dict)
    name: str = ""

    def __str__(self):
        return self.name or f"{self.op}-op{self.opset}"


def case(op, *inputs, opset=13, outputs=1, out_types=(), name="", **attrs):
    return OpCase(op, list(inputs), opset, outputs, tuple(out_types), attrs, name)


x34, x234, x2345 = f32(3, 4), f32(2, 3, 4), f32(2, 3, 4, 5)
ties = np.array([[1, 3, 3], [2, 2, 0]], np.float32)
ints = np.array([[-7, 7, -6], [5, -3, 9]], np.int64)
int_divisor = np.array([2, -4, 3], np.int64)

CASES = [
    # indexing and joining
    case("Gather", f32(5, 3), i64(4, 0, 2), opset=7, name="Gather-embedding-op7"),
    case("Gather", x234, i64(-1, 0), axis=1, name="Gather-negative-op13"),
    case("Gather", x234, np.array(2, np.int64), axis=2, name="Gather-scalar-index"),
    case("Slice", x2345, opset=7, starts=[1, 0], ends=[3, -1], axes=[1, 3], name="Slice-attrs-op7"),
    case("Slice", x2345, i64(-1, 4), i64(-BIG, 0), i64(1, 3), i64(-1, -2), opset=10, name="Slice-reverse-op10"),
    case("Slice", x2345, i64(0, 1), i64(BIG, 100), i64(-1, 2), i64(2, 1), opset=13, name="Slice-steps-op13"),
    case("Slice", x2345, i64(1), i64(2), name="Slice-default-axes"),
    case("Concat", x234, f32(2, 1, 4), opset=11, axis=-2, name="Concat-negative-axis"),
    case("Concat", x34, f32(2, 4), opset=7, axis=0),
    case("Split", f32(6, 3), opset=7, outputs=2, split=[2, 4], name="Split-attr-op7"),
    case("Split", f32(2, 6), opset=11, outputs=3, axis=-1, name="Split-equal-op11"),
    case("Split", f32(7, 2), i64(3, 4), opset=13, outputs=2, name="Split-input-op13"),
    case("Split", f32(7, 2), opset=18, outputs=3, num_outputs=3, name="Split-uneven-op18"),
    case("Pad", x34, opset=7, pads=[1, 0, 0, 2], value=1.5, name="Pad-attrs-op7"),
    case("Pad", x34, opset=7, pads=[1, 1, 1, 2], mode="reflect", name="Pad-reflect-op7"),
    case("Pad", x34, i64(0, 2, 1, 0), np.array(-1, np.float32), opset=11, name="Pad-inputs-op11"),
    case("Pad", x234, i64(1, -1, 2, 0), None, i64(0, 2), opset=18, mode="edge", name="Pad-axes-crop-op18"),
    case("Pad", x34, i64(1, 2, 0, 1), opset=19, mode="wrap", name="Pad-wrap-op19"),
    # shapes
    case("Shape", x2345, opset=7, out_types=[I64]),
    case("Shape", x2345, opset=15, start=-3, end=-1, out_types=[I64], name="Shape-start-end-op15"),
    case("Size", x234, out_types=[I64]),
    case("Reshape", x2345, i64(0, -1, 5), opset=7, name="Reshape-zero-minus-one-op7"),
    case("Reshape", x2345, i64(6, 20), opset=14, allowzero=1, name="Reshape-allowzero-op14"),
    case("Flatten", x2345, opset=7, axis=0, name="Flatten-axis0"),
    case("Flatten", x2345, opset=11, axis=-2, name="Flatten-negative-op11"),
    case("Transpose", x234, opset=7, name="Transpose-default"),
    case("Transpose", x2345, perm=[1, 0, 3, 2]),
    case("Squeeze", f32(1, 3, 1, 2), opset=7, axes=[0], name="Squeeze-attr-op7"),
    case("Squeeze", f32(1, 3, 1, 2), opset=11, axes=[-2], name="Squeeze-negative-op11"),
    case("Squeeze", f32(1, 3, 1, 2), i64(0, 2), opset=13, name="Squeeze-input-op13"),
    case("Squeeze", f32(1, 3, 1, 2), opset=13, name="Squeeze-all-op13"),
    case("Unsqueeze", x34, opset=7, axes=[0, 3], name="Unsqueeze-attr-op7"),
    case("Unsqueeze", x34, opset=11, axes=[-1, 1], name="Unsqueeze-negative-op11"),
    case("Unsqueeze", np.array(3.0, np.float32), i64(0), opset=13, name="Unsqueeze-scalar-op13"),
    case("Unsqueeze", x34, i64(-1, 0), opset=21, name="Unsqueeze-input-op21"),
    case("Expand", f32(3, 1), i64(2, 1, 4), opset=8, name="Expand-op8"),
    case("Expand", f32(1, 4), i64(3, 1), name="Expand-bidirectional"),
    case("Tile", x34, i64(2, 1)),
    # creation and types
    case("Constant", opset=7, value=numpy_helper.from_array(f32(2, 3)), name="Constant-tensor-op7"),
    case("Constant", opset=12, value_floats=[1.5, -2.0], out_types=[F], name="Constant-floats-op12"),
    case("Constant", opset=13, value_int=7, out_types=[I64], name="Constant-int-op13"),
    case("ConstantOfShape", i64(2, 3), opset=9, out_types=[F], name="ConstantOfShape-default"),
    case("ConstantOfShape", i64(4), value=numpy_helper.from_array(np.array([5], np.int64)), out_types=[I64],
         name="ConstantOfShape-int64"),
    case("Range", np.array(1.0, np.float32), np.array(4.2, np.float32), np.array(0.7, np.float32), opset=11),
    case("Range", np.array(10, np.int64), np.array(-3, np.int64), np.array(-4, np.int64), name="Range-int-negative"),
    case("Cast", f32(3, 4, low=-9, high=9), opset=7, to=TensorProto.INT32, out_types=[TensorProto.INT32],
         name="Cast-float-int32-op7"),
    case("Cast", f32(3, 4), to=TensorProto.BOOL, out_types=[B], name="Cast-bool"),
    case("Cast", ints, opset=19, to=TensorProto.FLOAT16, out_types=[TensorProto.FLOAT16], name="Cast-fp16-op19"),
    case("CastLike", ints, f32(1), opset=15, out_types=[F]),
    case("Identity", x34),
    case("Dropout", x34, opset=7, outputs=2, ratio=0.3, name="Dropout-mask-op7"),
    case("Dropout", x34, opset=10, outputs=2, out_types=[F, B], name="Dropout-mask-op10"),
    case("Dropout", x34, np.array(0.2, np.float32), opset=12, outputs=2, out_types=[F, B], name="Dropout-mask-op12"),
    case("Dropout", x34, opset=13),
    # dense layers and heads
    case("MatMul", x34, f32(4, 5)),
    case("MatMul", x234, f32(4, 2), opset=9, name="MatMul-batched"),
    case("MatMul", f32(4), f32(2, 4, 3), name="MatMul-vector"),
    case("Gemm", x34, f32(5, 4), f32(5), opset=7, transB=1, name="Gemm-transB-op7"),
    case("Gemm", f32(4, 3), f32(4, 5), None, opset=11, transA=1, alpha=0.5, name="Gemm-no-C-op11"),
    case("Gemm", x34, f32(4, 5), f32(3, 5), alpha=2.0, beta=-0.5),
    case("Softmax", x234, opset=11, name="Softmax-coerced-op11"),
    case("Softmax", x234, opset=11, axis=0, name="Softmax-axis0-op11"),
    case("Softmax", x234, opset=13, axis=1, name="Softmax-axis1-op13"),
    case("Softmax", x234, opset=13, name="Softmax-default-op13"),
    case("LogSoftmax", x2345, opset=7, axis=2, name="LogSoftmax-coerced-op7"),
    case("LogSoftmax", x2345, opset=13, axis=-2),
    # reductions
    case("ReduceSum", x234, opset=11, axes=[0, -1], name="ReduceSum-attr-op11"),
    case("ReduceSum", x234, i64(1), opset=13, keepdims=0, name="ReduceSum-input-op13"),
    case("ReduceSum", x234, opset=13, name="ReduceSum-all-op13"),
    case("ReduceSum", x234, i64(), opset=13, noop_with_empty_axes=1, name="ReduceSum-noop-op13"),
    case("ReduceMean", x234, opset=13, axes=[1], keepdims=0, name="ReduceMean-attr-op13"),
    case("ReduceMean", x234, i64(-1, 0), opset=18, name="ReduceMean-input-op18"),
    case("ReduceMax", x234, opset=7, name="ReduceMax-all-op7"),
    case("ReduceMax", x234, i64(2), opset=20, keepdims=0, name="ReduceMax-input-op20"),
    case("ReduceMin", x234, opset=13, axes=[1]),
    case("ReduceProd", x234, i64(0), opset=18),
    case("ReduceSumSquare", x234, opset=13, axes=[2]),
    case("ArgMax", ties, opset=7, axis=1, out_types=[I64], name="ArgMax-op7"),
    case("ArgMax", ties, opset=12, axis=1, keepdims=0, select_last_index=1, out_types=[I64], name="ArgMax-last"),
    case("ArgMin", ties, opset=13, axis=0, out_types=[I64]),
    # elementwise
    case("Add", x234, f32(4), opset=7),
    case("Sub", x234, f32(3, 1)),
    case("Mul", x234, f32(2, 1, 1), opset=14),
    case("Div", x234, f32(4, low=0.5)),
    case("Div", ints, int_divisor, name="Div-int-truncates"),
    case("Pow", f32(3, 4, low=0.1), f32(4), opset=7),
    case("Pow", f32(3, 4), i64(2, 3, 0, 1), opset=15, name="Pow-int-exponent-op15"),
    case("Max", x34, f32(4), f32(3, 1), opset=8),
    case("Min", x34, f32(4), opset=13),
    case("Sum", x34, f32(4), f32(3, 4), opset=8),
    case("Mean", x34, f32(3, 4), opset=13),
    case("Clip", x34, opset=7, min=-0.5, max=0.7, name="Clip-attrs-op7"),
    case("Clip", x34, np.array(-0.2, np.float32), opset=11, name="Clip-min-only-op11"),
    case("Clip", x34, None, np.array(0.1, np.float32), opset=13, name="Clip-max-only-op13"),
    case("Clip", ints, np.array(-5, np.int64), np.array(6, np.int64), opset=13, name="Clip-int-op13"),
    case("Where", x34 > 0, x34, f32(4), opset=9, out_types=[F]),
    case("Where", x34 > 0, np.arange(3).reshape(3, 1), i64(7), opset=16, out_types=[I64], name="Where-int-op16"),
    case("Equal", ints, i64(5), opset=11, out_types=[B]),
    case("Equal", x34, x34 * (x34 > 0), opset=19, out_types=[B], name="Equal-float-op19"),
    case("Less", x34, f32(4), opset=9, out_types=[B]),
    case("Greater", ints, int_divisor, out_types=[B]),
    case("LessOrEqual", x34, f32(1), opset=12, out_types=[B]),
    case("GreaterOrEqual", ints, i64(5), opset=16, out_types=[B]),
    case("Not", x34 > 0, opset=7),
    case("And", x34 > 0, x34 < 1, opset=7),
    case("Or", x34 > 1, np.array([True, False, False, True])),
    case("Xor", x34 > 0, x34 > -1),
]
UNARY = ["Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Sign", "Round", "Relu", "Tanh",
         "Sigmoid", "Softsign", "Softplus", "Erf", "LeakyRelu", "Elu", "HardSigmoid", "ThresholdedRelu", "Selu"]
UNARY_OPSET = {"Round": 11, "Sign": 9, "ThresholdedRelu": 10, "Erf": 13}
POSITIVE = {"Log", "Sqrt"}
CASES += [case(op, f32(3, 5, low=0.1, high=3) if op in POSITIVE else f32(3, 5) * 3, opset=UNARY_OPSET.get(op, 7))
          for op in UNARY]
CASES += [
    case("LeakyRelu", x34, opset=16, alpha=0.3, name="LeakyRelu-alpha-op16"),
    case("Elu", x34, alpha=0.4, name="Elu-alpha"),
    case("HardSigmoid", x34, alpha=0.3, beta=0.6, name="HardSigmoid-alpha-beta"),
    case("ThresholdedRelu", x34, opset=10, alpha=0.5, name="ThresholdedRelu-alpha"),
    case("PRelu", x34, f32(4), opset=9),
    case("Gelu", x34, opset=20),
    case("Gelu", x34, opset=20, approximate="tanh", name="Gelu-tanh-op20"),
    case("Round", np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4], np.float32), opset=11, name="Round-half-even"),
]


def model_for(c: OpCase, folded: bool):
    names = [f"in{k}" if x is not None else "" for k, x in enumerate(c.inputs)]
    outputs = [f"out{k}" for k in range(c.outputs)]
    node = helper.make_node(c.op, names, outputs, **c.attrs)
    default = ELEM_TYPES[c.inputs[0].dtype] if c.inputs else F
    types = list(c.out_types) + [default] * (c.outputs - len(c.out_types))
    present = [(n, x) for n, x in zip(names, c.inputs) if x is not None]
    if folded:
        inits = [numpy_helper.from_array(x, n) for n, x in present]
        return make_model([node], [], list(zip(outputs, types)), c.opset, inits), {}
    inputs = [(n, ELEM_TYPES[x.dtype]) for n, x in present]
    return make_model([node], inputs, list(zip(outputs, types)), c.opset), dict(present)


@pytest.mark.parametrize("folded", [False, True], ids=["fed", "folded"])
@pytest.mark.parametrize("c", CASES, ids=str)
def test_op_matches_onnxruntime(ort, device, c, folded):
    model, feed = model_for(c, folded)
    expected = ort_run(ort, model, feed)
    got = InferenceSession(model.SerializeToString(), device=device).run(None, feed)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert isinstance(g, np.ndarray)
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


# -- the session API, as onnxruntime presents it ----------------------------------------------------
def api_model():
    x = helper.make_tensor_value_info("x", F, ["batch", 3, None])
    scale = helper.make_tensor_value_info("scale", F, [3, 1])
    y = helper.make_tensor_value_info("y", F, None)
    mask = helper.make_tensor_value_info("mask", B, ["batch", 3, None])
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"]), helper.make_node("Greater", ["y", "zero"], ["mask"]),
             helper.make_node("Identity", ["x"], ["x_copy"])]
    graph = helper.make_graph(nodes, "api", [x, scale], [y, mask, helper.make_tensor_value_info("x_copy", F, None)],
                              initializer=[numpy_helper.from_array(np.ones((3, 1), np.float32), "scale"),
                                           numpy_helper.from_array(np.zeros((), np.float32), "zero")],
                              doc_string="graph doc")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                              producer_name="tests", producer_version="1", doc_string="model doc", model_version=4)
    helper.set_model_props(model, {"author": "tests"})
    return model.SerializeToString()


def test_inputs_outputs_and_metadata_match_onnxruntime(ort):
    ours, theirs = InferenceSession(api_model()), ort.InferenceSession(api_model())
    for mine, ref in [*zip(ours.get_inputs(), theirs.get_inputs()), *zip(ours.get_outputs(), theirs.get_outputs()),
                      *zip(ours.get_overridable_initializers(), theirs.get_overridable_initializers())]:
        assert (mine.name, mine.shape, mine.type) == (ref.name, ref.shape, ref.type)
    assert len(ours.get_inputs()) == len(theirs.get_inputs()) == 1
    meta, ref = ours.get_modelmeta(), theirs.get_modelmeta()
    for attr in ("producer_name", "graph_name", "domain", "description", "graph_description", "version",
                 "custom_metadata_map"):
        assert getattr(meta, attr) == getattr(ref, attr), attr


def test_run_selects_outputs_and_overrides_initializers(ort):
    session, ref = InferenceSession(api_model()), ort.InferenceSession(api_model())
    x = f32(2, 3, 5)
    scale = np.array([[2.0], [-1.0], [0.5]], np.float32)
    for names in (None, [], ["mask"], ["x_copy", "y"]):
        for feed in ({"x": x}, {"x": x, "scale": scale}):
            for g, e in zip(session.run(names, feed), ref.run(names, feed)):
                np.testing.assert_array_equal(g, e)


def test_outputs_belong_to_the_caller():
    session = InferenceSession(api_model())
    x = f32(1, 3, 2)
    y, _, x_copy = session.run(None, {"x": x})
    assert not np.shares_memory(x_copy, x)
    y[...] = 99  # writing to a result must not leak into the session or the next call
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], x)


def test_one_value_as_two_outputs_gives_two_arrays():
    # Identity hands its input on as it is, so both outputs are one array inside the plan
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["r2"])]
    graph = helper.make_graph(nodes, "twice", [helper.make_tensor_value_info("x", F, [2, 3])],
                              [helper.make_tensor_value_info(n, F, None) for n in ("r", "r2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    r, r2 = InferenceSession(model.SerializeToString()).run(None, {"x": f32(2, 3)})
    assert not np.shares_memory(r, r2)
    r[...] = -1
    assert (r2 >= 0).all()


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_an_empty_batch_runs_and_gives_empty_outputs(op, direction):
    """N = 0 sequences (the kernels once divided by a zero row chunk and killed the process with
    SIGFPE); onnxruntime itself aborts on this input, so the shapes are checked against the spec."""
    T, I, H = 5, 3, 8
    D, G = (2 if direction == "bidirectional" else 1), {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("W", (D, G * H, I)), ("R", (D, G * H, H)), ("B", (D, 2 * G * H)))]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["X", "W", "R", "B"], outputs, hidden_size=H, direction=direction)
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("X", F, [T, "N", I])],
                              [helper.make_tensor_value_info(n, F, None) for n in outputs], initializer=inits)
    session = InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                                                 ir_version=7).SerializeToString())
    got = session.run(None, {"X": np.zeros((T, 0, I), np.float32)})
    assert [g.shape for g in got] == [(T, D, 0, H)] + [(D, 0, H)] * (len(outputs) - 1)
    assert session.run(None, {"X": np.ones((T, 2, I), np.float32)})[0].shape == (T, D, 2, H)   # still serving


@pytest.mark.skipif(not native.AVAILABLE, reason="the native kernels are not built here")
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_y_reaches_the_caller_uncopied(op):
    """The kernels write Y into a buffer of their own (a view starting on a cache line): the session
    hands it over as it is. Copying it cost a second Y and fresh pages every call (B=32, T=100, H=256:
    1,500 minor page faults a call, 1.2x the time of the same kernel through nn.LSTM)."""
    T, N, I, H = 6, 4, 3, 8
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("W", (1, G * H, I)), ("R", (1, G * H, H)), ("B", (1, 2 * G * H)))]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                            **({"linear_before_reset": 1} if op == "GRU" else {}))
    graph = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("X", F, [T, N, I])],
                              [helper.make_tensor_value_info(n, F, None) for n in ("Y", "Y_h")], initializer=inits)
    session = InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)],
                                                 ir_version=7).SerializeToString())
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, y_h = session.run(None, {"X": x})
    assert y.base is not None and y.ctypes.data % 64 == 0       # the kernel's buffer, not a copy of it
    np.testing.assert_array_equal(y[-1, 0], y_h[0])
    want = y.copy()
    y[...] = 7                                                  # the caller's to keep: the next call is untouched
    np.testing.assert_array_equal(session.run(["Y"], {"X": x})[0], want)


def test_feed_errors_are_clear():
    session = InferenceSession(api_model())
    with pytest.raises(ValueError, match="Invalid input name"):
        session.run(None, {"x": f32(1, 3, 2), "nope": f32(1)})
    with pytest.raises(ValueError, match="missing"):
        session.run(None, {})
    with pytest.raises(ValueError, match=r"Unexpected input data type.*tensor\(double\)"):
        session.run(None, {"x": np.zeros((1, 3, 2))})
    with pytest.raises(ValueError, match="Invalid rank"):
        session.run(None, {"x": f32(3, 2)})
    with pytest.raises(ValueError, match=r"invalid dimensions for input: x \(index 1: got 4, expected 3\)"):
        session.run(None, {"x": f32(1, 4, 2)})
    with pytest.raises(ValueError, match="Invalid output name"):
        session.run(["z"], {"x": f32(1, 3, 2)})


def test_providers_map_to_devices():
    assert InferenceSession(api_model(), providers=["CPUExecutionProvider"]).get_providers() == ["CPUExecutionProvider"]
    with pytest.warns(UserWarning, match="AzureExecutionProvider"):
        InferenceSession(api_model(), providers=["AzureExecutionProvider", "CPUExecutionProvider"])
    fallback = InferenceSession(api_model(), providers=[("CUDAExecutionProvider", {"device_id": 0}),
                                                        "CPUExecutionProvider"])
    assert fallback.device == ("gpu" if gpu_available() else "cpu")
    if not gpu_available():
        with pytest.raises(DeviceError):
            InferenceSession(api_model(), providers=["CUDAExecutionProvider"])
        with pytest.raises(DeviceError):
            InferenceSession(api_model(), device="gpu")
    with pytest.raises(ValueError, match="either providers or device"):
        InferenceSession(api_model(), providers=["CPUExecutionProvider"], device="auto")
