"""``InferenceSession``: onnxruntime's Python API over our NumPy / CuPy kernels.

Code written for onnxruntime switches by changing the import::

    from model_core.onnx import InferenceSession
    sess = InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    logits, h = sess.run(None, {"tokens": tokens})

Everything that can go wrong with the model itself (an unsupported op, opset or attribute, an
unsafe or oversized file) raises ``OnnxLoadError`` from the constructor; ``run`` only checks the
feed. Outputs are always NumPy arrays that the caller owns.

Beyond onnxruntime, ``weights="bfloat16"`` has the LSTM and GRU nodes read their weights rounded
once to bfloat16, with float32 arithmetic (the engine's ``freeze(weights="bfloat16")``);
``WeightFormatError``, an ``OnnxLoadError``, says why a graph cannot.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx.shape_inference
from onnx import ModelProto, ValueInfoProto

from model_core.backend import get_xp, resolve_device, to_numpy
from model_core.heap import keep_freed_memory
from model_core.onnx.dtypes import NUMPY_DTYPES, elem_type_label, numpy_dtype, type_name
from model_core.nn.recurrent_base import check_weight_format
from model_core.onnx.errors import OnnxLoadError, WeightFormatError
from model_core.onnx.graph import DEFAULT_DOMAINS, Plan
from model_core.onnx.loading import DEFAULT_MAX_BYTES, read_model
from model_core.onnx.ops import OPS

__all__ = ["InferenceSession", "OnnxLoadError", "WeightFormatError", "NodeArg", "ModelMetadata", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET = 7  # the first opset with NumPy-style broadcasting and today's recurrent ops
MAX_OPSET = 28  # the newest opset whose op versions this package has been checked against
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: shape entries are ints, strings for
    symbolic dimensions, or None for unknown ones; ``type`` reads like 'tensor(float)'."""
    name: str
    type: str
    shape: list = field(default_factory=list)


@dataclass(frozen=True)
class ModelMetadata:
    """The fields of onnxruntime's ``ModelMetadata``."""
    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict


