"""ONNX in both directions: ``export`` writes our models as standard ONNX graphs, and
``InferenceSession`` runs ONNX recurrent graphs on our backends with onnxruntime's API.

Attributes load lazily so that importing ``model_core`` never imports ``onnx``.
"""
from __future__ import annotations

__all__ = ["export", "InferenceSession", "OnnxLoadError", "WeightFormatError"]


def __getattr__(name: str):
    if name == "export":
        from model_core.onnx.exporter import export
        return export
    if name in ("InferenceSession", "OnnxLoadError", "WeightFormatError"):
        from model_core.onnx import session
        return getattr(session, name)
    raise AttributeError(f"module 'model_core.onnx' has no attribute {name!r}")
