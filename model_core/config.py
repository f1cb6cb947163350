"""``ModelConfig``: the arguments that rebuild a ``SequenceModel``, stored beside its weights."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, get_args

# The one list of each: pydantic models use the Literal types, argparse and checks the tuples.
Cell = Literal["rnn", "lstm", "gru"]
Task = Literal["classify", "seq2seq", "lm"]
OutputKind = Literal["logits", "binary", "regression"]
Encoding = Literal["embedding", "onehot", "features"]
CELLS: tuple[str, ...] = get_args(Cell)
TASKS: tuple[str, ...] = get_args(Task)
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
ENCODINGS: tuple[str, ...] = get_args(Encoding)


@dataclass(frozen=True)
class ModelConfig:
    """What the model is and how its inputs and outputs are read.

    task:      ``classify`` (seq2vec, one label per sequence from its last valid step),
               ``seq2seq`` (an output per step) or ``lm`` (next-token distribution per step).
    input_encoding: ``embedding`` (token ids -> learned vectors), ``onehot`` (token ids ->
               one-hot of size ``input_size``) or ``features`` (float vectors of ``input_size``).
    vocab:     the token strings for id inputs (characters for char models), or None.
    labels:    class names for ``classify``; per-output names for ``seq2seq``; None for ``lm``.
    output:    how seq2seq outputs are read: ``logits`` (softmax over ``output_size``),
               ``binary`` (independent sigmoids) or ``regression`` (raw values).
    """

    cell: str
    task: str
    input_size: int
    hidden_size: int
    output_size: int
    num_layers: int = 1
    input_encoding: str = "features"
    embedding_dim: int | None = None
    nonlinearity: str = "tanh"
    bias: bool = True
    bidirectional: bool = False
    dropout: float = 0.0
    output: str = "logits"
    vocab: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"invalid model config: {msg}")

        if self.cell not in CELLS:
            bad(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.task not in TASKS:
            bad(f"task must be one of {TASKS}, got {self.task!r}")
        if self.input_encoding not in ENCODINGS:
            bad(f"input_encoding must be one of {ENCODINGS}, got {self.input_encoding!r}")
        for name in ("input_size", "hidden_size", "output_size", "num_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if self.input_encoding == "embedding" and not (isinstance(self.embedding_dim, int) and self.embedding_dim > 0):
            bad("input_encoding 'embedding' needs a positive embedding_dim")
        if self.output not in OUTPUT_KINDS:
            bad(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.vocab is not None:
            object.__setattr__(self, "vocab", tuple(self.vocab))
            if self.input_encoding == "features":
                bad("a vocab only makes sense with token-id inputs ('embedding' or 'onehot')")
            if len(self.vocab) != self.input_size:
                bad(f"vocab has {len(self.vocab)} tokens but input_size is {self.input_size}")
            if len(set(self.vocab)) != len(self.vocab):
                bad("vocab has duplicate tokens")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if len(self.labels) != self.output_size:
                bad(f"{len(self.labels)} labels for output_size {self.output_size}")
        if self.task == "lm" and self.input_encoding == "features":
            bad("task 'lm' predicts tokens, so it needs token-id inputs")
        if self.task == "lm" and self.output_size != self.input_size:
            bad("task 'lm' predicts its own vocabulary: output_size must equal input_size")
        if self.bidirectional and self.task != "classify":
            bad("bidirectional layers need the whole sequence, so only task 'classify' may use them")

    @property
    def rnn_input_size(self) -> int:
        return self.embedding_dim if self.input_encoding == "embedding" else self.input_size

    @property
    def uses_tokens(self) -> bool:
        return self.input_encoding in ("embedding", "onehot")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields {unknown}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ValueError(f"model config is incomplete: {exc}") from None
