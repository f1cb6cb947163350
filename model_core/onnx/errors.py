"""The one error a caller of ``InferenceSession`` has to know about at load time."""
from __future__ import annotations


class OnnxLoadError(ValueError):
    """The model cannot be run here: unreadable, unsafe, or using something we do not support.

    Raised only while loading, so a session that loaded never fails a request for these reasons.
    The message lists every problem found, not just the first.
    """
