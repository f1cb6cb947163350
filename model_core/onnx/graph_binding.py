"""How a recurrent ONNX graph is served: which inputs and outputs mean what (its model card).

A ``GraphBinding`` is the engine's plain form of a model card. The service reads the card's JSON
(``service.model_card``) into one; graphs written by our exporter need no card, because their
``metadata_props`` say it all (``binding_from_metadata``).

The state is Triton's implicit state: each ``StateBinding`` pairs a graph input with the output
that feeds it on the next request. Field names match the card's, so a problem found against the
graph names the card field to fix (``BindingError``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from model_core.config import CELLS, OUTPUT_KINDS, TASKS, ModelConfig

# what the graph already applied to the head's scores; the service wants raw scores back
ACTIVATIONS = {"logits": ("none", "softmax", "log_softmax"), "binary": ("none", "sigmoid"), "regression": ("none",)}
LAYOUTS = ("time_major", "batch_major")


class BindingError(ValueError):
    """A model card (or derived binding) that does not fit its graph; ``field`` is the card field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field


@dataclass(frozen=True)
class StateBinding:
    """One recurrent state tensor: fed through ``input``, read back from ``output``.

    ``batch_axis`` is where the batch sits in the graph's tensor; the engine keeps states as
    (layers*directions, batch, hidden), so the other two axes keep their order around it.
    ``shape`` is the graph tensor's shape (the batch entry ignored), for graphs that do not
    declare it; None: read it from the graph.
    """
    input: str
    output: str
    batch_axis: int = 1
    shape: tuple | None = None


@dataclass(frozen=True)
class GraphBinding:
    """A served recurrent graph: task, input encoding, labels, and the graph names that carry them.

    uses_tokens:  the input is token ids (the graph embeds them itself); else feature vectors
    input_size:   the number of token ids, or the width of a feature vector
    vocab:        the token strings (``input_size`` of them), or None
    output_kind:  how the service reads the head: softmax ``logits``, sigmoid ``binary`` or ``regression``
    activation:   what the graph already applied to the output (``softmax`` means probabilities)
    per_step:     the output holds every step's scores; False: only the last step's (B, C)
    config:       a full ``ModelConfig`` when the graph carries one (our exporter's); else derived
    """
    task: str
    input: str
    output: str
    states: tuple[StateBinding, ...]
    uses_tokens: bool
    input_size: int
    vocab: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    output_kind: str = "logits"
    activation: str = "none"
    per_step: bool = True
    layout: str = "time_major"
    lengths: str | None = None
    cell: str | None = None
    source: str = "model card"
    config: ModelConfig | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise BindingError("task", f"must be one of {TASKS}, got {self.task!r}")
        if self.input_size < 1:
            raise BindingError("encoding", f"needs at least one token or feature, got {self.input_size}")
        if self.vocab is not None and (not self.uses_tokens or len(self.vocab) != self.input_size
                                       or len(set(self.vocab)) != len(self.vocab)):
            raise BindingError("encoding.tokens", "the vocabulary must list each token id's string once")
        if self.task == "lm" and not self.uses_tokens:
            raise BindingError("encoding", "task 'lm' predicts tokens, so it needs a vocab encoding")
        if self.output_kind not in OUTPUT_KINDS:
            raise BindingError("output.kind", f"must be one of {OUTPUT_KINDS}, got {self.output_kind!r}")
        if self.activation not in ACTIVATIONS[self.output_kind]:
            raise BindingError("output.activation", f"with kind {self.output_kind!r} it must be one of "
                                                    f"{ACTIVATIONS[self.output_kind]}, got {self.activation!r}")
        if self.task == "classify" and self.output_kind != "logits":
            raise BindingError("output.kind", "a classifier's output must be 'logits' (one class per sequence)")
        if self.layout not in LAYOUTS:
            raise BindingError("input.layout", f"must be one of {LAYOUTS}, got {self.layout!r}")
        if self.cell is not None and self.cell not in CELLS:
            raise BindingError("cell", f"must be one of {CELLS}, got {self.cell!r}")
        if not 1 <= len(self.states) <= 2:
            raise BindingError("state", "list one or two {input, output} pairs: sessions, streaming and "
                                        f"completion carry the state between requests (got {len(self.states)})")
        for k, s in enumerate(self.states):
            if s.batch_axis not in (0, 1, 2):
                raise BindingError(f"state[{k}].batch_axis", f"must be 0, 1 or 2, got {s.batch_axis}")
        names = [self.input, *(n for n in [self.lengths] if n), *(s.input for s in self.states)]
        if len(set(names)) != len(names):
            raise BindingError("state", f"graph inputs are bound twice: {names}")
        outs = [self.output, *(s.output for s in self.states)]
        if len(set(outs)) != len(outs):
            raise BindingError("output", f"graph outputs are bound twice: {outs}")


def binding_from_metadata(meta: dict[str, str]) -> GraphBinding | None:
    """The binding of a graph written by ``model_core.onnx.exporter``, or None for other graphs."""
    from model_core.onnx.exporter import FORMAT, input_name  # the exporter imports onnx helpers

    if meta.get("format") != FORMAT:
        return None
    try:
        config = ModelConfig.from_json(meta["config"])
        pairs = json.loads(meta["state"])
    except (KeyError, ValueError) as exc:
        raise BindingError("metadata_props", f"the graph says it is {FORMAT} but its metadata is broken: {exc}") from None
    return GraphBinding(
        task=config.task, input=input_name(config), output="logits",
        states=tuple(StateBinding(i, o, 1) for i, o in pairs.items()),
        uses_tokens=config.uses_tokens, input_size=config.input_size, vocab=config.vocab,
        labels=config.labels, output_kind=config.output, per_step=config.task != "classify",
        layout="time_major", lengths="sequence_lens", cell=config.cell, source="metadata_props", config=config)
