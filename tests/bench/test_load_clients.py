"""The lean load clients against the real server: ``scripts.ws_load`` (typists; and the transport
floor) and ``scripts.http_load`` (session filling). Every request answered, replies checked, the
server's errors counted rather than hidden."""
import asyncio

import pytest

import httpx

from scripts.http_load import fill_sessions
from scripts.loadtest import TEXT, Floor
from scripts.ws_load import type_into


def test_typists_get_one_reply_per_keystroke(live_server):
    tally, started = asyncio.run(type_into(f"ws://{live_server}/v1/models/charlm/stream", list(TEXT), 8, 0.01, count=5))
    assert tally.errors == []
    assert tally.replies == len(tally.rtts) == 40
    assert all(0 < r < 30 for r in tally.rtts) and started > 0


def test_error_replies_and_refused_handshakes_are_counted(live_server):
    # a character outside the vocabulary: every reply is an error event, and each one is counted
    tally, _ = asyncio.run(type_into(f"ws://{live_server}/v1/models/charlm/stream", ["\u2603"], 3, 0.01, count=2))
    assert tally.replies == 6 and len(tally.errors) == 6
    assert all('"type":"error"' in e for e in tally.errors)
    # an unknown model: the server closes the socket with an error; the run ends instead of hanging
    tally, _ = asyncio.run(asyncio.wait_for(
        type_into(f"ws://{live_server}/v1/models/nope/stream", list(TEXT), 2, 0.01, count=2), 30))
    assert tally.replies == 0 and len(tally.errors) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("raw", [False, True], ids=["uvicorn", "bare-protocol"])
def test_transport_floors_answer_like_the_stream(raw):
    with Floor(raw=raw) as floor:                      # what the load test starts for its floor rows
        tally, _ = asyncio.run(type_into(f"ws://{floor.host}/", list(TEXT), 4, 0.01, count=3))
    assert tally.errors == [] and tally.replies == 12


def _active(server: str) -> int:
    text = httpx.get(f"http://{server}/metrics").text
    return int(float(next(line.split()[1] for line in text.splitlines() if line.startswith("rnn_sessions_active "))))


def test_fill_sessions_creates_and_feeds_each_one(live_server):
    host, port = live_server.split(":")
    before = _active(live_server)
    assert asyncio.run(fill_sessions(host, int(port), 23, "charlm", "ab", concurrency=4)) == []
    assert _active(live_server) == before + 23
    errors = asyncio.run(fill_sessions(host, int(port), 3, "nope", "ab", concurrency=2))
    assert len(errors) == 3 and all(e.startswith("create: 404") for e in errors)

