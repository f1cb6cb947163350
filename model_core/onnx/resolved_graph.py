"""A model card checked against its graph: dtypes, ranks, fixed dimensions, state shapes, and the
``ModelConfig`` the service reads (sizes from the graph's recurrent ops and state tensors).

Everything that can be checked before running is checked here, and every problem names the card
field to fix (``BindingError``). ``sequence_model`` then runs one probe through the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto

from model_core.config import ModelConfig
from model_core.onnx.graph_binding import BindingError, GraphBinding
from model_core.onnx.dtypes import NUMPY_DTYPES

RECURRENT_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: dtype (None when not a supported tensor) and shape (entries are
    ints, strings for symbolic dims, or None; None for the whole shape when undeclared)."""
    name: str
    dtype: np.dtype | None
    shape: tuple | None


@dataclass(frozen=True)
class StateLayout:
    """One state as the graph holds it and as the engine does: (S, B, H) <-> batch at ``batch_axis``."""
    input: str
    output: str
    batch_axis: int
    size: tuple[int, int]       # (S, H): layers*directions and hidden, the non-batch dims in order
    dtype: np.dtype


@dataclass(frozen=True)
class ResolvedGraph:
    """What running the graph needs, resolved once at load time."""
    binding: GraphBinding
    config: ModelConfig
    input_dtype: np.dtype
    lengths_dtype: np.dtype | None
    states: tuple[StateLayout, ...]
    max_batch: int | None       # 1 when the graph fixes its batch size at 1
    one_step: bool              # the graph fixes its time size at 1: it is run step by step
    opset: int
    num_parameters: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def resolve(model: ModelProto, binding: GraphBinding, opset: int) -> ResolvedGraph:
    """Check ``binding`` against ``model``'s graph."""
    b, graph = binding, model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name: _tensor(v) for v in graph.input if v.name not in initializers}
    outputs = {v.name: _tensor(v) for v in graph.output}
    time_axis, batch_axis = (0, 1) if b.layout == "time_major" else (1, 0)

    x = _bound(inputs, b.input, "input.name", "input")
    if b.uses_tokens and (x.dtype is None or x.dtype.kind not in "iu"):
        raise BindingError("encoding", f"a vocab model's input {b.input!r} must hold integer token ids, the graph "
                                       f"declares {x.dtype}")
    if not b.uses_tokens and (x.dtype is None or x.dtype.kind != "f"):
        raise BindingError("encoding", f"a features model's input {b.input!r} must be floating point, the graph "
                                       f"declares {x.dtype}")
    _rank(x, 2 if b.uses_tokens else 3, "input.name", "(time, batch)" if b.uses_tokens else "(time, batch, features)")
    if not b.uses_tokens and isinstance(_dim(x, 2), int) and _dim(x, 2) != b.input_size:
        raise BindingError("encoding.size", f"is {b.input_size} but the graph's {b.input!r} has {_dim(x, 2)} features")
    max_batch = _fixed_batch(_dim(x, batch_axis), f"input {b.input!r}")
    time = _dim(x, time_axis)
    if isinstance(time, int) and time != 1:
        raise BindingError("input.layout", f"the graph fixes the time dimension of {b.input!r} at {time}; export it "
                                           "with a dynamic time axis (or as a one-step graph)")

    lengths_dtype = None
    if b.lengths:
        lens = _bound(inputs, b.lengths, "lengths", "input")
        if lens.dtype is None or lens.dtype.kind not in "iu":
            raise BindingError("lengths", f"{b.lengths!r} must be an integer input, the graph declares {lens.dtype}")
        _rank(lens, 1, "lengths", "(batch,)")
        lengths_dtype = lens.dtype

    y = _bound(outputs, b.output, "output.name", "output")
    if y.dtype is None or y.dtype.kind != "f":
        raise BindingError("output.name", f"{b.output!r} must be a floating-point output, it is {y.dtype}")
    _rank(y, 3 if b.per_step else 2, "output.per_step",
          "(time, batch, classes)" if b.per_step else "(batch, classes): the last step only")

    states = tuple(_state(inputs, outputs, s, k) for k, s in enumerate(b.states))
    if len({(s.size, s.dtype) for s in states}) != 1:
        raise BindingError("state", "every state must have the same (layers*directions, hidden) size and dtype, got "
                                    + ", ".join(f"{s.input} {s.size} {s.dtype}" for s in states))
    for s in b.states:
        state_batch = _fixed_batch(_dim(inputs[s.input], s.batch_axis), f"state {s.input!r}")
        if state_batch is not None:
            max_batch = state_batch
    unbound = sorted(set(inputs) - {b.input, b.lengths, *(s.input for s in b.states)})
    if unbound:
        # a float input of rank 3 is a recurrent state the card left out: blame 'state', not 'input'
        stateful = all(inputs[n].dtype is not None and inputs[n].dtype.kind == "f" and inputs[n].shape is not None
                       and len(inputs[n].shape) == 3 for n in unbound)
        raise BindingError("state" if stateful else "input",
                           f"the graph also needs inputs {unbound}, which the card does not bind")

    width = _dim(y, 2 if b.per_step else 1)
    config = b.config or _derive_config(model, b, states[0].size, width if isinstance(width, int) else None)
    if isinstance(width, int) and width != config.output_size:
        raise BindingError("output.name", f"{b.output!r} has {width} classes, the card implies {config.output_size}")
    return ResolvedGraph(b, config, x.dtype, lengths_dtype, states, max_batch, time == 1, opset,
                       _count_parameters(model), tuple(inputs.values()), tuple(outputs.values()))


