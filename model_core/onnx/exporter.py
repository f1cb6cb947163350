"""``export(model, path)``: a ``SequenceModel`` as one standard ONNX graph that onnxruntime runs as is.

Ops: Gather (from the embedding, or from an identity for one-hot inputs), one LSTM/GRU/RNN op per
layer (directions merged with Transpose/Reshape), a Where that keeps an empty sequence's state,
Gemm or MatMul+Add for the head, Softmax or Sigmoid. ``INTERFACE`` (also the graph's doc_string)
lists the inputs and outputs; the ``metadata_props`` carry the task, labels, vocab and our config JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_core import __version__
from model_core.backend import to_numpy
from model_core.onnx.export_weights import layer_weights

INTERFACE = """\
Time-major like our engine; time and batch are symbolic dims.

inputs
  input_ids      int64 (time, batch)              token models (embedding or onehot encoding)
  features       float32 (time, batch, I)         feature models
  sequence_lens  int32 (batch,)                   valid steps per sequence, in [0, time]; past a
                                                  sequence's end its state is carried through
  h0             float32 (layers*dirs, batch, H)  initial hidden state (zeros to start afresh)
  c0             float32 (layers*dirs, batch, H)  LSTM only: initial cell state
outputs
  logits         classify: (batch, C) from the top layer's final state (the forward direction at
                 each sequence's last valid step, then the reverse direction's, as our engine reads it);
                 seq2seq/lm: (time, batch, C), steps past a sequence's end holding the head's bias
  probabilities  softmax (output "logits") or sigmoid (output "binary") of logits; none for "regression"
  hn, cn         final states shaped like h0, c0: feed them back as the next chunk's h0, c0
"""

DEFAULT_OPSET = 18
MIN_OPSET = 14          # LSTM/GRU/RNN-14 and Squeeze with axes as an input
FORMAT = "rnn-serve-onnx"
FORMAT_VERSION = 1
_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def export(model, path, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Write ``model`` to ``path`` as ONNX (checked with ``full_check``) and return the proto."""
    proto = to_onnx(model, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return proto


def to_onnx(model, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model for ``model``, in memory. Float64 models are exported in float32: the one
    dtype every runtime's recurrent kernels take (onnxruntime has no float64 RNN)."""
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {max_opset}], got {opset}")
    c = model.config
    g = _GraphBuilder()
    x = _encode(g, model)                                                    # (T, B, I')
    y, top_h = _recurrent_stack(g, model, x)
    head_w, head_b = (to_numpy(model.head.parameters()[k]).astype(np.float32) for k in ("weight", "bias"))
    if c.task == "classify":
        feats = _merge_directions(g, top_h, model.rnn.num_directions, time_axis=False)     # (B, D*H)
        g.node("Gemm", [feats, g.const("head.weight", head_w), g.const("head.bias", head_b)], ["logits"], transB=1)
    else:
        proj = g.node("MatMul", [y, g.const("head.weight_t", np.ascontiguousarray(head_w.T))])  # (T, B, C)
        g.node("Add", [proj, g.const("head.bias", head_b)], ["logits"])
    if c.output == "logits":
        g.node("Softmax", ["logits"], ["probabilities"], axis=-1)
    elif c.output == "binary":
        g.node("Sigmoid", ["logits"], ["probabilities"])

    graph = helper.make_graph(g.nodes, f"{c.task}_{c.cell}", _inputs(model), _outputs(model),
                              initializer=g.initializers, doc_string=INTERFACE)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="rnn-serve model_core.onnx", producer_version=__version__,
                              doc_string=repr(model))
    helper.set_model_props(proto, metadata(c))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def metadata(config) -> dict[str, str]:
    """``metadata_props``: what a model card or the service needs without our checkpoint."""
    c = config
    return {
        "format": FORMAT, "format_version": str(FORMAT_VERSION),
        "task": c.task, "cell": c.cell, "input_encoding": c.input_encoding, "output": c.output,
        "layout": "time-major",
        "labels": json.dumps(list(c.labels) if c.labels is not None else None),
        "vocab": json.dumps(list(c.vocab) if c.vocab is not None else None),
        "state": json.dumps(dict(state_names(c))),      # state input -> the output to feed back into it
        "config": c.to_json(),
    }


def input_name(config) -> str:
    return "input_ids" if config.uses_tokens else "features"


def state_names(config) -> list[tuple[str, str]]:
    """(input, output) pairs for the recurrent state, in ``model.init_state`` order."""
    return [("h0", "hn"), ("c0", "cn")] if config.cell == "lstm" else [("h0", "hn")]


def output_names(config) -> list[str]:
    acts = ["probabilities"] if config.output != "regression" else []
    return ["logits", *acts, *(out for _, out in state_names(config))]


# -- interface ---------------------------------------------------------------------------------
def _state_shape(model):
    rnn = model.rnn
    return [rnn.num_layers * rnn.num_directions, "batch", rnn.hidden_size]


def _inputs(model):
    c, f32 = model.config, TensorProto.FLOAT
    if c.uses_tokens:
        data = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["time", "batch"],
                                             f"token ids in [0, {c.input_size}), time-major")
    else:
        data = helper.make_tensor_value_info("features", f32, ["time", "batch", c.input_size], "time-major")
    lens = helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"],
                                         "valid steps per sequence, in [0, time]; the state is carried through the rest")
    states = [helper.make_tensor_value_info(name, f32, _state_shape(model),
                                            f"initial {'cell' if name == 'c0' else 'hidden'} state "
                                            "(layers*directions, batch, hidden); zeros to start afresh")
              for name, _ in state_names(c)]
    return [data, lens, *states]


