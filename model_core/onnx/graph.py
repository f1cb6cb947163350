"""The execution plan: an ONNX graph checked, sorted and prepared once, then run as a flat loop.

At load time every node is checked against the op table (all problems are collected and
reported together), initializers become ``xp`` arrays once, and nodes whose inputs are all known
are evaluated once (constant folding). ``Plan.run`` then only walks the prepared steps; it keeps
all per-call values in a local dict, so one plan serves many threads.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import onnx.defs
from onnx import GraphProto

from model_core.onnx.dtypes import tensor_to_numpy
from model_core.onnx.errors import OnnxLoadError, WeightFormatError
from model_core.onnx.ops import OPS, Node, Unsupported, WeightsUnsupported

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Step:
    label: str
    kernel: object
    inputs: tuple[str, ...]   # '' for an omitted optional input
    outputs: tuple[str, ...]  # '' for an output nobody asked for
    release: tuple[str, ...]  # values no later step reads: dropped to free memory early


class Plan:
    """A graph ready to run on one array module ``xp``, its recurrent nodes reading ``weights``
    ("float32" or "bfloat16": then every recurrent node must, and at least one does)."""

    def __init__(self, graph: GraphProto, opset: int, xp: ModuleType, max_tensor_bytes: int,
                 overridable: set[str] = frozenset(), weights: str = "float32"):
        self.xp = xp
        self.output_names = [o.name for o in graph.output]
        initializers = {t.name: xp.asarray(tensor_to_numpy(t, max_tensor_bytes)) for t in graph.initializer}
        # an initializer the feed may override is a default, not a constant: never folded
        self.defaults = {n: v for n, v in initializers.items() if n in overridable}
        constants = {n: v for n, v in initializers.items() if n not in overridable}
        order = _topological_order(graph, set(initializers))
        problems: Counter[str] = Counter()
        weight_problems: Counter[str] = Counter()
        steps: list[tuple[str, object, object]] = []
        reads_bf16 = False
        for proto in order:
            node = _prepare(proto, opset, xp, constants, max_tensor_bytes, problems, weight_problems, weights)
            if node is None:
                continue
            label, kernel, node_bf16 = node
            reads_bf16 |= node_bf16
            if not problems and all(name in constants for name in proto.input if name):
                _fold(label, kernel, proto, constants)
            else:
                steps.append((label, kernel, proto))
        if problems:
            raise OnnxLoadError(f"unsupported: {_listed(problems)}")
        if weights == "bfloat16" and not (weight_problems or reads_bf16):
            weight_problems["no LSTM or GRU node to read them"] += 1
        if weight_problems:
            raise WeightFormatError(f"weights={weights!r} is not available for this graph: {_listed(weight_problems)}")
        self.weight_format = "bfloat16" if reads_bf16 else "float32"
        self.constants = constants  # read-only from here on
        self.constant_ids = frozenset(id(v) for v in [*constants.values(), *self.defaults.values()])
        self.steps = _with_release(steps, set(constants) | set(self.defaults), set(self.output_names))

    def run(self, feeds: dict, output_names: list[str]) -> list:
        """Evaluate the graph. ``feeds`` maps input names to ``xp`` arrays."""
        env = {**self.constants, **self.defaults, **feeds}
        with np.errstate(all="ignore"):  # inf / nan propagate silently, as in onnxruntime
            for step in self.steps:
                args = [env[name] if name else None for name in step.inputs]
                try:
                    result = step.kernel(*args)
                except Exception as exc:
                    exc.add_note(f"while running ONNX {step.label}")
                    raise
                if not isinstance(result, tuple):
                    result = (result,)
                for name, value in zip(step.outputs, result):
                    if name:
                        env[name] = value
                for name in step.release:
                    env.pop(name, None)
        return [env[name] for name in output_names]


def _listed(problems: Counter[str]) -> str:
    """Each problem once, with how many nodes have it where more than one does."""
    return ", ".join(p if n == 1 else f"{p} ({n} nodes)" for p, n in problems.items())


def _prepare(proto, opset, xp, constants, max_tensor_bytes, problems, weight_problems, weights):
    """(label, kernel, reads_bf16) for a node, or None after recording why it cannot run (in
    ``weight_problems`` when it could, with float32 weights)."""
    op = proto.op_type
    if proto.domain not in DEFAULT_DOMAINS:
        problems[f"op {proto.domain}.{op}"] += 1
        return None
    if op not in OPS:
        problems[f"op {op}"] += 1
        return None
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        problems[f"op {op} (not in opset {opset})"] += 1
        return None
    if schema.since_version not in OPS[op].versions:
        problems[f"op {op} version {schema.since_version}"] += 1
        return None
    arity = _arity_problem(proto, schema)
    if arity:
        problems[arity] += 1
        return None
    node = Node(proto, schema, xp, constants, max_tensor_bytes, weights)
    try:
        kernel = OPS[op].prepare(node)
    except WeightsUnsupported as exc:
        weight_problems[str(exc)] += 1
        return None
    except Unsupported as exc:
        problems[str(exc)] += 1
        return None
    except OnnxLoadError as exc:  # a tensor attribute that is malformed or too large
        problems[f"{op} {exc}"] += 1
        return None
    unread = node.unread_attributes()
    if unread:
        problems[f"{op} attribute {', '.join(unread)}"] += 1
        return None
    return node.label, kernel, node.reads_bf16


def _arity_problem(proto, schema) -> str | None:
    """What the checker would say about the node's input and output counts, or None."""
    op, inputs, outputs = proto.op_type, list(proto.input), list(proto.output)
    if not schema.min_input <= len(inputs) <= schema.max_input:
        return f"{op} with {len(inputs)} inputs"
    if not schema.min_output <= len(outputs) <= schema.max_output:
        return f"{op} with {len(outputs)} outputs"
    Option = onnx.defs.OpSchema.FormalParameterOption
    for k, formal in enumerate(schema.inputs):
        if formal.option == Option.Single and (k >= len(inputs) or not inputs[k]):
            return f"{op} without required input {formal.name}"
    return None


