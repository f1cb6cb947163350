"""Every request's work and memory bounded before any work starts: one home for the caps and typed
numbers that the v1 HTTP API, the WebSocket, the v2 protocol and gRPC all share.

Two layers:

* **Types** (pydantic ``Annotated`` aliases): strict numbers, so ``true`` is never token 0 or
  ``top_k: 1``, with ranges that rule out integer overflow, negative seeds and temperatures too
  small to sample (``logits / 1e-310`` is ``inf`` and softmax turns it into NaN). Out of range is
  a 422 from validation, never a 500 from NumPy.
* **Checks** that need the model or the settings: ``check_top_k``, ``check_completion`` and
  ``check_outputs`` (steps × entries per step, and the response's estimated bytes). Callers run
  them after encoding the inputs (cheap: no math) and before the forward pass.

Transports that do not go through pydantic (v2 tensors, gRPC) call ``check_int_range`` /
``check_seed`` / ``check_temperature`` with their own field names.
"""
from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field, Strict

from service.errors import InvalidInput, PayloadTooLarge

INT64_MAX = 2**63 - 1
SEED_MAX = 2**63 - 1              # numpy's default_rng takes any non-negative int; bounded to stay int64
MAX_TOKEN_ID = 2**31 - 1          # no vocabulary is larger; bigger ids are refused before NumPy sees them
MIN_TEMPERATURE = 1e-3            # below this (and above 0) logits / T overflows float64 for real logits
MAX_TEMPERATURE = 1e3
BYTES_PER_ENTRY = 72              # one top-k entry or number in the JSON reply, label excluded (measured: 55-70)
JSON_BYTES_PER_VALUE = 24         # one v2 tensor value in JSON (measured: 22 for FP32 probabilities); binary is itemsize


def _sampleable(t: float) -> float:
    if 0 < t < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
    return t


# -- types: import these instead of plain int / float ---------------------------------------------
Count = Annotated[int, Strict(), Field(ge=1, le=INT64_MAX)]
TopK = Annotated[int, Strict(), Field(ge=1, le=INT64_MAX, description="the k most likely entries per step; "
                                                                      "capped by the server's max_top_k")]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX, description="for reproducible sampling (0 .. 2**63-1)")]
Temperature = Annotated[float, Strict(), Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                               description=f"0 means greedy; otherwise at least {MIN_TEMPERATURE:g}"),
                        AfterValidator(_sampleable)]
TokenId = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKEN_ID)]
Feature = Annotated[float, Strict(), Field(allow_inf_nan=False)]
StepAt = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX, description=(
    "idempotency: the step count the client expects the session to be at; a retry of an input that was "
    "already applied is answered from the record instead of being applied twice"))]

# A sequence: text (character models), token ids, or feature vectors (T x I).
Sequence = str | list[TokenId] | list[list[Feature]]


# -- checks for transports without pydantic (v2 tensors, gRPC) ------------------------------------
def ascii_int64(text: str) -> int | None:
    """A non-negative int64 written in ASCII digits (a version, a byte count in a header), else None.

    ``str.isdigit`` alone is not the check: it takes '³' and other Unicode digits that ``int``
    refuses (a 500 once, found by schemathesis), and ``int`` refuses more than 4300 digits."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        return None
    value = int(text)
    return value if value <= INT64_MAX else None


def check_int_range(value: int, lo: int, hi: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{where}: must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_seed(seed, where: str = "seed") -> int | None:
    return None if seed is None else check_int_range(seed, 0, SEED_MAX, where)


def check_temperature(t, where: str = "temperature") -> float:
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t <= MAX_TEMPERATURE:
        raise InvalidInput(f"{where}: must be a number in [0, {MAX_TEMPERATURE:g}], got {t!r}")
    try:
        return _sampleable(float(t))
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


# -- checks that need the model or the settings --------------------------------------------------
def check_top_k(top_k: int | None, settings, where: str = "top_k") -> None:
    if top_k is not None and top_k > settings.max_top_k:
        raise InvalidInput(f"{where}: {top_k} is over the limit of {settings.max_top_k}")


def check_batch(n_sequences: int, settings) -> None:
    if n_sequences > settings.max_batch_sequences:
        raise PayloadTooLarge(f"{n_sequences} sequences is over the limit of {settings.max_batch_sequences} "
                              "per request")


def check_steps(n: int, limit: int, where: str = "input") -> None:
    """A sequence of ``n`` steps against a step limit (``max_sequence_length`` or ``max_steps_per_message``)."""
    if n > limit:
        raise PayloadTooLarge(f"{where}: {n} steps is over the limit of {limit}")


def check_response(nbytes: int, settings) -> None:
    """A v2 response's estimated size, checked before the model runs, so no work is wasted on it."""
    if nbytes > settings.max_response_bytes:
        raise PayloadTooLarge(f"the response would be about {nbytes} bytes, over the limit of "
                              f"{settings.max_response_bytes}; send fewer or shorter sequences, or ask for fewer outputs")


def check_completion(n: int, max_length: int, top_k: int | None, settings) -> None:
    check_top_k(top_k, settings)
    if max_length > settings.max_completion_length or n > settings.max_completions:
        raise PayloadTooLarge(f"at most n={settings.max_completions} completions of "
                              f"max_length={settings.max_completion_length}")


def entries_per_step(config, top_k: int | None) -> int:
    """Numbers or top-k entries one step's output holds: all C for binary/regression, else min(k, C)."""
    if config.output in ("binary", "regression"):
        return config.output_size
    return min(top_k or 1, config.output_size)


_LABEL_BYTES: dict[int, tuple[object, int]] = {}     # id(config) -> (config, bytes): the keystroke path checks this


def _label_bytes(config) -> int:
    """The longest label's UTF-8 size, worked out once per config (a config is frozen)."""
    known = _LABEL_BYTES.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    names = config.labels or config.vocab or ()
    size = max((len(str(n).encode()) for n in names), default=len(str(config.output_size)))
    _LABEL_BYTES[id(config)] = (config, size)          # holds the config: its id cannot be reused meanwhile
    return size


def check_outputs(config, steps: int, top_k: int | None, settings, fixed: int = 0) -> None:
    """Refuse a reply of ``steps`` per-step outputs (plus ``fixed`` other entries, e.g. classifiers'
    full probability tables) that would exceed the entry or byte caps."""
    entries = steps * entries_per_step(config, top_k) + fixed
    if entries > settings.max_output_entries:
        raise PayloadTooLarge(f"this reply would hold {entries} outputs ({steps} steps x "
                              f"{entries_per_step(config, top_k)} per step); the limit is "
                              f"{settings.max_output_entries}: send fewer steps or a smaller top_k")
    estimate = entries * (BYTES_PER_ENTRY + _label_bytes(config))
    if estimate > settings.max_response_bytes:
        raise PayloadTooLarge(f"this reply would be about {estimate} bytes, over the limit of "
                              f"{settings.max_response_bytes}: send fewer steps or a smaller top_k")
