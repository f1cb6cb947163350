"""Request and response bodies of the v1 HTTP API (they document themselves in OpenAPI).

The per-step outputs and completions are ``TypedDict``s: the code builds plain dicts (nothing is
validated on the way out of a WebSocket), and the same types give OpenAPI and AsyncAPI their schemas.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict

from service.request_limits import Count, Seed, Sequence, Temperature, TopK

__all__ = ["Sequence"]       # re-exported: the routes import the input type from here

# what the service sends: a schema that names every key (a new key is a contract change)
SENT = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": ["BaXbcYdE"], "top_k": 2}]})
    inputs: list[Sequence] = Field(min_length=1, description="a batch of sequences; ragged lengths are fine")
    top_k: TopK | None = Field(None, description="also return the k most likely labels")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": ["To be, or not"], "top_k": 3}]})
    inputs: list[Sequence] = Field(min_length=1)
    top_k: TopK = Field(5, description="for softmax outputs: the k most likely tokens at each step")


class CompletionOptions(BaseModel):
    """Sampling options shared by every completion endpoint and the WebSocket ``complete`` message."""

    model_config = ConfigDict(extra="forbid")
    n: Count = Field(1, description="number of completions")
    max_length: Count = Field(32, description="characters to generate at most")
    temperature: Temperature = 1.0
    top_k: TopK | None = None
    greedy: bool = Field(False, strict=True)
    stop: list[str] = Field(default_factory=list, description="tokens that end a completion (included)")
    seed: Seed | None = None


class CompleteRequest(CompletionOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prompt": "ROMEO:", "n": 2, "max_length": 40}]})
    prompt: str = Field(min_length=1)


@with_config(SENT)
class TopKEntry(TypedDict):
    label: str
    """the token (language models) or the class label"""
    index: int
    probability: float


@with_config(SENT)
class TopKOutput(TypedDict):
    """A softmax step: the k likeliest next tokens (language models) or classes (classifiers, running)."""

    top_k: list[TopKEntry]


@with_config(SENT)
class BitsOutput(TypedDict):
    """A binary step (independent sigmoids, e.g. the echo model)."""

    probabilities: list[float]
    bits: list[Literal[0, 1]]


@with_config(SENT)
class ValuesOutput(TypedDict):
    """A regression step: the raw outputs."""

    values: list[float]


StepOutput = TopKOutput | BitsOutput | ValuesOutput


@with_config(SENT)
class Completion(TypedDict):
    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]


class Classification(BaseModel):
    label: str
    index: int
    probabilities: dict[str, float]
    top_k: list[dict] | None = None


class ClassifyResponse(BaseModel):
    model: str
    version: str
    results: list[Classification]


class PredictResponse(BaseModel):
    model: str
    version: str
    outputs: list[list[dict]] = Field(description="per sequence, per step")


class CompleteResponse(BaseModel):
    model: str
    version: str
    prompt: str
    completions: list[Completion]