def _fold(label, kernel, proto, constants):
    """Evaluate a node whose inputs are all known now, once, at load time."""
    try:
        with np.errstate(all="ignore"):
            result = kernel(*[constants[name] if name else None for name in proto.input])
    except Exception as exc:
        raise OnnxLoadError(f"{label} fails on its constant inputs: {exc}") from None
    if not isinstance(result, tuple):
        result = (result,)
    for name, value in zip(proto.output, result):
        if name and value is not None:
            constants[name] = value


def _topological_order(graph: GraphProto, initializers: set[str]):
    """Nodes sorted so that each runs after the producers of its inputs (Kahn's algorithm)."""
    available = {i.name for i in graph.input} | initializers
    producers: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for name in node.output:
            if name:
                if name in producers or name in available:
                    raise OnnxLoadError(f"value {name!r} is produced more than once")
                producers[name] = k
    waiting = [0] * len(graph.node)
    consumers: dict[int, list[int]] = {k: [] for k in range(len(graph.node))}
    for k, node in enumerate(graph.node):
        for name in set(node.input) - {""}:
            if name in producers:
                waiting[k] += 1
                consumers[producers[name]].append(k)
            elif name not in available:
                raise OnnxLoadError(f"input {name!r} of node {node.name or node.op_type!r} is never produced")
    ready = deque(k for k, n in enumerate(waiting) if n == 0)
    order = []
    while ready:
        k = ready.popleft()
        order.append(graph.node[k])
        for j in consumers[k]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(graph.node):
        raise OnnxLoadError("the graph has a cycle")
    for output in graph.output:
        if output.name not in producers and output.name not in available:
            raise OnnxLoadError(f"graph output {output.name!r} is never produced")
    return order


def _with_release(prepared, constants: set[str], outputs: set[str]) -> list[Step]:
    """Steps annotated with the values each one reads for the last time (or writes and nobody reads)."""
    last_read: dict[str, int] = {}
    for k, (_, _, proto) in enumerate(prepared):
        for name in list(proto.input) + list(proto.output):
            if name:
                last_read[name] = k
    keep = constants | outputs
    release: list[list[str]] = [[] for _ in prepared]
    for name, k in last_read.items():
        if name not in keep:
            release[k].append(name)
    return [Step(label, kernel, tuple(proto.input), tuple(proto.output), tuple(release[k]))
            for k, (label, kernel, proto) in enumerate(prepared)]
