"""Overload sheds load: past ``max_pending_requests`` a request gets 429 with Retry-After, at once."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from service.errors import Overloaded
from service.sessions.batcher import DynamicBatcher
from tests.helpers import free_port, start_server

SEQ = "B" + "ab" * 6 + "X" + "cd" * 20 + "Y" + "ba" * 22 + "E"


def test_batcher_refuses_past_max_pending_and_recovers():
    async def run():
        b = DynamicBatcher(lambda items: [x * 2 for x in items], max_batch=8, max_delay=0.2, max_pending=2)
        first = [asyncio.create_task(b.submit(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as exc:
            await b.submit(99)
        assert exc.value.status == 429 and "retry" in exc.value.message
        assert await asyncio.gather(*first) == [0, 2]
        assert await b.submit(5) == 10                    # room again once the batch has run
        await b.close()
    asyncio.run(run())


def test_http_429_with_retry_after_then_serves_again():
    port = free_port()
    proc = start_server(port, {"RNN_SERVE_MAX_PENDING_REQUESTS": "1", "RNN_SERVE_MAX_QUEUE_DELAY_MS": "800"})
    url = f"http://127.0.0.1:{port}/v1/models/temporal-order/classify"
    try:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", httpx.post(url, json={"inputs": [SEQ]}, timeout=30)))
        t.start()
        time.sleep(0.3)                                       # the first request waits in the batcher
        r = httpx.post(url, json={"inputs": [SEQ]}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        t.join(30)
        assert result["r"].status_code == 200
        assert httpx.post(url, json={"inputs": [SEQ]}, timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
