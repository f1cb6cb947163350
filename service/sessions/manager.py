"""Session operations shared by the HTTP session API, the WebSocket stream and the v2 sequences.

One request per session runs at a time (a per-session asyncio lock), steps go through the
model's dynamic batcher, and the new state is committed with a compare-and-set before the reply
is sent. A step resolves its model version once; the batch formats every session's reply.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

import numpy as np

from model_core.backend import to_numpy
from model_core.sampling import complete as sample_completions
from model_core.state import StateFormatError, state_from_bytes, state_to_bytes
from service.encoding import encode_sequence, stop_ids
from service import request_limits as limits
from service.errors import InvalidInput, PayloadTooLarge, ServiceError
from service.outputs import completion_results, timestep_results
from service.registry import ModelEntry, ModelRegistry
from service.batcher_registry import BatcherRegistry
from service.sessions.stepper import StepItem, Stepped, packed_from_host, unpacked
from service.sessions.store import Session, SessionStore, StepMismatch
from service.settings import Settings


class NonFiniteOutput(ServiceError):
    """The step was applied, and its outputs hold NaN or infinity: a strict JSON reply cannot carry them."""

    status, code = 422, "non_finite_output"

    def __init__(self):
        super().__init__("the model produced a non-finite number for this input")


class SessionManager:
    def __init__(self, registry: ModelRegistry, store: SessionStore, settings: Settings, on_batch=None,
                 on_steps=None, batchers: BatcherRegistry | None = None):
        """``on_steps(model, n)``: n recurrent steps were computed for a session on ``model``."""
        self.registry, self.store, self.settings = registry, store, settings
        self._on_steps = on_steps or (lambda model, n: None)
        self.batchers = batchers or BatcherRegistry(settings, registry, on_batch)

    def _entry(self, session: Session) -> ModelEntry:
        """The model version the session started on: a reload never changes a live session's model."""
        self.registry.get(session.model)
        return self.registry.version(session.model, session.model_version)

    # -- lifecycle ----------------------------------------------------------------------------
    async def create(self, model: str, session_id: str | None = None, version: str | None = None) -> Session:
        """A session on the model's current version, or on version number ``version``."""
        entry = self.registry.ready(model, version)
        if entry.model.config.bidirectional:
            raise InvalidInput(f"model {model!r} is bidirectional: it needs whole sequences, so it cannot stream")
        return await self.store.create(model, entry.version, session_id)

    def top_layer_state(self, session: Session) -> dict:
        """The top layer's state after the session's last step, as lists (``c`` for LSTMs, else None)."""
        if session.state is None:
            return {"h": None, "c": None}
        top = [to_numpy(p)[-1, 0].astype(np.float64).round(4) for p in session.state]  # packed: each part (H,)
        if not all(np.isfinite(t).all() for t in top):
            raise NonFiniteOutput()
        return {"h": top[0].tolist(), "c": top[1].tolist() if len(top) > 1 else None}

    def encode(self, session: Session, item, where: str = "input") -> np.ndarray:
        return encode_sequence(self._entry(session).model.config, item, self.settings.max_steps_per_message, where)

    async def step(self, session_id: str, item, top_k: int = 5, expect_at: int | None = None
                   ) -> tuple[Session, list[dict]]:
        """Feed new steps; returns the updated session and one output per step, in order.

        ``expect_at`` (idempotency) is the step count the client expects the session to be at. If the
        session is already past it because this very input was the last one applied (a retry after a
        lost reply, a 503 or a timeout), the recorded reply is returned and nothing is applied again.
        """
        limits.check_top_k(top_k, self.settings)
        session, done = await self._step(session_id, item, expect_at, top_k)
        if not done.finite:
            raise NonFiniteOutput()
        return session, done.outputs

    async def step_logits(self, session_id: str, item, expect_at: int | None = None, top_k: int | None = None,
                          **queueing) -> tuple[Session, np.ndarray]:
        """Feed new steps (raw input or an encoded array); returns the session and logits (K, C).

        ``top_k`` sizes a v1/stream reply for the output caps, checked before any math (None: the
        caller returns raw logits and checks its own reply's size with ``request_limits``).
        ``queueing``: the batcher's ``priority``, ``deadline`` and ``timing`` (see ``DynamicBatcher.submit``).
        """
        session, done = await self._step(session_id, item, expect_at, top_k, raw=True, **queueing)
        return session, done.logits

    async def _step(self, session_id: str, item, expect_at: int | None, top_k: int | None, raw: bool = False,
                    **queueing) -> tuple[Session, Stepped]:
        """The one step path: ``raw`` skips the reply formatting (v2/gRPC send logits)."""
        async with self.store.lock(session_id):
            session = await self.store.get(session_id)
            entry = self._entry(session)                   # once per step: the session's own version
            model = entry.model
            arr = item if isinstance(item, np.ndarray) else encode_sequence(
                model.config, item, self.settings.max_steps_per_message, "input")
            limits.check_steps(len(arr), self.settings.max_steps_per_message)
            if top_k is not None:             # v1 and the stream; v2/gRPC size their raw logits themselves
                limits.check_outputs(model.config, len(arr), top_k, self.settings)
            digest = None
            if expect_at is not None:
                digest = _digest(arr)
                if session.steps != expect_at:
                    return session, self._replay(session, expect_at, digest, len(arr), model, None if raw else top_k)
            if session.steps + len(arr) > self.settings.max_steps_per_session:
                raise PayloadTooLarge(f"session would pass its limit of {self.settings.max_steps_per_session} steps; "
                                      "reset it or start a new one")
            done = await self.batchers.run(entry, "session", StepItem(session.state, arr, None if raw else top_k),
                                            **queueing)
            record = {} if digest is None else {"reply_at": expect_at, "reply_digest": digest,
                                                "reply_logits": done.logits}
            new = session.advanced(done.state, done.logits[-1].copy(), len(arr), **record)   # a row, not a view
            await self.store.put(new, expected_revision=session.revision)      # committed before the reply
        self._on_steps(session.model, len(arr))
        return new, done

    async def already_applied(self, session_id: str, at: int, arr: np.ndarray) -> bool:
        """Whether ``arr``, sent to start at step ``at``, was the session's last step taken (a retry
        whose first reply was lost); False when the session does not exist."""
        try:
            session = await self.store.get(session_id)
        except ServiceError:
            return False
        return session.steps == at + len(arr) and session.recorded(at, _digest(arr)) is not None

    @staticmethod
    def _replay(session: Session, at: int, digest: bytes, k: int, model, top_k: int | None) -> Stepped:
        """The recorded reply of a retried step, or a 409 saying where the session really is."""
        recorded = session.recorded(at, digest)
        if recorded is not None and session.steps == at + k:
            logits = recorded.reshape(k, -1)
            finite = bool(np.isfinite(logits).all())
            outputs = timestep_results(model.config, logits, top_k) if top_k is not None and finite else None
            return Stepped(logits, session.state, finite, outputs)
        raise StepMismatch(f"session {session.id!r} is at step {session.steps}, not {at}, and this input is not a "
                           f"retry of its last step; resume from step {session.steps}")

    async def reset(self, session_id: str) -> Session:
        async with self.store.lock(session_id):
            s = await self.store.get(session_id)
            new = replace(s, state=None, last_output=None, steps=0, revision=s.revision + 1, last_used=time.time())
            return await self.store.put(new, expected_revision=s.revision)

    async def end(self, session_id: str) -> None:
        await self.store.get(session_id)                                 # clear 404/410 when unknown
        await self.store.delete(session_id)

    # -- completion ---------------------------------------------------------------------------
    async def complete(self, session_id: str, n: int, max_length: int, temperature: float, top_k: int | None,
                       greedy: bool, stop: list[str], seed: int | None) -> list[dict]:
        """Continuations from the session's current state, which is left untouched (a use: it keeps
        the session alive)."""
        limits.check_completion(n, max_length, top_k, self.settings)
        session = await self.store.touch(session_id)
        entry = self._entry(session)
        model = entry.model
        if model.config.task != "lm":
            raise InvalidInput(f"model {session.model!r} is a {model.config.task} model; completion needs an lm")
        if session.last_output is None:
            raise InvalidInput("send some input first: a completion continues from the last step's output")
        ids = stop_ids(model.config, stop)

        def run():
            state = model.init_state(1) if session.state is None else unpacked(model.xp.asarray(session.state))
            logits = model.xp.asarray(session.last_output)
            return sample_completions(model, state, logits, n=n, max_length=max_length, temperature=temperature,
                                      top_k=top_k, greedy=greedy, stop_ids=ids, rng=np.random.default_rng(seed))

        outs = await asyncio.get_running_loop().run_in_executor(None, run)
        return completion_results(model.config, outs, ids)

    # -- state export / import ----------------------------------------------------------------
    async def export_state(self, session_id: str) -> bytes:
        """The engine's versioned state bytes (zeros for a session with no steps yet)."""
        s = await self.store.touch(session_id)
        entry = self._entry(s)
        return state_to_bytes(entry.model.init_state(1) if s.state is None else tuple(s.state))

    async def import_state(self, session_id: str, blob: bytes) -> Session:
        async with self.store.lock(session_id):
            s = await self.store.get(session_id)
            entry = self._entry(s)
            try:
                state = packed_from_host(entry.model, state_from_bytes(blob))   # fits this model
            except (StateFormatError, ValueError) as exc:
                raise InvalidInput(f"state not accepted: {exc}") from None
            new = replace(s, state=state, last_output=None, revision=s.revision + 1, last_used=time.time())
            return await self.store.put(new, expected_revision=s.revision)

    async def close(self) -> None:
        await self.batchers.close()
        await self.store.close()


def _digest(arr: np.ndarray) -> bytes:
    """What an input fed, as a short hash: a retry must carry the same input to get the recorded reply."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.digest()
