"""Stateless inference over HTTP: classify, per-step predict, LM completion.

Classify and predict requests go through a per-model dynamic batcher (concurrent requests share
one padded forward, in a worker thread); completion runs in the default executor. The event loop
never blocks on math.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

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
from service.limits import check_batch, check_completion, check_response, check_steps

router = APIRouter(prefix="/v1/models/{name}", tags=["inference"])
V1_BYTES_PER_ENTRY = 64          # one {"label", "index", "probability"} (or bits/values) entry in JSON


async def _batched(kind: str, name: str, inputs: list, registry, settings, request: Request, top_k: int = 0):
    """Validate and encode one request's sequences, then run them through the model's batcher.
    ``top_k``: per-step entries of a predict response, for the response size limit."""
    entry = registry.ready(name)
    inference.check_task(entry.model, kind)
    check_batch(len(inputs), settings)
    seqs = inference.encode_inputs(entry.model, inputs, settings.max_sequence_length)
    if top_k:
        per_step = min(top_k, entry.config.output_size) * V1_BYTES_PER_ENTRY
        check_response(sum(len(s) for s in seqs) * per_step, settings)
    return entry, await request.app.state.stateless.run(entry, kind, seqs)


@router.post("/classify", response_model=ClassifyResponse)
async def classify(name: str, body: ClassifyRequest, registry: Registry, settings: AppSettings, request: Request):
    """Label each sequence (seq2vec) from its last step; ragged batches give the same as one-by-one."""
    entry, logits = await _batched("classify", name, body.inputs, registry, settings, request)
    return {"model": name, "version": entry.version,
            "results": inference.format_classification(entry.model, logits, body.top_k)}


@router.post("/predict", response_model=PredictResponse)
async def predict(name: str, body: PredictRequest, registry: Registry, settings: AppSettings, request: Request):
    """Outputs at every step: bits for echo models, the next-token top-k for language models."""
    entry, logits = await _batched("predict", name, body.inputs, registry, settings, request, top_k=body.top_k)
    return {"model": name, "version": entry.version,
            "outputs": [inference.step_outputs(entry.model, lg, body.top_k) for lg in logits]}


@router.post("/complete", response_model=CompleteResponse)
async def complete(name: str, body: CompleteRequest, registry: Registry, settings: AppSettings):
    """``n`` continuations of a prompt: greedy, temperature and top-k sampling, stop tokens."""
    entry = registry.ready(name)
    check_steps(len(body.prompt), settings.max_sequence_length, "prompt")
    check_completion(body.n, body.max_length, settings)
    completions = await asyncio.get_running_loop().run_in_executor(
        None, inference.complete, entry.model, body.prompt, body.n, body.max_length, body.temperature, body.top_k,
        body.greedy or body.temperature == 0, body.stop, body.seed)
    return {"model": name, "version": entry.version, "prompt": body.prompt, "completions": completions}
