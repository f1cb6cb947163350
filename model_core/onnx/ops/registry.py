"""The operator table: each ONNX op maps to a ``prepare`` function and the schema versions it knows.

``prepare(node)`` runs once at load time. It parses the node's attributes, refuses what it cannot
run by raising ``Unsupported``, and returns a kernel: a plain function of the node's input arrays
(``None`` for an absent optional input) that returns one array or a tuple of them, one per output.
Kernels close over parsed attributes only, never over per-call state, so a session can run them
from many threads at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from collections.abc import Callable

import numpy as np
from onnx import AttributeProto, NodeProto, helper

from model_core.backend import to_numpy
from model_core.onnx.dtypes import tensor_to_numpy

Kernel = Callable[..., Any]


class Unsupported(Exception):
    """This node cannot be run as written; the message names the op and what is missing."""


class WeightsUnsupported(Unsupported):
    """This node runs, but cannot read the session's weight format (``Node.weights``)."""


@dataclass(frozen=True)
class OpDef:
    prepare: Callable[[Node], Kernel]
    versions: frozenset[int]  # schema since_versions whose semantics ``prepare`` implements


OPS: dict[str, OpDef] = {}


def register(op_types: str | tuple[str, ...], *versions: int):
    """Decorator: ``@register("Relu", 6, 13, 14)`` adds ``prepare`` for those schema versions."""
    names = (op_types,) if isinstance(op_types, str) else op_types

    def add(prepare):
        for name in names:
            OPS[name] = OpDef(prepare, frozenset(versions))
        return prepare
    return add


_MISSING = object()


class Node:
    """A NodeProto as a ``prepare`` function sees it.

    Attributes are read through ``attr`` and friends, which record every name read; the graph
    builder refuses a node whose attributes were not all read, so an attribute is never ignored
    by accident. ``constant(i)`` gives an input's value when it is known at load time.
    """

    def __init__(self, proto: NodeProto, schema, xp: ModuleType, constants: dict, max_tensor_bytes: int,
                 weights: str = "float32"):
        self.op_type = proto.op_type
        self.label = f"{proto.op_type} node {proto.name!r}" if proto.name else f"{proto.op_type} node"
        self.since = schema.since_version  # the op's schema version in effect for the model's opset
        self._schema_attrs = schema.attributes
        self.xp = xp
        self.weights = weights       # the session's weight format: what a recurrent node's kernel reads
        self.reads_bf16 = False      # set by a prepare whose kernel reads bfloat16 weights
        self.inputs = list(proto.input)  # '' marks an omitted optional input
        self.outputs = list(proto.output)
        self.max_tensor_bytes = max_tensor_bytes
        self._attrs = {a.name: a for a in proto.attribute}
        self._read: set[str] = set()
        self._constants = constants

    # -- attributes ------------------------------------------------------------------------------
    def attr(self, name: str, default=_MISSING):
        """The attribute's Python value (str for strings, list for lists, ndarray for a tensor)."""
        self._read.add(name)
        if name not in self._attrs:
            if default is _MISSING:
                raise Unsupported(f"{self.op_type} without required attribute {name}")
            return default
        proto = self._attrs[name]
        declared = self._schema_attrs.get(name)
        if declared is not None and int(declared.type) != proto.type:
            raise Unsupported(f"{self.op_type} attribute {name} of type "
                              f"{AttributeProto.AttributeType.Name(proto.type)}")
        if proto.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.SPARSE_TENSOR,
                          AttributeProto.SPARSE_TENSORS, AttributeProto.TENSORS, AttributeProto.TYPE_PROTO,
                          AttributeProto.TYPE_PROTOS):
            raise Unsupported(f"{self.op_type} attribute {name} of type {AttributeProto.AttributeType.Name(proto.type)}")
        if proto.type == AttributeProto.TENSOR:
            return tensor_to_numpy(proto.t, self.max_tensor_bytes)
        value = helper.get_attribute_value(proto)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, list):
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
        return value

    def int_attr(self, name: str, default=_MISSING) -> int:
        return int(self.attr(name, default))

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def ignore(self, *names: str) -> None:
        """Mark attributes as read on purpose: they do not change inference results."""
        self._read.update(names)

    def unread_attributes(self) -> list[str]:
        return sorted(set(self._attrs) - self._read)

    # -- inputs and outputs ----------------------------------------------------------------------
    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] != ""

    def has_output(self, index: int) -> bool:
        return index < len(self.outputs) and self.outputs[index] != ""

    def constant(self, index: int):
        """The input's value on the host when known at load time (an initializer or folded), else None."""
        if not self.has_input(index):
            return None
        value = self._constants.get(self.inputs[index])
        return None if value is None else to_numpy(value)


def host_ints(array) -> list[int]:
    """A small integer tensor (shape, axes, pads) as Python ints, read back from the device if needed."""
    return [int(v) for v in np.asarray(to_numpy(array)).reshape(-1)]


def host_scalar(array):
    """A one-element tensor as a Python number."""
    return np.asarray(to_numpy(array)).reshape(-1)[0].item()


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def check_size(shape, itemsize: int, limit: int) -> None:
    """Refuse to allocate a tensor over ``limit`` bytes (ops that grow data from a small shape input)."""
    nbytes = math.prod(int(d) for d in shape) * itemsize
    if nbytes > limit:
        raise ValueError(f"a tensor of shape {tuple(shape)} needs {nbytes} bytes, over the limit of {limit}")
