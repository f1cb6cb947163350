"""The WebSocket message protocol, both ways, each message with a ``type`` field.

Client messages are pydantic models, validated on arrival. Server events are ``TypedDict``s: the
connection builds plain dicts and sends them unvalidated (a keystroke pays for no model), while the
types give ``/asyncapi.json`` its schemas (``service.api.asyncapi``), which the suite checks against
what the server really sends.
"""
from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict   # pydantic needs this one's TypedDict on Python < 3.12

from service.api.schemas import SENT, Completion, CompletionOptions, StepOutput
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


MessageId = str | int | None           # the client message's ``id``, echoed (null when it had none)


@with_config(SENT)
class SessionEvent(TypedDict):
    """First, on connect: the session this socket runs (new, or resumed with ``?session_id=``)."""

    type: Literal["session"]
    session_id: str
    model: str
    model_version: str
    resumed: bool
    steps: int
    """steps the session has consumed so far"""


@with_config(SENT)
class TopLayerState(TypedDict):
    """The top layer's state after the input, rounded to 4 decimals; ``null`` before any step."""

    h: list[float] | None
    c: list[float] | None
    """the LSTM's cell state; null for RNN and GRU"""


@with_config(SENT)
class OutputEvent(TypedDict):
    """The reply to ``input``: one output per new step, in order."""

    type: Literal["output"]
    id: MessageId
    steps: int
    """steps the session has consumed, this input included"""
    outputs: list[StepOutput]
    state: NotRequired[TopLayerState]
    """only when the input asked for it with ``"state": true``"""


@with_config(SENT)
class CompletionEvent(TypedDict):
    """The reply to ``complete``; the session's state is not advanced."""

    type: Literal["completion"]
    id: MessageId
    completions: list[Completion]


@with_config(SENT)
class ResetEvent(TypedDict):
    """The reply to ``reset``: the state is zero again."""

    type: Literal["reset"]
    id: MessageId
    steps: Literal[0]


@with_config(SENT)
class ClosedEvent(TypedDict):
    """The reply to ``close``: the session has ended and the server closes the socket."""

    type: Literal["closed"]
    id: MessageId


@with_config(SENT)
class ErrorEvent(TypedDict):
    """A message that failed (the socket stays open), or a refused connect (then the socket closes)."""

    type: Literal["error"]
    id: MessageId
    code: str
    """the same codes as the HTTP errors: invalid_request, invalid_input, session_expired, step_mismatch, ..."""
    message: str


ServerEvent = SessionEvent | OutputEvent | CompletionEvent | ResetEvent | ClosedEvent | ErrorEvent
