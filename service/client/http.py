"""HTTP sessions with exactly-once steps: ``SessionClient`` (sync) and ``AsyncSessionClient``.

Each ``step`` carries ``at`` (the steps this client has seen acknowledged), so resending after a
429/503, a timeout or a dropped connection never applies an input twice.
"""
from __future__ import annotations

import asyncio
import time

import httpx

from service.client.retry import RETRY_CODES, Backoff, ServiceError, StepsLost, error_for

_TRANSIENT = (httpx.TimeoutException, httpx.TransportError)


def _code(r: httpx.Response) -> tuple[str, str]:
    try:
        err = r.json()["error"]
        return (err["code"], err["message"]) if isinstance(err, dict) else ("error", str(err))
    except (ValueError, KeyError, TypeError):
        return "http_error", r.text[:200]


def _outcome(r: httpx.Response) -> tuple[bool, str | None]:
    """(retry?, Retry-After) for a reply; raises the final errors."""
    if r.status_code < 400:
        return False, None
    code, message = _code(r)
    if r.status_code in (429, 503) or code in RETRY_CODES:
        return True, r.headers.get("retry-after")
    raise error_for(code, message, r.status_code)


class Session:
    """A session as this client knows it: its id and the steps acknowledged so far (the next ``at``)."""

    def __init__(self, session_id: str, steps: int):
        self.session_id, self.steps = session_id, steps

    def _step_body(self, item, top_k: int) -> dict:
        return {"input": item, "top_k": top_k, "at": self.steps}

    def _accept(self, reply: dict) -> dict:
        if reply["steps"] < self.steps:
            raise StepsLost("steps_lost", f"server holds {reply['steps']} steps, {self.steps} were acknowledged")
        self.steps = reply["steps"]
        return reply


class SessionClient:
    """``with SessionClient(url, api_key=...) as c: s = c.create("charlm"); c.step(s, "hel")``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 backoff: Backoff = Backoff()):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http, self.backoff = httpx.Client(base_url=base_url, headers=headers, timeout=timeout), backoff
        self.retries = 0                                 # for callers' reports

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.http.close()

    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        start = time.monotonic()
        for attempt in range(self.backoff.attempts):
            last = attempt == self.backoff.attempts - 1 or time.monotonic() - start > self.backoff.deadline
            try:
                r = self.http.request(method, path, **kw)
            except _TRANSIENT:
                if last:
                    raise
                self.retries += 1
                time.sleep(self.backoff.delay(attempt))
                continue
            retry, after = _outcome(r)
            if not retry:
                return r
            if last:
                raise error_for(*_code(r), r.status_code)
            self.retries += 1
            time.sleep(self.backoff.delay(attempt, after))
        raise AssertionError("unreachable")

    def create(self, model: str) -> Session:
        info = self._send("POST", "/v1/sessions", json={"model": model}).json()
        return Session(info["session_id"], info["steps"])

    def resume(self, session_id: str) -> Session:
        return Session(session_id, self._send("GET", f"/v1/sessions/{session_id}").json()["steps"])

    def step(self, session: Session, item, top_k: int = 5) -> dict:
        r = self._send("POST", f"/v1/sessions/{session.session_id}/step", json=session._step_body(item, top_k))
        return session._accept(r.json())

    def end(self, session: Session) -> None:
        self._send("DELETE", f"/v1/sessions/{session.session_id}")


class AsyncSessionClient:
    """The asyncio twin of ``SessionClient``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 backoff: Backoff = Backoff(), **httpx_kw):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, **httpx_kw)
        self.backoff, self.retries = backoff, 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()

    async def _send(self, method: str, path: str, **kw) -> httpx.Response:
        start = time.monotonic()
        for attempt in range(self.backoff.attempts):
            last = attempt == self.backoff.attempts - 1 or time.monotonic() - start > self.backoff.deadline
            try:
                r = await self.http.request(method, path, **kw)
            except _TRANSIENT:
                if last:
                    raise
                self.retries += 1
                await asyncio.sleep(self.backoff.delay(attempt))
                continue
            retry, after = _outcome(r)
            if not retry:
                return r
            if last:
                raise error_for(*_code(r), r.status_code)
            self.retries += 1
            await asyncio.sleep(self.backoff.delay(attempt, after))
        raise AssertionError("unreachable")

    async def create(self, model: str) -> Session:
        info = (await self._send("POST", "/v1/sessions", json={"model": model})).json()
        return Session(info["session_id"], info["steps"])

    async def resume(self, session_id: str) -> Session:
        return Session(session_id, (await self._send("GET", f"/v1/sessions/{session_id}")).json()["steps"])

    async def step(self, session: Session, item, top_k: int = 5) -> dict:
        r = await self._send("POST", f"/v1/sessions/{session.session_id}/step", json=session._step_body(item, top_k))
        return session._accept(r.json())

    async def end(self, session: Session) -> None:
        await self._send("DELETE", f"/v1/sessions/{session.session_id}")


__all__ = ["AsyncSessionClient", "ServiceError", "Session", "SessionClient"]
