"""The WebSocket message protocol: typed pydantic messages with a ``type`` field."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, model_validator

from service.api.schemas import CompletionOptions
from service.request_limits import Feature, StepAt, TokenId, TopK


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | StrictInt | None = Field(None, description="echoed back in the reply")


class InputMessage(_Message):
    """New steps: exactly one of ``text``, ``tokens`` or ``features``."""

    type: Literal["input"]
    text: str | None = None
    tokens: list[TokenId] | None = None
    features: list[list[Feature]] | None = None
    top_k: TopK = 5
    at: StepAt | None = None
    state: StrictBool = Field(False, description="also send the top layer's h (and c) after this input, "
                                                  "for visualising the state (the demo's heatmap)")

    @model_validator(mode="after")
    def _one_payload(self):
        given = [k for k in ("text", "tokens", "features") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an input message needs exactly one of 'text', 'tokens' or 'features'")
        return self

    @property
    def payload(self):
        return self.text if self.text is not None else (self.tokens if self.tokens is not None else self.features)


class CompleteMessage(_Message, CompletionOptions):
    """Completions from the current state; the state is not advanced."""

    type: Literal["complete"]


class ResetMessage(_Message):
    type: Literal["reset"]


class CloseMessage(_Message):
    type: Literal["close"]


ClientMessage = Annotated[InputMessage | CompleteMessage | ResetMessage | CloseMessage, Field(discriminator="type")]
client_message = TypeAdapter(ClientMessage)
