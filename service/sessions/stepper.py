"""Advance many sessions at once: one batched step (or padded forward) over their new inputs.

Each session brings its state and K_i new steps. When every K_i is 1 (a batch of keystrokes) the
batch goes through the model's one-step path, ``model.step``. Otherwise the inputs are padded to
max K_i with ``lengths``, so packed-sequence semantics give every session exactly its own result:
outputs for its K_i steps and its state after the last of them. Outputs are the head applied at
every step, which for a classifier is the running class logits.

Everything that can be done for the batch as a whole is done once: stacking the states, the
finiteness check, and the reply formatting (one softmax and one sort over every session's rows).
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np

from model_core.backend import to_numpy
from service.encoding import pad_batch
from service.outputs import timestep_results


class StepItem(NamedTuple):
    """One session's share of a batch."""

    state: object                 # its packed B=1 state (see ``packed``), or None for zeros
    inputs: np.ndarray            # (K,) token ids or (K, I) features
    top_k: int | None             # format the outputs with this top_k; None: the caller wants raw logits


class Stepped(NamedTuple):
    logits: np.ndarray            # (K, C) float32, the session's own copy
    state: object                 # the new packed B=1 state, the session's own copy
    finite: bool                  # every logit is finite (a reply may be sent as strict JSON)
    outputs: list | None          # one formatted output per step, when the item asked for top_k


_zeros: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_packed_zeros: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _zero_state(model):
    """The model's B=1 zero state, made once per model (never written to)."""
    z = _zeros.get(model)
    if z is None:
        z = _zeros[model] = model.init_state(1)
    return z


# A session keeps its state packed: the engine's B=1 parts (h, or h and c) stacked on a leading
# axis, (P, L*D, 1, H), one array. That is ~200 bytes a session less than a tuple of arrays, a batch
# is one concatenate along the batch axis whose parts are already contiguous, and the store never
# needs to know the model's state form.
def packed(state: tuple, xp=np):
    """Engine state -> the packed (P, L*D, B, H) array (a new one: ``stack``'s checks cost 2x)."""
    out = xp.empty((len(state), *state[0].shape), state[0].dtype)
    for k, part in enumerate(state):
        out[k] = part
    return out


def unpacked(state) -> tuple:
    """Packed (P, L*D, B, H) -> the engine's state tuple."""
    return tuple(state)


def packed_from_host(model, host_parts: tuple):
    """Parts read from state bytes -> a packed state for this model; ValueError if they do not fit it."""
    want = _zero_state(model)
    if len(host_parts) != len(want):
        raise ValueError(f"state has {len(host_parts)} part(s), this model needs {len(want)}")
    for p, z in zip(host_parts, want):
        if p.shape != z.shape or p.dtype != z.dtype:
            raise ValueError(f"state has shape {p.shape} {p.dtype}, this model needs {z.shape} {z.dtype}")
    return packed(tuple(host_parts))


def advance(model, items: list[StepItem]) -> list[Stepped]:
    """Run each session's new steps; one result per item, in order."""
    xp = model.xp
    zero = _zeros_packed(model)
    states = [zero if it.state is None else it.state for it in items]
    if xp is not np:                        # an imported or Redis-loaded state arrives on the host
        states = [xp.asarray(s) for s in states]
    batch = states[0] if len(states) == 1 else xp.concatenate(states, axis=2)   # (P, L*D, B, H)
    state = unpacked(batch)
    lengths = [len(it.inputs) for it in items]
    if max(lengths) == 1:                                       # keystrokes: the engine's step path
        x = items[0].inputs if len(items) == 1 else np.concatenate([it.inputs for it in items])
        logits, new_state = model.step(x, state)                # (B, C)
        logits = to_numpy(logits).astype(np.float32, copy=False)[None]        # (1, B, C)
    else:
        x, lens = pad_batch(model.config, [it.inputs for it in items])
        logits, new_state = model.forward_steps(x, state, lengths=lens)      # equal lengths skip masking
        logits = to_numpy(logits).astype(np.float32, copy=False)              # (K, B, C)
    finite = np.isfinite(logits).all(axis=(0, 2)).tolist()                    # (B,)
    outputs = _format(model, logits, lengths, [it.top_k for it in items], finite)
    new = packed(new_state, xp)                                               # (P, L*D, B, H), a new array
    if len(items) == 1:
        return [Stepped(logits[:, 0].copy(), new, finite[0], outputs[0])]
    # copies: a session must not keep the whole batch's arrays alive while it idles
    return [Stepped(logits[:k, b].copy(), new[:, :, b:b + 1].copy(), finite[b], outputs[b])
            for b, k in enumerate(lengths)]


def _zeros_packed(model):
    """The packed zero state, made once per model (never written to: a batch concatenates copies)."""
    z = _packed_zeros.get(model)
    if z is None:
        z = _packed_zeros[model] = packed(_zero_state(model), model.xp)
    return z


def _format(model, logits: np.ndarray, lengths: list[int], top_ks: list[int | None], finite: list[bool]) -> list:
    """Per item, its formatted outputs (None where not wanted or not finite): one call for the batch."""
    want = [b for b, k in enumerate(top_ks) if k is not None and finite[b]]
    out: list = [None] * len(lengths)
    if not want:
        return out
    rows = np.concatenate([logits[:lengths[b], b] for b in want]) if len(want) > 1 else logits[:lengths[want[0]], want[0]]
    k_max = max(top_ks[b] for b in want)
    formatted = timestep_results(model.config, rows, k_max)
    start = 0
    for b in want:
        mine, start, k = formatted[start:start + lengths[b]], start + lengths[b], top_ks[b]
        if k < k_max and mine and "top_k" in mine[0]:            # the best k of the best k_max: same order
            mine = [{"top_k": o["top_k"][:k]} for o in mine]
        out[b] = mine
    return out
