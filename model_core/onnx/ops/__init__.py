"""ONNX operator kernels. Importing this package fills ``OPS``, the table the graph builder reads."""
from model_core.onnx.ops import (activations, creation, elementwise, indexing, linalg,  # noqa: F401
                                 recurrent, reduce, shape_ops)
from model_core.onnx.ops.registry import OPS, Node, Unsupported

__all__ = ["OPS", "Node", "Unsupported"]
