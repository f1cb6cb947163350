"""``SequenceModel``: input encoding, a recurrent stack and a linear head, for three tasks.

* ``classify`` (seq2vec): logits (B, C) from each sequence's last valid step.
* ``seq2seq``: logits (T, B, C) at every step.
* ``lm``: next-token logits (T, B, V) at every step, plus sampling for autocomplete.

Inputs are time-major: token ids (T, B) or features (T, B, I). States are values passed in and
returned (``model_core.state`` slices, stacks and serialises them); the model stores nothing per
call, so one instance serves many sessions and threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model_core.backend import device_of
from model_core.config import ModelConfig
from model_core.inputs import features_problem, token_ids_problem
from model_core.nn import GRU, LSTM, RNN, Embedding, Linear
from model_core.nn.recurrent_base import StackCache

_CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


@dataclass(frozen=True)
class ModelCache:
    """What ``backward`` needs from ``forward_train``: the raw inputs (for the embedding's
    gradient), the recurrent stack's cache, and the head's input."""
    inputs: Any
    rnn: StackCache
    feats: Any                  # (B, D*H) for classify (the final state's top layer), else (T, B, D*H)


class SequenceModel:
    def __init__(self, config: ModelConfig, device: str = "cpu", dtype="float32", seed: int | None = None):
        self.config = config
        seeds = np.random.SeedSequence(seed).generate_state(3) if seed is not None else (None,) * 3
        c = config
        self.embedding = (Embedding(c.input_size, c.embedding_dim, device=device, dtype=dtype, seed=int_or_none(seeds[0]))
                          if c.input_encoding == "embedding" else None)
        kwargs = {"nonlinearity": c.nonlinearity} if c.cell == "rnn" else {}
        self.rnn = _CELLS[c.cell](c.rnn_input_size, c.hidden_size, num_layers=c.num_layers, bias=c.bias,
                                  dropout=c.dropout, bidirectional=c.bidirectional, device=device, dtype=dtype,
                                  seed=int_or_none(seeds[1]), **kwargs)
        D = 2 if c.bidirectional else 1
        self.head = Linear(D * c.hidden_size, c.output_size, device=device, dtype=dtype, seed=int_or_none(seeds[2]))

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def xp(self):
        return self.rnn.xp

    @property
    def device(self) -> str:
        return self.rnn.device

    @property
    def dtype(self):
        return self.rnn.dtype

    @property
    def weight_format(self) -> str:
        return self.rnn.weight_format

    def _modules(self):
        mods = {"rnn": self.rnn, "head": self.head}
        if self.embedding is not None:
            mods = {"embedding": self.embedding, **mods}
        return mods

    def parameters(self) -> dict:
        """Live parameter arrays as ``embedding.weight``, ``rnn.weight_ih_l0``, ``head.bias``, ..."""
        return {f"{m}.{k}": v for m, mod in self._modules().items() for k, v in mod.parameters().items()}

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.parameters().values()))

    def freeze(self, weights: str = "float32") -> SequenceModel:
        """Make every parameter read-only (NumPy's ``writeable`` flag): an in-place write raises, so
        the kernels may keep layouts derived from the weights (the packed W_hh of a batched step).
        For models that only serve; a model being trained stays writable. No-op on a GPU.
        weights="bfloat16": the recurrent layers' inference reads bfloat16 weights (LSTM, GRU on the CPU:
        ``RecurrentBase.freeze``), float32 arithmetic; the embedding and head stay float32."""
        self.rnn.freeze(weights=weights)                  # first: it checks ``weights``
        for mod in self._modules().values():
            if mod is not self.rnn:
                mod.freeze()
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"{m}.{k}": v for m, mod in self._modules().items() for k, v in mod.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        mods = self._modules()
        expected = set(self.parameters())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for m, mod in mods.items():
            mod.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(m + ".")})

    def to(self, device: str) -> SequenceModel:
        """A copy on ``device``; the original is untouched (moves are always explicit)."""
        clone = object.__new__(SequenceModel)
        clone.config = self.config
        clone.embedding = self.embedding.to(device) if self.embedding is not None else None
        clone.rnn, clone.head = self.rnn.to(device), self.head.to(device)
        return clone

    def init_state(self, batch: int = 1) -> tuple:
        """The zero state: ``(h,)`` or ``(h, c)``, each (L*D, B, H)."""
        return self.rnn.init_states(batch)

    def describe(self) -> dict:
        """Nothing beyond the config: a checkpoint has no graph or card to show."""
        return {}

    def __repr__(self) -> str:
        c = self.config
        return (f"SequenceModel(task={c.task!r}, cell={c.cell!r}, input={c.input_encoding}:{c.input_size}, "
                f"hidden={c.hidden_size}x{c.num_layers}, out={c.output_size}, device={self.device!r})")

    # -- inputs -------------------------------------------------------------------------------
    def encode(self, inputs):
        """Token ids (T, B) or features (T, B, I) -> RNN inputs (T, B, I')."""
        c, xp = self.config, self.xp
        if self.xp is np and device_of(inputs) == "gpu":
            raise ValueError("inputs are GPU arrays but the model is on the CPU")
        if c.uses_tokens:
            ids = xp.asarray(inputs)
            if ids.ndim != 2:
                raise ValueError(f"token inputs must be an integer array (T, B), got {ids.dtype} {tuple(ids.shape)}")
            problem = token_ids_problem(c, ids)
            if problem:
                raise ValueError(problem)
            if self.embedding is not None:
                return self.embedding.lookup(ids)                                   # checked just above
            return xp.eye(c.input_size, dtype=self.dtype)[ids]                     # one-hot (T, B, V)
        x = xp.asarray(inputs)
        if x.ndim != 3 or features_problem(c, x, finite=False):
            raise ValueError(f"feature inputs must be numbers (T, B, {c.input_size}), got {x.dtype} {tuple(x.shape)}")
        return x.astype(self.dtype, copy=False)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, inputs, state=None, lengths=None):
        """Returns (logits, state): (B, C) for classify, (T, B, C) otherwise."""
        out, state, _ = self._run(inputs, state, lengths, train=False, rng=None)
        return out, state

    __call__ = forward

    def forward_steps(self, inputs, state=None, lengths=None):
        """Returns (logits (T, B, C), state): the head at every step, for every task.

        For a classifier these are the running class logits (what it would say if the sequence
        ended there); with ``lengths``, steps past a sequence's end are padding.
        """
        y, new_state = self.rnn.forward_states(self.encode(inputs), state, lengths)
        return self.head.forward(y), new_state

    def forward_train(self, inputs, state=None, lengths=None, rng=None):
        return self._run(inputs, state, lengths, train=True, rng=rng)

    def _run(self, inputs, state, lengths, train, rng):
        x = self.encode(inputs)                                                   # (T, B, I')
        if train:
            y, new_state, rnn_cache = self.rnn.forward_train_states(x, state, lengths, rng=rng)
        else:
            (y, new_state), rnn_cache = self.rnn.forward_states(x, state, lengths), None
        feats = self._classify_features(new_state) if self.config.task == "classify" else y
        logits = self.head.forward(feats)
        cache = ModelCache(inputs, rnn_cache, feats) if train else None
        return logits, new_state, cache

    def _classify_features(self, state):
        """The top layer's final hidden state(s): the output at each sequence's last valid step."""
        h = state[0]
        if self.config.bidirectional:
            return self.xp.concatenate([h[-2], h[-1]], axis=-1)                    # (B, 2H)
        return h[-1]                                                              # (B, H)

    def step(self, inputs_t, state):
        """One step for many independent sessions: ids (B,) or features (B, I).

        Returns (logits (B, C), state). For classifiers these are the running class logits after
        the step; for seq2seq and LMs, the step's output.
        """
        if self.config.bidirectional:
            raise ValueError("a bidirectional model cannot stream one step at a time")
        x_t = self.encode(self.xp.asarray(inputs_t)[None])[0]                    # (B, I')
        y_t, state = self.rnn.step_states(x_t, state)                            # (B, H): the top layer's new h
        return self.head.forward(y_t), state             # for a classifier, h[-1] is its features

    # -- backward -----------------------------------------------------------------------------
    def backward(self, cache, dlogits, dstate=None):
        """Gradients for every parameter (``parameters()`` names) and the initial state."""
        dfeats, grads_head = self.head.backward(cache.feats, dlogits)
        if self.config.task == "classify":
            dy, dstate = None, self._classify_dstate(dfeats, dstate, cache.feats.shape[0])
        else:
            dy = dfeats
        dx, dstate0, grads_rnn = self.rnn.backward_states(cache.rnn, dy, dstate)
        grads = {f"head.{k}": v for k, v in grads_head.items()}
        grads.update({f"rnn.{k}": v for k, v in grads_rnn.items()})
        if self.embedding is not None:
            grads.update({f"embedding.{k}": v for k, v in self.embedding.backward(self.xp.asarray(cache.inputs), dx).items()})
        return {k: grads[k] for k in self.parameters()}, dstate0

    def _classify_dstate(self, dfeats, dstate, batch):
        """Route the head's input gradient into the final state's top-layer slot(s)."""
        xp, H = self.xp, self.config.hidden_size
        base = self.init_state(batch) if dstate is None else dstate
        d_parts = [xp.array(p, copy=True) for p in base]
        if self.config.bidirectional:
            d_parts[0][-2] += dfeats[:, :H]
            d_parts[0][-1] += dfeats[:, H:]
        else:
            d_parts[0][-1] += dfeats
        return tuple(d_parts)


def int_or_none(v):
    return None if v is None else int(v)
