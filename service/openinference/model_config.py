"""Triton's model configuration extension: what the service really does with a model, as Triton's JSON.

Every value comes from the model and ``Settings``, so the config cannot drift from behaviour:

* ``max_batch_size`` is ``max_batch_sequences`` (sequences per request); ``dims`` leave out the
  batch dimension, as Triton's do when ``max_batch_size`` > 0;
* ``dynamic_batching`` (when ``batching`` is on) is the stateless batcher: its delay, priority
  levels and queue policy (requests over ``max_pending_requests`` are rejected; a request's
  ``timeout`` overrides the default of none);
* ``sequence_batching`` (models that can stream) is the session path: the idle timeout is the
  session TTL, the ``oldest`` strategy is the session batcher, the control inputs name the
  signals the service acts on (Triton's START/END/CORRID; the model never sees them as tensors)
  and ``state`` is the recurrent state the service keeps between requests (Triton's implicit state).

Triton's protobuf ``ModelConfig`` has ``dynamic_batching`` and ``sequence_batching`` in one
``oneof``; over gRPC only ``sequence_batching`` fits (its ``oldest`` strategy carries the session
batcher), see ``for_protobuf``.
"""
from __future__ import annotations

from service.openinference.tensors import input_spec, output_spec, platform
from service.sessions.batcher import DEFAULT_PRIORITY, PRIORITY_LEVELS
from service.settings import Settings

TRITON_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
                "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
                "BYTES": "TYPE_STRING"}
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "float16": "TYPE_FP16"}


def _tensor(t: dict) -> dict:
    """A v2 tensor spec [B, ...] -> Triton's config entry (dims without the batch dimension)."""
    dims = list(t["shape"][1:])
    out = {"name": t["name"], "data_type": TRITON_TYPES[t["datatype"]], "dims": dims or [1]}
    if not dims:
        out["reshape"] = {"shape": []}                   # [B] on the wire is [B, 1] in Triton's terms
    if t.get("optional"):
        out["optional"] = True
    return out


def _states(entry) -> list[dict]:
    model = entry.model
    shapes = [(p.shape, str(p.dtype)) for p in model.init_state(1)]          # (L*D, 1, H) each
    names = ["STATE_H", "STATE_C"] if len(shapes) == 2 else ["STATE"]
    return [{"input_name": f"{n}_IN", "output_name": f"{n}_OUT", "data_type": _NUMPY_TYPES.get(dtype, "TYPE_FP32"),
             "dims": [shape[0], shape[2]]} for n, (shape, dtype) in zip(names, shapes)]


def model_config(entry, policy: dict, settings: Settings) -> dict:
    """``GET /v2/models/{m}[/versions/{v}]/config``. ``policy``: the model's ``version_policy`` (Triton's JSON)."""
    c = entry.config
    delay_us = int(settings.max_queue_delay_ms * 1000)
    cfg = {
        "name": entry.name, "platform": platform(entry), "backend": "rnn-serve", "version_policy": policy,
        "max_batch_size": settings.max_batch_sequences,
        "input": [_tensor(t) for t in input_spec(c)], "output": [_tensor(t) for t in output_spec(c)],
        "instance_group": [{"name": entry.name, "kind": "KIND_GPU" if entry.model.device != "cpu" else "KIND_CPU",
                            "count": 1}],
        "model_transaction_policy": {"decoupled": False},
        "parameters": {"task": {"string_value": c.task}, "version_label": {"string_value": entry.version},
                       "format": {"string_value": entry.format}},
    }
    if settings.batching:
        cfg["dynamic_batching"] = {
            "max_queue_delay_microseconds": delay_us, "preserve_ordering": False,
            "priority_levels": PRIORITY_LEVELS, "default_priority_level": DEFAULT_PRIORITY,
            "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 0,
                                     "allow_timeout_override": True, "max_queue_size": settings.max_pending_requests},
        }
    if not c.bidirectional:
        strategy = ({"oldest": {"max_candidate_sequences": settings.max_batch_size,
                                "max_queue_delay_microseconds": delay_us}} if settings.batching else {"direct": {}})
        cfg["sequence_batching"] = {
            "max_sequence_idle_microseconds": int(settings.session_ttl_seconds * 1_000_000),
            "control_input": [
                {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
                {"name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "int32_false_true": [0, 1]}]},
                {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}]},
            ],
            "state": _states(entry),
            **strategy,
        }
    return cfg


def for_protobuf(cfg: dict) -> dict:
    """The config with one scheduling choice, as Triton's ``ModelConfig`` oneof requires: sequence
    batching when the model streams (its ``oldest`` strategy is the batcher), else dynamic batching."""
    if "sequence_batching" in cfg:
        return {k: v for k, v in cfg.items() if k != "dynamic_batching"}
    return cfg