def _derive_config(model: ModelProto, b: GraphBinding, state_size: tuple[int, int], output_size: int | None):
    """The ModelConfig a card implies: cell and directions from the graph's recurrent ops, layers and
    hidden size from the state, classes from the output, labels or vocabulary."""
    cells, bidirectional, rnn_input, relu = _recurrent_ops(model)
    cell = b.cell or (cells[0] if len(set(cells)) == 1 else None)
    if cell is None:
        found = sorted(set(cells)) or "no LSTM, GRU or RNN node"
        raise BindingError("cell", f"cannot tell the cell from the graph ({found}); declare it")
    S, H = state_size
    D = 2 if bidirectional else 1
    if S % D:
        raise BindingError("state", f"{S} state rows cannot hold {D} directions per layer")
    if output_size is None:
        output_size = (len(b.labels) if b.labels else b.input_size if b.task == "lm" else None)
    if output_size is None:
        raise BindingError("labels", f"the graph does not declare the width of {b.output!r}; list the labels")
    if b.labels is not None and len(b.labels) != output_size:
        raise BindingError("labels", f"{len(b.labels)} labels for an output of {output_size} classes")
    encoding = "embedding" if b.uses_tokens else "features"
    try:
        return ModelConfig(
            cell=cell, task=b.task, input_size=b.input_size, hidden_size=H, output_size=output_size,
            num_layers=S // D, input_encoding=encoding,
            embedding_dim=(rnn_input or b.input_size) if b.uses_tokens else None,
            nonlinearity="relu" if relu else "tanh", bidirectional=bidirectional, output=b.output_kind,
            vocab=b.vocab, labels=b.labels, metadata={"format": "onnx", "binding": b.source})
    except ValueError as exc:
        raise BindingError("task", str(exc).removeprefix("invalid model config: ")) from None


