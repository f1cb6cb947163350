"""One v2 inference request against the registry, the session store and the batchers.

This is the only place that checks tensors against a model; the HTTP routes and the gRPC
servicer decode their wire format into ``types.InferRequest`` and encode the ``InferResponse``.
"""
from __future__ import annotations

import numpy as np

from service.errors import ServiceError
from service.kserve import V2Error, build_outputs, parse_inputs, sequence_params
from service.openinference.types import InferOutput, InferRequest, InferResponse
from service.sessions.store import SessionNotFound


class V2Inference:
    """Implements ``types.InferenceBackend`` over the app's registry, sessions and stateless batchers."""

    def __init__(self, registry, sessions, stateless):
        self.registry, self.sessions, self.stateless = registry, sessions, stateless

    async def infer(self, request: InferRequest) -> InferResponse:
        try:
            return await self._infer(request)
        except V2Error:
            raise
        except ServiceError as exc:
            raise V2Error(exc.message, status=exc.status) from None

    async def _infer(self, req: InferRequest) -> InferResponse:
        name = req.model_name
        entry = self.registry.ready(name)
        if req.model_version not in (None, "", entry.version):
            raise V2Error(f"model {name!r} has version {entry.version!r}, not {req.model_version!r}", status=404)
        c = entry.config
        tensors = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": t.data}
                   for t in req.inputs]
        seqs, lengths = parse_inputs(c, tensors)
        seq_id, start, end = sequence_params(req.parameters)
        params = {}
        if seq_id is None:
            logits = await self._stateless(entry, seqs, lengths)
        else:
            if len(seqs) != 1:
                raise V2Error("a sequence request must have batch size 1")
            logits = await self._sequence_step(name, seq_id, start, end, seqs[0])
            params["sequence_id"] = req.parameters["sequence_id"]
        requested = [{"name": o.name} for o in req.outputs] if req.outputs else None
        outputs = [InferOutput(o["name"], o["datatype"], tuple(o["shape"]),
                               np.asarray(o["data"]).reshape(o["shape"]))
                   for o in build_outputs(c, logits, requested)]
        return InferResponse(name, entry.version, outputs, id=req.id, parameters=params)

    async def _stateless(self, entry, seqs, lengths) -> np.ndarray:
        """Through the same batcher as v1: (B, C) for classifiers, (B, T, C) zero-padded otherwise."""
        if entry.config.task == "classify":
            return await self.stateless.run(entry, "classify", seqs)
        per_seq = await self.stateless.run(entry, "predict", seqs)
        out = np.zeros((len(seqs), int(lengths.max()), entry.config.output_size), dtype=np.float32)
        for b, lg in enumerate(per_seq):
            out[b, : len(lg)] = lg
        return out

    async def _sequence_step(self, name, seq_id, start, end, inputs) -> np.ndarray:
        sessions = self.sessions
        sid = f"v2:{name}:{seq_id}"
        if start:
            try:
                await sessions.end(sid)                       # a new start resets a sequence still held
            except ServiceError:
                pass
            await sessions.create(name, session_id=sid)
        try:
            session = await sessions.store.get(sid)
        except SessionNotFound:
            raise V2Error(f"sequence {seq_id!r} is not active on model {name!r}: its first request needs "
                          "parameters.sequence_start=true") from None
        if session.model != name:
            raise V2Error(f"sequence {seq_id!r} belongs to model {session.model!r}")
        _, logits = await sessions.step_logits(sid, inputs)
        if end:
            await sessions.store.delete(sid)
        model = sessions.registry.version(name, session.model_version).model
        return logits[-1:] if model.config.task == "classify" else logits[None]          # (1, C) or (1, T, C)
