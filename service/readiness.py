"""Readiness policy (``RNN_SERVE_READY_WHEN``): when a replica should take traffic.

* ``any`` (default): at least one model is ready. A replica with some failed models serves the
  rest; the failures are listed in ``/v1/models`` and the ``rnn_model_loaded`` gauge.
* ``all``: every model in the repository is ready (one bad file keeps the replica out of rotation).
* ``name,name2``: those models are ready (the ones the deployment cannot do without).
"""
from __future__ import annotations

from service.registry import ModelRegistry


def not_ready_reason(registry: ModelRegistry, policy: str) -> str | None:
    """None when ready under ``policy``, else what is missing."""
    entries = registry.entries()
    ready = {e.name for e in entries if e.status == "ready"}
    failed = sorted(e.name for e in entries if e.status != "ready")
    policy = policy.strip()
    if policy == "any":
        return None if ready else "no model is ready" + (f" (failed: {', '.join(failed)})" if failed else "")
    if policy == "all":
        return None if entries and not failed else f"models not ready: {', '.join(failed) or 'none loaded'}"
    required = [n.strip() for n in policy.split(",") if n.strip()]
    missing = [n for n in required if n not in ready]
    return None if required and not missing else f"required models not ready: {', '.join(missing) or '(none listed)'}"
