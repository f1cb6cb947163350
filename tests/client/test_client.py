"""The client library, sync flavour, against a real uvicorn: resume, idempotent resend, final errors."""
from __future__ import annotations

import httpx
import pytest

from service.client import SessionClient, SessionLost, StreamClient
from service.client.retry import Backoff, ServiceError


def test_sync_stream_client_resumes_and_never_doubles_a_step(live_server):
    with StreamClient(f"ws://{live_server}", "charlm") as s:
        assert s.feed("hello")["steps"] == 5
        sid = s.session_id
    with StreamClient(f"ws://{live_server}", "charlm", session_id=sid) as s:
        assert s.steps == 5                                          # resumed where it was
        s._client.steps = 0                                           # as if the reply to "hello" had been lost
        again = s.feed("hello")                                       # resent with at=0: answered from the record
        assert again["steps"] == 5 and s.steps == 5
        assert s.feed(" world")["steps"] == 11
        assert len(s.complete(n=2, max_length=4, seed=1)) == 2
        s.end()
    with pytest.raises(SessionLost) as info, StreamClient(f"ws://{live_server}", "charlm", session_id=sid):
        pass
    assert info.value.code == "session_not_found"


def test_sync_session_client_steps_exactly_once(live_server):
    with SessionClient(f"http://{live_server}", backoff=Backoff(attempts=3)) as c:
        s = c.create("charlm")
        c.step(s, "abc")
        s.steps = 0                                                   # the reply was lost: resend
        assert c.step(s, "abc")["steps"] == 3
        assert httpx.get(f"http://{live_server}/v1/sessions/{s.session_id}").json()["steps"] == 3
        with pytest.raises(ServiceError) as info:
            c.step(s, "\u00e9")                                       # at=3 is right, but not in the vocabulary
        assert info.value.status == 422 and info.value.code == "invalid_input"
        s.steps = 1
        with pytest.raises(ServiceError) as info:
            c.step(s, "zz")                                           # not where the session is, not a retry
        assert info.value.code == "step_mismatch" and info.value.status == 409
