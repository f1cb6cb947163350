"""``ServedModel``: the contract between a loaded model and the service that serves it.

Two classes implement it: ``model_core.model.SequenceModel`` (our checkpoints) and
``model_core.onnx.sequence_model.OnnxSequenceModel`` (an ONNX graph behind its model card). The
service types against this Protocol and never asks which one it holds.

A state is always a tuple of arrays, each (layers*directions, B, H): ``(h,)`` for the RNN and the
GRU, ``(h, c)`` for the LSTM. Inputs are time-major: token ids (T, B) or features (T, B, I).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from model_core.config import ModelConfig

State = tuple  # (h,) or (h, c), each (layers*directions, B, H)


@runtime_checkable
class ServedModel(Protocol):
    config: ModelConfig

    @property
    def xp(self) -> Any:
        """The array module the state lives in (numpy or cupy)."""

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def weight_format(self) -> str:
        """What inference reads of the recurrent weights: "float32", or "bfloat16" (``freeze(weights=...)``)."""

    def num_parameters(self) -> int: ...

    def init_state(self, batch: int = 1) -> State:
        """The zero state for ``batch`` sessions."""

    def forward(self, inputs, state: State | None = None, lengths=None) -> tuple[Any, State]:
        """(logits, state): (B, C) for a classifier (each sequence's last valid step), else (T, B, C)."""

    def forward_steps(self, inputs, state: State | None = None, lengths=None) -> tuple[Any, State]:
        """(logits (T, B, C), state): the head at every timestep, for every task."""

    def step(self, inputs_t, state: State) -> tuple[Any, State]:
        """One timestep for B independent sessions: ids (B,) or features (B, I) -> (logits (B, C), state)."""

    def describe(self) -> dict:
        """What ``GET /v1/models/{name}`` adds about the model's format (empty for checkpoints)."""