class InferenceSession:
    """Run an ONNX graph on ``device`` ("cpu", "gpu" or "auto"), onnxruntime-style.

    ``providers`` may stand in for ``device``: a CUDA or TensorRT provider means the GPU, and
    listing CPUExecutionProvider after it means "GPU if there is one". Of ``sess_options``
    (onnxruntime's ``SessionOptions`` or anything with its attributes) only
    ``enable_cpu_mem_arena`` has an effect: on by default, as in onnxruntime, it keeps freed memory
    in the process for the next call (``model_core.heap``; process-wide, glibc only). ``max_bytes``
    caps the model file, each tensor, external data and tensors created from shape inputs at run time.
    ``weights="bfloat16"``: every LSTM and GRU node reads its W and R rounded once to bfloat16, with
    float32 arithmetic, on the CPU (``WeightFormatError`` if a recurrent node cannot, or there is none).
    """

    def __init__(self, path_or_bytes, sess_options=None, providers=None, device: str = "cpu", *,
                 max_bytes: int = DEFAULT_MAX_BYTES, weights: str = "float32"):
        check_weight_format(weights)
        self._device = resolve_device(_device_for(providers, device))
        self._xp = get_xp(self._device)
        self._sess_options = sess_options
        if getattr(sess_options, "enable_cpu_mem_arena", True):
            keep_freed_memory()
        model = read_model(path_or_bytes, max_bytes)
        opset = _default_opset(model)
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        # IR 4+ lets initializers that are also graph inputs be overridden by the feed
        overridable = {i.name for i in graph.input if i.name in initializers} if model.ir_version >= 4 else set()
        self._inputs = [_node_arg(v) for v in graph.input if v.name not in initializers]
        self._overridable = [_node_arg(v) for v in graph.input if v.name in overridable]
        self._outputs = [_node_arg(v, _invented_dims(model, v)) for v in _described_outputs(model)]
        self._output_names = [o.name for o in self._outputs]             # run() reads these per call
        self._known_outputs = frozenset(self._output_names)
        _check_io_types([*graph.input, *graph.output])
        self._input_specs = {v.name: _feed_spec(v) for v in graph.input
                             if v.name not in initializers or v.name in overridable}
        self._required = [a.name for a in self._inputs]
        self._plan = Plan(graph, opset, self._xp, max_bytes, overridable, weights)
        self._meta = ModelMetadata(model.producer_name, graph.name, model.domain, model.doc_string,
                                   graph.doc_string, model.model_version,
                                   {p.key: p.value for p in model.metadata_props})

    # -- onnxruntime's API -----------------------------------------------------------------------
    def run(self, output_names, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """Evaluate the graph; ``output_names`` None (or empty) means every output."""
        names = self._output_names if not output_names else list(output_names)
        unknown = [n for n in names if n not in self._known_outputs]
        if unknown:
            raise ValueError(f"Invalid output name(s): {unknown}; the model's outputs are {sorted(self._known_outputs)}")
        feeds = self._device_feeds(input_feed)
        results = self._plan.run(feeds, names)
        protected = {id(v) for v in feeds.values()} | self._plan.constant_ids   # a set of our own
        owned = []
        for r in results:
            owned.append(_owned_numpy(r, protected))
            protected.add(id(owned[-1]))                              # one output twice: two arrays
        return owned

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_overridable_initializers(self) -> list[NodeArg]:
        return list(self._overridable)

    def get_modelmeta(self) -> ModelMetadata:
        return self._meta

    def get_providers(self) -> list[str]:
        return [GPU_PROVIDERS[0], CPU_PROVIDER] if self._device == "gpu" else [CPU_PROVIDER]

    def get_provider_options(self) -> dict:
        return {name: {} for name in self.get_providers()}

    def get_session_options(self):
        return self._sess_options

    @property
    def device(self) -> str:
        """"cpu" or "gpu": where this session's kernels run."""
        return self._device

    @property
    def weight_format(self) -> str:
        """"bfloat16" when the recurrent nodes read bfloat16 weights (``weights=``), else "float32"."""
        return self._plan.weight_format

    # -- feeds -----------------------------------------------------------------------------------
    def _device_feeds(self, input_feed: dict) -> dict:
        unknown = [n for n in input_feed if n not in self._input_specs]
        if unknown:
            raise ValueError(f"Invalid input name(s): {unknown}; the model's inputs are {sorted(self._input_specs)}")
        missing = [n for n in self._required if n not in input_feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({list(input_feed)}).")
        feeds = {}
        for name, value in input_feed.items():
            array = value if self._device == "gpu" and hasattr(value, "__cuda_array_interface__") else to_numpy(value)
            _check_feed(self._input_specs[name], array)
            feeds[name] = self._xp.asarray(array)
        return feeds


def _device_for(providers, device: str) -> str:
    """The device implied by an onnxruntime ``providers`` list (names or (name, options) pairs)."""
    if providers is None:
        return device
    if device != "cpu":
        raise ValueError("pass either providers or device, not both")
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    for name in names:
        if name not in GPU_PROVIDERS and name != CPU_PROVIDER:
            warnings.warn(f"provider {name!r} is not available here and is ignored", stacklevel=3)
    relevant = [n for n in names if n in GPU_PROVIDERS or n == CPU_PROVIDER]
    if not relevant or relevant[0] == CPU_PROVIDER:
        return "cpu"
    return "auto" if CPU_PROVIDER in relevant else "gpu"


def _default_opset(model: ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise OnnxLoadError("unsupported: the model imports no ai.onnx opset")
    opset = max(versions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        missing = sorted({n.op_type for n in model.graph.node if n.op_type not in OPS or n.domain not in DEFAULT_DOMAINS})
        extra = "".join(f", op {op}" for op in missing)
        raise OnnxLoadError(f"unsupported: opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET}){extra}")
    return opset


def _invented_dims(model: ModelProto, value: ValueInfoProto) -> set[str]:
    """Symbolic names that ONNX shape inference made up ('unk__0') rather than read from the model."""
    if value in model.graph.output:
        return set()
    declared = {d.dim_param for v in model.graph.input if v.type.HasField("tensor_type")
                for d in v.type.tensor_type.shape.dim if d.dim_param}
    return {d.dim_param for d in value.type.tensor_type.shape.dim
            if d.dim_param.startswith("unk__") and d.dim_param not in declared}


def _node_arg(value: ValueInfoProto, unknown_dims: set[str] = frozenset()) -> NodeArg:
    if not value.type.HasField("tensor_type"):
        return NodeArg(value.name, value.type.WhichOneof("value") or "unknown", [])
    tensor = value.type.tensor_type
    shape = []
    if tensor.HasField("shape"):  # like onnxruntime: int, str for a symbolic dimension, None if unknown
        shape = [d.dim_value if d.HasField("dim_value") else
                 d.dim_param if d.dim_param and d.dim_param not in unknown_dims else None
                 for d in tensor.shape.dim]
    return NodeArg(value.name, type_name(tensor.elem_type), shape)


def _described_outputs(model: ModelProto) -> list[ValueInfoProto]:
    """Graph outputs, with shapes from ONNX shape inference where the model declares none:
    onnxruntime's get_outputs() reports the inferred shapes too."""
    outputs = list(model.graph.output)
    if all(o.type.tensor_type.HasField("shape") for o in outputs):
        return outputs
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
    except Exception:  # inference is a nicety here: keep the declared outputs
        return outputs
    merged = []
    for declared, guess in zip(outputs, inferred):
        usable = (not declared.type.tensor_type.HasField("shape") and guess.name == declared.name
                  and guess.type.tensor_type.elem_type == declared.type.tensor_type.elem_type)
        merged.append(guess if usable else declared)
    return merged


def _check_io_types(values) -> None:
    problems = []
    for value in values:
        if not value.type.HasField("tensor_type"):
            problems.append(f"{value.type.WhichOneof('value') or 'untyped'} value {value.name!r}")
        elif value.type.tensor_type.elem_type not in NUMPY_DTYPES:
            problems.append(f"{elem_type_label(value.type.tensor_type.elem_type)} value {value.name!r}")
    if problems:
        raise OnnxLoadError("unsupported: " + ", ".join(problems))


class _FeedSpec(NamedTuple):
    """What a feed is checked against, read from the graph input once (protobuf fields cost
    microseconds each to read, on every call): dtype, rank (None: any) and the fixed dimensions."""
    name: str
    dtype: np.dtype
    elem_type: int
    rank: int | None
    fixed: tuple[tuple[int, int], ...]          # (axis, size) for each dimension with a value


def _feed_spec(value: ValueInfoProto) -> _FeedSpec:
    tensor = value.type.tensor_type
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else None
    fixed = () if dims is None else tuple((k, d.dim_value) for k, d in enumerate(dims) if d.HasField("dim_value"))
    return _FeedSpec(value.name, numpy_dtype(tensor.elem_type), tensor.elem_type, None if dims is None else len(dims),
                     fixed)


def _check_feed(spec: _FeedSpec, array: np.ndarray) -> None:
    if array.dtype != spec.dtype:
        raise ValueError(f"Unexpected input data type for {spec.name!r}. Actual: ({_type_name_of(array.dtype)}), "
                         f"expected: ({type_name(spec.elem_type)})")
    if spec.rank is None:
        return
    if array.ndim != spec.rank:
        raise ValueError(f"Invalid rank for input: {spec.name} Got: {array.ndim} Expected: {spec.rank}")
    shape = array.shape
    wrong = [(k, shape[k], want) for k, want in spec.fixed if shape[k] != want]
    if wrong:
        detail = "; ".join(f"index {k}: got {got}, expected {want}" for k, got, want in wrong)
        raise ValueError(f"Got invalid dimensions for input: {spec.name} ({detail})")


def _type_name_of(dtype) -> str:
    for elem_type, candidate in NUMPY_DTYPES.items():
        if candidate == dtype:
            return type_name(elem_type)
    return f"numpy {dtype}"


def _owned_numpy(value, protected: set[int]) -> np.ndarray:
    """A host array the caller may keep and modify: never a view of our constants or of a feed."""
    if not isinstance(value, (np.ndarray, np.generic)):
        return to_numpy(value)  # from the device: already a fresh host copy
    array = np.asarray(value)
    fresh = (id(value) not in protected and array.flags.writeable and array.flags.c_contiguous
             and (array.base is None and array.flags.owndata or _sole_view(array)))
    return array if fresh else np.array(array, copy=True, order="C")


def _sole_view(array: np.ndarray) -> bool:
    """Is ``array`` the only thing holding the buffer it views? The recurrent kernels' outputs are
    views that start on a cache line inside a slightly larger buffer (``aligned_empty``); copying
    them cost a second Y per call, and with it the page faults of fresh memory each call (an LSTM
    node at B=32, T=100, H=256: 1,500 minor faults a call, 34 ms against 28 for the same kernel
    through ``nn.LSTM``). NumPy points every view at the buffer's owner, so a single reference to
    it (the view's) means no other view, constant or feed shares it."""
    base = array.base
    # three references: the view's, the name `base` and getrefcount's argument
    return isinstance(base, np.ndarray) and base.base is None and base.flags.owndata and sys.getrefcount(base) == 3