def _outputs(model):
    c, f32 = model.config, TensorProto.FLOAT
    shape = ["batch", c.output_size] if c.task == "classify" else ["time", "batch", c.output_size]
    where = "at each sequence's last valid step" if c.task == "classify" else "per step"
    outs = [helper.make_tensor_value_info("logits", f32, shape, f"raw head outputs {where}")]
    if c.output != "regression":
        act = "softmax" if c.output == "logits" else "sigmoid"
        outs.append(helper.make_tensor_value_info("probabilities", f32, shape, f"{act} of logits"))
    for inp, out in state_names(c):
        outs.append(helper.make_tensor_value_info(out, f32, _state_shape(model), f"final state: the next chunk's {inp}"))
    return outs


# -- graph pieces ------------------------------------------------------------------------------
class _GraphBuilder:
    """Collects nodes and initializers; ``node`` names outputs it is not given."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs, outputs=None, **attrs):
        """Add one node; returns its single output's name, or the list of names."""
        name = f"{op_type}_{len(self.nodes)}"
        outputs = outputs or [name.lower()]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def _encode(g: _GraphBuilder, model) -> str:
    c = model.config
    if c.input_encoding == "embedding":
        table = to_numpy(model.embedding.parameters()["weight"]).astype(np.float32)          # (V, E)
        return g.node("Gather", [g.const("embedding.weight", table), "input_ids"], axis=0)  # (T, B, E)
    if c.input_encoding == "onehot":
        # rows of an identity, as our engine encodes: unlike OneHot, an id out of range is an error
        # rather than a zero row, and every runtime (our importer included) has Gather
        eye = g.const("onehot.identity", np.eye(c.input_size, dtype=np.float32))           # (V, V)
        return g.node("Gather", [eye, "input_ids"], axis=0)                                # (T, B, V)
    return "features"


def _recurrent_stack(g: _GraphBuilder, model, x: str) -> tuple[str | None, str]:
    """One ONNX op per layer, writing ``hn`` (and ``cn``). Returns the top layer's outputs
    (T, B, D*H) (None for classifiers, which read only the final state) and its final hidden
    state (D, B, H)."""
    c, rnn = model.config, model.rnn
    L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
    lstm = c.cell == "lstm"
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if c.cell == "gru":
        attrs["linear_before_reset"] = 1                      # PyTorch's GRU: r multiplies (h R_h + Rb_h)
    if c.cell == "rnn":
        attrs["activations"] = [c.nonlinearity.capitalize()] * D
    finals: list[list[str]] = [[], []]                        # per layer: Y_h, Y_c, each (D, B, H)
    y = None
    for layer in range(L):
        w = layer_weights(rnn, c.cell, layer)
        p = f"{c.cell}.l{layer}"
        ins = [x, g.const(f"{p}.W", w["W"]), g.const(f"{p}.R", w["R"]),
               g.const(f"{p}.B", w["B"]) if w["B"] is not None else "", "sequence_lens",
               _layer_slice(g, "h0", layer, D, L)]
        if lstm:
            ins.append(_layer_slice(g, "c0", layer, D, L))      # peepholes P stay absent
        y_name = "" if layer == L - 1 and c.task == "classify" else f"{p}.Y"  # (T, D, B, H)
        outs = [y_name, f"{p}.Y_h"] + ([f"{p}.Y_c"] if lstm else [])
        g.node(_OPS[c.cell], ins, outs, **attrs)
        for k, name in enumerate(outs[1:]):
            finals[k].append(name)
        if y_name:
            y = x = _merge_directions(g, y_name, D, time_axis=True)         # (T, B, D*H)
    # onnxruntime zeroes a zero-length sequence's state; our engine carries it through unchanged
    zero = g.const("sequence_lens.zero", np.array(0, dtype=np.int32))
    nonempty = g.node("Greater", ["sequence_lens", zero])                                 # (B,)
    nonempty = g.node("Unsqueeze", [nonempty, g.const("state.batch_axes", np.array([0, 2], dtype=np.int64))])
    for (initial, final), per_layer in zip(state_names(c), finals):
        stacked = g.node("Concat", per_layer, axis=0) if L > 1 else per_layer[0]       # (L*D, B, H)
        g.node("Where", [nonempty, stacked, initial], [final])
    return y, _layer_slice(g, "hn", L - 1, D, L)


def _layer_slice(g: _GraphBuilder, state: str, layer: int, D: int, L: int) -> str:
    """Layer ``layer``'s (D, B, H) rows of a (L*D, B, H) state input."""
    if L == 1:
        return state
    bounds = [g.const(f"{state}.l{layer}.{k}", np.array([v], dtype=np.int64))
              for k, v in (("start", layer * D), ("end", (layer + 1) * D), ("axis", 0))]
    return g.node("Slice", [state, *bounds], [f"{state}.l{layer}"])


def _merge_directions(g: _GraphBuilder, t: str, D: int, time_axis: bool) -> str:
    """(T, D, B, H) -> (T, B, D*H) with ``time_axis``, else (D, B, H) -> (B, D*H): forward
    direction first, then reverse, as our engine concatenates them."""
    lead = [0] if time_axis else []
    n = len(lead)
    if D == 1:
        return g.node("Squeeze", [t, g.const(f"{t}.squeeze_axes", np.array([n], dtype=np.int64))])
    perm = [*lead, n + 1, n, n + 2]                                           # swap D and B
    moved = g.node("Transpose", [t], perm=perm)                                # (..., B, D, H)
    shape = g.const(f"{t}.merged_shape", np.array([*([0] * (n + 1)), -1], dtype=np.int64))
    return g.node("Reshape", [moved, shape])                                   # (..., B, D*H)

