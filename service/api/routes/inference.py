"""Stateless inference over HTTP: classify, per-step predict, LM completion.

Endpoints are plain ``def``: FastAPI runs them in a worker thread, so the math never blocks the
event loop.
"""
from __future__ import annotations

from fastapi import APIRouter

from service import inference
from service.api.deps import AppSettings, Registry
from service.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    CompleteRequest,
    CompleteResponse,
    PredictRequest,
    PredictResponse,
)
from service.errors import PayloadTooLarge

router = APIRouter(prefix="/v1/models/{name}", tags=["inference"])


def _check_batch(n: int, settings) -> None:
    if n > settings.max_batch_sequences:
        raise PayloadTooLarge(f"{n} sequences is over the limit of {settings.max_batch_sequences} per request")


@router.post("/classify", response_model=ClassifyResponse)
def classify(name: str, body: ClassifyRequest, registry: Registry, settings: AppSettings):
    """Label each sequence (seq2vec) from its last step; ragged batches give the same as one-by-one."""
    entry = registry.ready(name)
    _check_batch(len(body.inputs), settings)
    seqs = inference.encode_inputs(entry.model, body.inputs, settings.max_sequence_length)
    return {"model": name, "version": entry.version, "results": inference.classify(entry.model, seqs, body.top_k)}


@router.post("/predict", response_model=PredictResponse)
def predict(name: str, body: PredictRequest, registry: Registry, settings: AppSettings):
    """Outputs at every step: bits for echo models, the next-token top-k for language models."""
    entry = registry.ready(name)
    _check_batch(len(body.inputs), settings)
    seqs = inference.encode_inputs(entry.model, body.inputs, settings.max_sequence_length)
    return {"model": name, "version": entry.version, "outputs": inference.predict(entry.model, seqs, body.top_k)}


@router.post("/complete", response_model=CompleteResponse)
def complete(name: str, body: CompleteRequest, registry: Registry, settings: AppSettings):
    """``n`` continuations of a prompt: greedy, temperature and top-k sampling, stop tokens."""
    entry = registry.ready(name)
    if len(body.prompt) > settings.max_sequence_length:
        raise PayloadTooLarge(f"prompt of {len(body.prompt)} characters is over the limit of {settings.max_sequence_length}")
    if body.max_length > settings.max_completion_length or body.n > settings.max_completions:
        raise PayloadTooLarge(f"at most n={settings.max_completions} completions of max_length={settings.max_completion_length}")
    completions = inference.complete(entry.model, body.prompt, body.n, body.max_length, body.temperature, body.top_k,
                                     body.greedy or body.temperature == 0, body.stop, body.seed)
    return {"model": name, "version": entry.version, "prompt": body.prompt, "completions": completions}
