"""``model-card.json``: what a foreign ONNX graph's inputs, outputs and state mean.

Beside ``models/<name>/model.onnx``, the card declares the task, the input encoding, the labels,
and the graph bindings: the sequence input and its layout, an optional lengths input, the output
and whether it is per step, and the recurrent state as (input, output) pairs, Triton's implicit
state. Graphs written by our exporter need no card. Example (a torch char-level LSTM LM)::

    {
      "task": "lm",
      "encoding": {"kind": "vocab", "tokens": ["\\n", " ", "a", "b", "c"]},
      "input": {"name": "tokens", "layout": "batch_major"},
      "output": {"name": "logits", "per_step": true},
      "state": [{"input": "h0", "output": "hn", "batch_axis": 1},
                {"input": "c0", "output": "cn", "batch_axis": 1}]
    }
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_core.config import Cell, OutputKind, Task
from model_core.onnx.graph_binding import GraphBinding, StateBinding

CARD = "model-card.json"
MAX_CARD_BYTES = 16 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VocabEncoding(_Strict):
    kind: Literal["vocab"]
    tokens: list[str] = Field(min_length=1, description="token id i is tokens[i]; characters for char models")


class FeatureEncoding(_Strict):
    kind: Literal["features"]
    size: int = Field(ge=1, description="numbers per step")


class SequenceInput(_Strict):
    name: str = Field(min_length=1, description="the graph input that carries the sequence")
    layout: Literal["time_major", "batch_major"] = Field(
        "time_major", description="time_major: [T, B, ...]; batch_major: [B, T, ...] (torch's batch_first)")


class OutputBinding(_Strict):
    name: str = Field(min_length=1, description="the graph output with the head's scores")
    kind: OutputKind = Field(
        "logits", description="logits: one class per step (softmax); binary: independent sigmoids; regression: raw")
    activation: Literal["none", "softmax", "log_softmax", "sigmoid"] = Field(
        "none", description="what the graph already applied: softmax means the output is probabilities")
    per_step: bool = Field(True, description="[T, B, C] (layout as the input); false: the last step only, [B, C]")


class StateSpec(_Strict):
    input: str = Field(min_length=1, description="graph input fed the state (zeros at a sequence's start)")
    output: str = Field(min_length=1, description="graph output that holds the state after the last step")
    batch_axis: int = Field(1, ge=0, le=2, description="where the batch sits in these tensors")
    shape: list[int | None] | None = Field(
        None, min_length=3, max_length=3, description="the tensors' shape (batch entry null), if the graph omits it")


class ModelCard(_Strict):
    task: Task
    encoding: Annotated[VocabEncoding | FeatureEncoding, Field(discriminator="kind")]
    labels: list[str] | None = Field(None, description="class or output names; lm models use the vocabulary")
    cell: Cell | None = Field(None, description="only when the graph has no LSTM/GRU/RNN op")
    input: SequenceInput
    lengths: str | None = Field(None, description="an int input of valid steps per sequence, if the graph has one")
    output: OutputBinding
    state: list[StateSpec] = Field(min_length=1, max_length=2)
    description: str | None = None

    def binding(self) -> GraphBinding:
        """The engine's form; ``BindingError`` (a ValueError naming the field) when fields disagree."""
        enc = self.encoding
        tokens = isinstance(enc, VocabEncoding)
        return GraphBinding(
            task=self.task, input=self.input.name, output=self.output.name, layout=self.input.layout,
            states=tuple(StateBinding(s.input, s.output, s.batch_axis, tuple(s.shape) if s.shape else None)
                         for s in self.state),
            uses_tokens=tokens, input_size=len(enc.tokens) if tokens else enc.size,
            vocab=tuple(enc.tokens) if tokens else None, labels=tuple(self.labels) if self.labels else None,
            output_kind=self.output.kind, activation=self.output.activation, per_step=self.output.per_step,
            lengths=self.lengths, cell=self.cell, source=CARD)


class CardError(ValueError):
    """A card that cannot be read; the message names the file and the field."""


def read_card(path: Path) -> GraphBinding:
    """Parse and validate ``path`` into a binding (not yet checked against the graph)."""
    size = path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise CardError(f"{CARD} is {size} bytes, over the limit of {MAX_CARD_BYTES}")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{CARD} is not valid JSON: {exc}") from None
    try:
        return ModelCard.model_validate(raw).binding()
    except ValidationError as exc:
        problems = "; ".join(f"field '{_loc(e['loc'])}': {e['msg']}" for e in exc.errors()[:5])
        raise CardError(f"{CARD}: {problems}") from None
    except ValueError as exc:                                             # BindingError: fields that disagree
        raise CardError(f"{CARD}: {exc}") from None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("vocab", "features") or not out.endswith("encoding"):   # drop the union's tag
            out += f".{part}" if out else str(part)
    return out or "(card)"
