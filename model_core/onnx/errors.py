"""The errors a caller of ``InferenceSession`` has to know about at load time."""
from __future__ import annotations


class OnnxLoadError(ValueError):
    """The model cannot be run here: unreadable, unsafe, or using something we do not support.

    Raised only while loading, so a session that loaded never fails a request for these reasons.
    The message lists every problem found, not just the first.
    """


class WeightFormatError(OnnxLoadError):
    """The graph runs, but not with the weights asked for (``InferenceSession(weights="bfloat16")``):
    a recurrent node that cannot read bfloat16 weights, or no LSTM or GRU node at all. Loaded with
    the default float32 weights, the same graph runs."""
