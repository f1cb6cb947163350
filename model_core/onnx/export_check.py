"""Check an exported graph against our engine: random feeds in the graph's names, the engine's
answers under the same names, and the largest difference onnxruntime shows."""
from __future__ import annotations

import numpy as np

from model_core.backend import to_numpy
from model_core.nn.losses import activate
from model_core.onnx.exporter import input_name, output_names, state_names


def random_feeds(model, time: int, batch: int, rng: np.random.Generator, ragged: bool = True) -> dict[str, np.ndarray]:
    """Inputs for both the graph and ``engine_outputs``, with a random initial state. With ``ragged``
    the first sequence is full (so ``time`` is the batch's real length), the last empty (batch > 2)
    and the rest in [1, time]."""
    c = model.config
    if c.uses_tokens:
        data = rng.integers(0, c.input_size, size=(time, batch), dtype=np.int64)           # (T, B)
    else:
        data = rng.standard_normal((time, batch, c.input_size)).astype(np.float32)        # (T, B, I)
    lens = np.full(batch, time, dtype=np.int32)
    if ragged and batch > 1:
        lens[1:] = rng.integers(1, time + 1, size=batch - 1)
        if batch > 2:
            lens[-1] = 0                                       # an empty sequence keeps its state
    feeds = {input_name(c): data, "sequence_lens": lens}
    for (name, _), zero in zip(state_names(c), model.init_state(batch)):
        feeds[name] = (0.5 * rng.standard_normal(zero.shape)).astype(np.float32)        # (L*D, B, H)
    return feeds


def engine_outputs(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What our engine answers for ``feeds``, under the graph's output names."""
    c = model.config
    state = tuple(feeds[name] for name, _ in state_names(c))
    logits, new_state = model.forward(feeds[input_name(c)], state, lengths=feeds["sequence_lens"])
    logits = to_numpy(logits)
    out = {"logits": logits}
    if c.output != "regression":                               # the graph's probabilities output
        out["probabilities"] = activate(logits, c.output)
    for (_, name), s in zip(state_names(c), new_state):
        out[name] = to_numpy(s)
    return out


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per output: (max |got - want|, max |got - want| / (1 + |want|)). The second is what
    ``np.allclose(got, want, rtol=tol, atol=tol)`` bounds by tol: float32 kernels that sum in a
    different order differ by a few ulps, which on logits of size 10 is already 1e-5."""
    out = {}
    for name, w in want.items():
        g = np.asarray(got[name])
        if g.shape != w.shape:
            raise AssertionError(f"{name}: shape {g.shape} != engine's {w.shape}")
        err = np.abs(g.astype(np.float64) - w)
        out[name] = (float(err.max()), float((err / (1.0 + np.abs(w))).max())) if w.size else (0.0, 0.0)
    return out


def onnxruntime_diff(model, onnx_bytes: bytes, time: int = 7, batch: int = 3,
                     seed: int = 0) -> dict[str, tuple[float, float]]:
    """Run the graph in onnxruntime on random ragged feeds with a random state and ``compare``."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = random_feeds(model, time, batch, np.random.default_rng(seed))
    names = output_names(model.config)
    got = dict(zip(names, session.run(names, feeds)))
    return compare(got, engine_outputs(model, feeds))
