"""``OnnxSequenceModel``: a recurrent ONNX graph behind the interface the service serves
(``config``, ``forward``, ``forward_steps``, ``step``, ``init_state``, ``xp``, ``device``, ``dtype``).

The graph runs on our own ``InferenceSession``, so serving needs neither torch nor onnxruntime.
States keep the engine's layout (layers*directions, B, H) and live on the host, so session bytes,
stacking and slicing work as for checkpoints; they are moved to the graph's layout per call.

Exactness comes first. A graph without a lengths input (torch exports have none) would run padding
through the recurrence, so a ragged batch runs as one call per distinct length. A graph whose
output is the last step only (or whose time axis is fixed at 1) gives per-step outputs by running
one step at a time with the carried state, each step on the sequences still running.
"""
from __future__ import annotations

import numpy as np

from model_core.backend import to_numpy
from model_core.inputs import features_problem, token_ids_problem
from model_core.onnx.graph_binding import GraphBinding, binding_from_metadata
from model_core.onnx.loading import DEFAULT_MAX_BYTES, read_model
from model_core.onnx.resolved_graph import ResolvedGraph, resolve
from model_core.onnx.session import InferenceSession

PROBE_STEPS = 2


class OnnxSequenceModel:
    """A served ONNX graph; one instance serves many threads (nothing is stored per call)."""

    def __init__(self, session: InferenceSession, graph: ResolvedGraph):
        self.session, self.graph = session, graph
        self.config = graph.config
        self._binding = graph.binding

    @classmethod
    def load(cls, path_or_bytes, binding: GraphBinding | None = None, device: str = "cpu",
             max_bytes: int = DEFAULT_MAX_BYTES, weights: str = "float32") -> OnnxSequenceModel:
        """Read, check and probe a graph. ``binding`` None: the graph must be our exporter's.
        ``weights``: what its LSTM and GRU nodes read (``InferenceSession``'s ``weights``)."""
        proto = read_model(path_or_bytes, max_bytes)
        session = InferenceSession(proto, device=device, max_bytes=max_bytes, weights=weights)
        binding = binding or binding_from_metadata(session.get_modelmeta().custom_metadata_map)
        if binding is None:
            raise ValueError("the graph has no model card and was not written by rnn-serve's exporter: describe "
                             "its inputs, outputs and state in a model card")
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        graph = resolve(proto, binding, opset)
        model = cls(session, graph)
        model._probe()
        return model

    # -- the served-model interface -----------------------------------------------------------
    @property
    def xp(self):
        return np                                   # states stay on the host; the session moves feeds

    @property
    def device(self) -> str:
        return self.session.device

    @property
    def dtype(self) -> np.dtype:
        return self.graph.states[0].dtype

    @property
    def weight_format(self) -> str:
        return self.session.weight_format

    def num_parameters(self) -> int:
        return self.graph.num_parameters

    def init_state(self, batch: int = 1):
        return tuple(np.zeros((s.size[0], batch, s.size[1]), s.dtype) for s in self.graph.states)

    def forward(self, inputs, state=None, lengths=None):
        """Returns (logits, state): (B, C) for classify (each sequence's last step), else (T, B, C)."""
        x, state, lengths = self._prepare(inputs, state, lengths)
        if self.config.task != "classify":
            return self._per_step(x, state, lengths)
        if self._binding.per_step or self.graph.one_step:
            logits, state = self._per_step(x, state, lengths)
            return logits[lengths - 1, np.arange(len(lengths))], state                   # (B, C)
        return self._last_step(x, state, lengths)

    __call__ = forward

    def forward_steps(self, inputs, state=None, lengths=None):
        """Returns (logits (T, B, C), state): the outputs at every step, for every task."""
        return self._per_step(*self._prepare(inputs, state, lengths))

    def step(self, inputs_t, state):
        """One step for many sessions: ids (B,) or features (B, I) -> (logits (B, C), state)."""
        if self.config.bidirectional:
            raise ValueError("a bidirectional model cannot stream one step at a time")
        logits, state = self.forward_steps(np.asarray(to_numpy(inputs_t))[None], state)
        return logits[0], state

    def describe(self) -> dict:
        """What ``GET /v1/models/{name}`` shows about the graph and its binding."""
        g, b = self.graph, self._binding
        meta = self.session.get_modelmeta()
        return {
            "opset": g.opset, "producer": meta.producer_name, "binding": b.source,
            "inputs": [{"name": a.name, "type": a.type, "shape": a.shape} for a in self.session.get_inputs()],
            "outputs": [{"name": a.name, "type": a.type, "shape": a.shape} for a in self.session.get_outputs()],
            "bindings": {"input": b.input, "layout": b.layout, "lengths": b.lengths, "output": b.output,
                         "per_step": b.per_step, "activation": b.activation,
                         "state": [{"input": s.input, "output": s.output, "batch_axis": s.batch_axis}
                                   for s in g.states]},
        }

    # -- running ------------------------------------------------------------------------------
    def _prepare(self, inputs, state, lengths):
        c = self.config
        x = np.asarray(to_numpy(inputs))
        if c.uses_tokens:
            if x.ndim != 2:
                raise ValueError(f"token inputs must be an integer array (T, B), got {x.dtype} {x.shape}")
            problem = token_ids_problem(c, x)
            if problem:
                raise ValueError(problem)
        elif x.ndim != 3 or features_problem(c, x, finite=False):
            raise ValueError(f"feature inputs must be numbers (T, B, {c.input_size}), got {x.dtype} {x.shape}")
        T, B = x.shape[:2]
        x = x.astype(self.graph.input_dtype, copy=False)
        state = self.init_state(B) if state is None else state
        lens = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(to_numpy(lengths), dtype=np.int64)
        if lens.shape != (B,) or (B and (lens.min() < 1 or lens.max() > T)):
            raise ValueError(f"lengths must hold {B} values in [1, {T}], got {lens.tolist()}")
        return x, [np.asarray(to_numpy(p)) for p in state], lens

    def _per_step(self, x, states, lengths):
        """(T, B, C) outputs and the state at each sequence's last step."""
        if not self._binding.per_step or self.graph.one_step:
            return self._stepwise(x, states, lengths)
        T, B = x.shape[:2]
        if self._binding.lengths or (lengths == T).all():
            out, new = self._run(x, states, lengths)
            return out, tuple(new)
        out = np.zeros((T, B, self.config.output_size), dtype=np.float32)
        new = [p.copy() for p in states]
        for length in np.unique(lengths):                     # padding never enters a recurrence
            cols = np.flatnonzero(lengths == length)
            o, s = self._run(x[:length, cols], [p[:, cols] for p in states], lengths[cols])
            out[:length, cols] = o
            for p, q in zip(new, s):
                p[:, cols] = q
        return out, tuple(new)

    def _last_step(self, x, states, lengths):
        """(B, C) from a last-step-only graph: one call per distinct length."""
        B = x.shape[1]
        out = np.zeros((B, self.config.output_size), dtype=np.float32)
        new = [p.copy() for p in states]
        for length in np.unique(lengths):
            cols = np.flatnonzero(lengths == length)
            o, s = self._run(x[:length, cols], [p[:, cols] for p in states], lengths[cols])
            out[cols] = o
            for p, q in zip(new, s):
                p[:, cols] = q
        return out, tuple(new)

    def _stepwise(self, x, states, lengths):
        """Per-step outputs from a last-step or one-step graph: one call per step, carrying the state."""
        T, B = x.shape[:2]
        out = np.zeros((T, B, self.config.output_size), dtype=np.float32)
        states = [p.copy() for p in states]
        for t in range(T):
            cols = np.flatnonzero(lengths > t)                 # the sequences still running
            every = len(cols) == B
            o, s = self._run(x[t:t + 1] if every else x[t:t + 1, cols],
                             states if every else [p[:, cols] for p in states], np.ones(len(cols), np.int64))
            out[t, cols] = o[0] if o.ndim == 3 else o
            for p, q in zip(states, s):
                p[:, cols] = q
        return out, tuple(states)

    def _run(self, x, states, lengths):
        """One batch through the graph (split into single sequences when it fixes the batch at 1).
        x time-major; states in engine layout. Returns (scores as logits, states in engine layout)."""
        if self.graph.max_batch == 1 and x.shape[1] > 1:
            runs = [self._run(x[:, b:b + 1], [p[:, b:b + 1] for p in states], lengths[b:b + 1])
                    for b in range(x.shape[1])]
            axis = 1 if runs[0][0].ndim == 3 else 0
            return (np.concatenate([o for o, _ in runs], axis=axis),
                    [np.concatenate(ps, axis=1) for ps in zip(*(s for _, s in runs))])
        b, g = self._binding, self.graph
        feeds = {b.input: np.ascontiguousarray(x if b.layout == "time_major" else x.swapaxes(0, 1))}
        if b.lengths:
            feeds[b.lengths] = lengths.astype(g.lengths_dtype)
        for s, p in zip(g.states, states):
            feeds[s.input] = np.ascontiguousarray(np.moveaxis(p, 1, s.batch_axis), dtype=s.dtype)
        names = [b.output, *(s.output for s in g.states)]
        out, *new = self.session.run(names, feeds)
        if b.per_step and b.layout == "batch_major":
            out = out.swapaxes(0, 1)                                                   # (T, B, C)
        new = [np.ascontiguousarray(np.moveaxis(p, s.batch_axis, 1)) for s, p in zip(g.states, new)]
        return _as_logits(out, b.activation), new

    def _probe(self) -> None:
        """Run a zero input through the graph once, so a card that does not fit fails at load time."""
        T = 1 if self.graph.one_step else PROBE_STEPS
        B = 1 if self.graph.max_batch == 1 else 2
        shape = (T, B) if self.config.uses_tokens else (T, B, self.config.input_size)
        x = np.zeros(shape, dtype=self.graph.input_dtype)
        states = list(self.init_state(B))
        try:
            out, new = self._run(x[:1] if self.graph.one_step else x, states, np.full(B, T, np.int64))
        except Exception as exc:
            raise ValueError(f"the graph fails on a probe input ({T} steps, batch {B}): {exc}") from None
        expected = (T, B, self.config.output_size) if self._binding.per_step else (B, self.config.output_size)
        if out.shape != expected:
            raise ValueError(f"field 'output': {self._binding.output!r} came out {out.shape} for a probe of "
                             f"{T} steps, batch {B}; expected {expected}")
        for s, p, q in zip(self.graph.states, states, new):
            if q.shape != p.shape:
                raise ValueError(f"field 'state': {s.output!r} came out {q.shape} in the engine's layout, "
                                 f"{s.input!r} went in as {p.shape}; check batch_axis")


def _as_logits(out: np.ndarray, activation: str) -> np.ndarray:
    """Scores whose softmax (or sigmoid) is the graph's output: the service applies its own."""
    if activation in ("none", "log_softmax"):
        return out.astype(np.float32, copy=False)          # log-softmax is a valid set of logits
    tiny = np.finfo(out.dtype).tiny
    p = np.clip(out.astype(np.float64), tiny, None)
    if activation == "softmax":
        return np.log(p).astype(np.float32)
    p = np.minimum(p, 1 - np.finfo(out.dtype).eps)          # sigmoid: the log-odds
    return (np.log(p) - np.log1p(-p)).astype(np.float32)

