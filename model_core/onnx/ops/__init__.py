"""ONNX operator kernels. Importing this package fills ``OPS``, the table the graph builder reads."""
from model_core.onnx.ops import (activations, creation, elementwise, indexing, linalg, recurrent, reduce,
                                 shape_ops)
from model_core.onnx.ops.registry import OPS, Node, Unsupported, WeightsUnsupported

# the kernel modules register their operators into OPS when imported
__all__ = ["OPS", "Node", "Unsupported", "WeightsUnsupported",
           "activations", "creation", "elementwise", "indexing", "linalg", "recurrent", "reduce", "shape_ops"]
