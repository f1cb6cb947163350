"""Seeded, deterministic data for the recurrent models: pure NumPy, no framework.

- ``temporal_order``: sequence classification by the order of two symbols (Hochreiter & Schmidhuber 1997, 6a).
- ``echo``: echo a bit stream ``n`` steps later, in chunks for truncated BPTT.
- ``charlm``: character-level language modelling on the vendored Shakespeare plays.
"""
from model_core.data import charlm, echo, temporal_order
from model_core.data.charlm import CharBatches, Vocab, bits_per_char, load_corpus, split
from model_core.data.echo import EchoStreams, echo_targets, validation_streams
from model_core.data.temporal_order import (
    CLASSES,
    SYMBOLS,
    Difficulty,
    TemporalOrderDataset,
    encode_batch,
    generate,
    validation_set,
)

__all__ = [
    "charlm", "echo", "temporal_order",
    "CharBatches", "Vocab", "bits_per_char", "load_corpus", "split",
    "EchoStreams", "echo_targets", "validation_streams",
    "CLASSES", "SYMBOLS", "Difficulty", "TemporalOrderDataset", "encode_batch", "generate", "validation_set",
]
