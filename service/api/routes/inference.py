"""Stateless inference over HTTP: classify, per-step predict, LM completion.

Classify and predict requests go through a per-model dynamic batcher (concurrent requests share
one padded forward, in a worker thread); completion runs in the default executor. The event loop
never blocks on math.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from service import outputs, stateless
from service import request_limits as limits
from service.api.deps import AppSettings, Registry
from service.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    CompleteRequest,
    CompleteResponse,
    PredictRequest,
    PredictResponse,
)
from service.errors import error_responses

router = APIRouter(prefix="/v1/models/{name}", tags=["inference"],
                   responses=error_responses(401, 404, 413, 422, 503))


async def _batched(kind: str, name: str, inputs: list, top_k: int | None, registry, settings, request: Request):
    """Validate and encode one request's sequences, check the reply's size, then run them through
    the model's batcher."""
    entry = registry.ready(name)
    stateless.check_task(entry.model, kind)
    limits.check_batch(len(inputs), settings)
    limits.check_top_k(top_k, settings)
    seqs = stateless.encode_inputs(entry.model, inputs, settings.max_sequence_length)
    config = entry.model.config
    if kind == "classify":                  # one result per sequence: the whole table, plus the top-k
        limits.check_outputs(config, len(seqs) if top_k else 0, top_k, settings, fixed=len(seqs) * config.output_size)
    else:
        limits.check_outputs(config, sum(len(s) for s in seqs), top_k, settings)
    return entry, await request.app.state.batchers.run(entry, kind, seqs)


@router.post("/classify", response_model=ClassifyResponse, responses=error_responses(429))
async def classify(name: str, body: ClassifyRequest, registry: Registry, settings: AppSettings, request: Request):
    """Label each sequence (seq2vec) from its last step; ragged batches give the same as one-by-one."""
    entry, logits = await _batched("classify", name, body.inputs, body.top_k, registry, settings, request)
    return {"model": name, "version": entry.version,
            "results": outputs.format_classification(entry.model.config, logits, body.top_k)}


@router.post("/predict", response_model=PredictResponse, responses=error_responses(429))
async def predict(name: str, body: PredictRequest, registry: Registry, settings: AppSettings, request: Request):
    """Outputs at every step: bits for echo models, the next-token top-k for language models."""
    entry, logits = await _batched("predict", name, body.inputs, body.top_k, registry, settings, request)
    return {"model": name, "version": entry.version,
            "outputs": [outputs.timestep_results(entry.model.config, lg, body.top_k) for lg in logits]}


@router.post("/complete", response_model=CompleteResponse)
async def complete(name: str, body: CompleteRequest, registry: Registry, settings: AppSettings):
    """``n`` continuations of a prompt: greedy, temperature and top-k sampling, stop tokens."""
    entry = registry.ready(name)
    limits.check_steps(len(body.prompt), settings.max_sequence_length, "prompt")
    limits.check_completion(body.n, body.max_length, body.top_k, settings)
    completions = await asyncio.get_running_loop().run_in_executor(
        None, stateless.complete, entry.model, body.prompt, body.n, body.max_length, body.temperature, body.top_k,
        body.greedy or body.temperature == 0, body.stop, body.seed)
    return {"model": name, "version": entry.version, "prompt": body.prompt, "completions": completions}
