"""The retry rule every client follows (sync and asyncio share it).

* 429 ``overloaded`` and 503 ``unavailable`` mean "not applied": wait ``Retry-After`` (or an
  exponential backoff with jitter) and send the same request again.
* 409 ``session_busy``: another step of this session held its lock; retry the same way.
* A timeout or a dropped connection: the step may or may not have been applied. Resend it with
  the same ``at``: the server answers an applied one from its record and applies one that was not.
* Anything else is final: 4xx say what to fix; ``session_state_unknown`` / ``session_expired`` /
  ``session_evicted`` / ``session_not_found`` mean the session is gone (``SessionLost``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

RETRY_CODES = frozenset({"overloaded", "unavailable", "session_busy"})
LOST_CODES = frozenset({"session_state_unknown", "session_expired", "session_evicted", "session_not_found"})


class ServiceError(Exception):
    """A final error reply: ``status`` (HTTP, or None on the stream), ``code`` and ``message``."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


class SessionLost(ServiceError):
    """The session is gone (expired, evicted, ended, or its store lost it); start a new one."""


class StepsLost(ServiceError):
    """The server holds fewer steps than this client saw acknowledged (a store lost recent writes)."""


def error_for(code: str, message: str, status: int | None = None) -> ServiceError:
    return (SessionLost if code in LOST_CODES else ServiceError)(code, message, status)


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``Retry-After`` when the server gives one, else base * 2**n, jittered."""

    attempts: int = 8                  # tries in all, the first included
    base: float = 0.05
    cap: float = 2.0
    deadline: float = 30.0             # give up after this many seconds, whatever ``attempts`` says

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.cap * 4)
            except ValueError:
                pass
        return min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)