def _recurrent_ops(model: ModelProto):
    """(cells, any bidirectional, first layer's input width or None, RNN with Relu)."""
    weights = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    attrs = [{a.name: a for a in n.attribute} for n in nodes]
    bidirectional = any(a.get("direction") is not None and a["direction"].s == b"bidirectional" for a in attrs)
    relu = any(n.op_type == "RNN" and a.get("activations") is not None and a["activations"].strings[0].lower() == b"relu"
               for n, a in zip(nodes, attrs))
    rnn_input = None
    if nodes and len(nodes[0].input) > 1 and nodes[0].input[1] in weights:
        dims = weights[nodes[0].input[1]].dims                  # W (D, G*H, I)
        rnn_input = int(dims[-1]) if len(dims) == 3 else None
    return [RECURRENT_OPS[n.op_type] for n in nodes], bidirectional, rnn_input, relu


def _state(inputs, outputs, s, k) -> StateLayout:
    field = f"state[{k}]"
    fed = _bound(inputs, s.input, f"{field}.input", "input")
    read = _bound(outputs, s.output, f"{field}.output", "output")
    if fed.dtype not in (np.float32, np.float64) or read.dtype != fed.dtype:
        raise BindingError(field, f"states must be float32 or float64 and the same in and out; {s.input!r} is "
                                  f"{fed.dtype}, {s.output!r} is {read.dtype}")
    if s.shape is not None:
        shape = tuple(s.shape)
        if len(shape) != 3:
            raise BindingError(f"{field}.shape", f"needs 3 entries, got {list(shape)}")
        if fed.shape is not None and len(fed.shape) == 3 and any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(shape, fed.shape)):
            raise BindingError(f"{field}.shape", f"declares {list(shape)} but the graph declares {list(fed.shape)} "
                                                 f"for {s.input!r}")
    else:
        if fed.shape is None:
            raise BindingError(f"{field}.shape", f"the graph does not declare the shape of {s.input!r}; declare it")
        shape = fed.shape
    if len(shape) != 3:
        raise BindingError(field, f"{s.input!r} has rank {len(shape)}; states are (layers*directions, batch, hidden) "
                                  "in some axis order")
    size = tuple(d for axis, d in enumerate(shape) if axis != s.batch_axis)
    symbolic = [axis for axis, d in enumerate(shape) if not (isinstance(d, int) and d > 0)]
    if s.shape is None and len(symbolic) == 1 and symbolic[0] != s.batch_axis:
        raise BindingError(f"{field}.batch_axis", f"{s.input!r} is {list(shape)}: its batch dimension is axis "
                                                  f"{symbolic[0]}, not {s.batch_axis}")
    if not all(isinstance(d, int) and d > 0 for d in size):
        raise BindingError(f"{field}.shape", f"the non-batch dimensions of {s.input!r} must be fixed, got "
                                             f"{list(shape)}; declare them")
    return StateLayout(s.input, s.output, s.batch_axis, size, fed.dtype)


def _bound(tensors: dict, name: str, field: str, what: str) -> Tensor:
    if name not in tensors:
        raise BindingError(field, f"{name!r} is not an {what} of the graph (its {what}s: {', '.join(tensors) or 'none'})")
    return tensors[name]


def _rank(t: Tensor, rank: int, field: str, expected: str) -> None:
    if t.shape is not None and len(t.shape) != rank:
        raise BindingError(field, f"{t.name!r} has rank {len(t.shape)}, expected {expected}")


def _dim(t: Tensor, axis: int):
    return None if t.shape is None or axis >= len(t.shape) else t.shape[axis]


def _fixed_batch(dim, what: str) -> int | None:
    if isinstance(dim, int) and dim != 1:
        raise BindingError("input", f"the graph fixes the batch size of {what} at {dim}; export it with a dynamic "
                                    "batch axis (or batch size 1)")
    return dim


def _tensor(value) -> Tensor:
    if not value.type.HasField("tensor_type"):
        return Tensor(value.name, None, None)
    t = value.type.tensor_type
    dtype = NUMPY_DTYPES.get(t.elem_type)
    if not t.HasField("shape"):
        return Tensor(value.name, dtype, None)
    shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
    return Tensor(value.name, dtype, shape)


def _count_parameters(model: ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if NUMPY_DTYPES.get(t.data_type, np.dtype(np.int8)).kind == "f"))
