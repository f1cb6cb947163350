"""Float64 centred finite differences for BPTT: every parameter, the input and the initial state.

The loss is ``sum(y*dy) + sum(h_n*dh_n) (+ sum(c_n*dc_n))`` with random ``dy`` and final-state
gradients, so ``backward(cache, dy, dstate)`` must return its exact gradient. Dropout masks are
made reproducible by re-creating the same ``np.random.default_rng`` seed for every evaluation.
"""
import numpy as np
import pytest

from tests.engine.gradcheck import numerical_grad, rel_error
from model_core.nn import GRU, LSTM, RNN

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
TOL = 1e-6
EPS = 1e-5  # step for centred differences: balances float64 round-off (~1e-16/EPS) and truncation (~EPS²)
T, B, I, H = 4, 3, 3, 4


def _layer(cell, **kw):
    kw = dict(dtype="float64", seed=11, **kw)
    if cell.startswith("rnn_"):
        return RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": LSTM, "gru": GRU}[cell](I, H, **kw)


def _problem(layer, batch_first=False, seed=0):
    """Random x, initial state, dy and final-state gradient shaped for ``layer``."""
    rng = np.random.default_rng(seed)
    S = layer.num_layers * layer.num_directions
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    dy = rng.standard_normal((B, T, layer.num_directions * H) if batch_first else (T, B, layer.num_directions * H))
    state0 = tuple(0.5 * rng.standard_normal((S, B, H)) for _ in range(layer.state_size))
    dstate = tuple(rng.standard_normal((S, B, H)) for _ in range(layer.state_size))
    return x, state0, dy, dstate


def _rel_error(analytic, numeric) -> float:
    """``gradcheck.rel_error`` on the elements that matter; tiny ones are judged against the tensor.

    An element far below its tensor's scale (say 1e-6 of it) carries finite-difference round-off
    (~1e-11 here) that is large relative to itself but says nothing about the backward pass, so
    the denominator is floored at 1e-3 of the tensor's largest gradient.
    """
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    floor = 1e-3 * np.abs(numeric).max(initial=0.0)
    big = np.abs(analytic) + np.abs(numeric) >= floor
    small_err = np.abs(analytic - numeric)[~big].max(initial=0.0) / max(floor, 1e-8)
    return max(rel_error(analytic[big], numeric[big]), small_err)


def _pack(parts):
    return parts if len(parts) == 2 else parts[0]


def _parts(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def _loss_fn(layer, x, state0, dy, dstate, lengths, rng_seed=None):
    """Zero-arg loss reading x, state0 and the parameters live (they are perturbed in place)."""
    def f():
        if rng_seed is None:
            y, state = layer.forward(x, _pack(state0), lengths=lengths)
        else:
            y, state, _ = layer.forward_train(x, _pack(state0), lengths=lengths, rng=np.random.default_rng(rng_seed))
        return float((y * dy).sum() + sum((s * d).sum() for s, d in zip(_parts(state), dstate)))
    return f


def _check_all(layer, x, state0, dy, dstate, lengths=None, rng_seed=None):
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    _, _, cache = layer.forward_train(x, _pack(state0), lengths=lengths, rng=rng)
    dx, dstate0, grads = layer.backward(cache, dy, _pack(dstate))
    f = _loss_fn(layer, x, state0, dy, dstate, lengths, rng_seed)
    assert list(grads) == list(layer.parameters())
    errors = {name: _rel_error(grads[name], numerical_grad(f, p, EPS)) for name, p in layer.parameters().items()}
    errors["x"] = _rel_error(dx, numerical_grad(f, x, EPS))
    for k, (s0, ds0) in enumerate(zip(state0, _parts(dstate0))):
        errors[("h0", "c0")[k]] = _rel_error(ds0, numerical_grad(f, s0, EPS))
    bad = {k: f"{e:.1e}" for k, e in errors.items() if not e <= TOL}
    assert not bad, f"{layer!r}: relative errors above {TOL}: {bad}"
    return dx


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_deep_bidirectional_ragged(cell):
    """2 layers, bidirectional, ragged lengths (1 and T included), gradient on the final state."""
    layer = _layer(cell, num_layers=2, bidirectional=True)
    x, state0, dy, dstate = _problem(layer)
    lengths = np.array([T, 1, 2])
    dx = _check_all(layer, x, state0, dy, dstate, lengths)
    assert not dx[1:, 1].any() and not dx[2:, 2].any()       # nothing flows into the padding


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_batch_first_no_bias(cell):
    """1 layer, unidirectional, batch_first, no biases, full-length sequences."""
    layer = _layer(cell, bias=False, batch_first=True)
    x, state0, dy, dstate = _problem(layer, batch_first=True, seed=1)
    _check_all(layer, x, state0, dy, dstate)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_dropout(cell):
    """Inter-layer dropout in forward_train: the same rng seed gives the same masks every evaluation."""
    layer = _layer(cell, num_layers=2, dropout=0.4, bidirectional=cell == "gru")
    x, state0, dy, dstate = _problem(layer, seed=2)
    _check_all(layer, x, state0, dy, dstate, lengths=np.array([T, 3, 1]), rng_seed=123)
    # the masks really act: a different seed changes the output, inference ignores dropout
    y1 = layer.forward_train(x, _pack(state0), rng=np.random.default_rng(123))[0]
    y2 = layer.forward_train(x, _pack(state0), rng=np.random.default_rng(124))[0]
    assert not np.allclose(y1, y2)
    with pytest.raises(ValueError, match="rng"):
        layer.forward_train(x, _pack(state0))


@pytest.mark.parametrize("cell", CELLS)
def test_random_direction_long_sequence(cell):
    """One directional derivative over all inputs at once, through a longer, deeper BPTT (Chainer-style)."""
    layer = _layer(cell, num_layers=3, bidirectional=True)
    rng = np.random.default_rng(3)
    Tl, Bl = 25, 2
    x = rng.standard_normal((Tl, Bl, I))
    state0 = tuple(0.5 * rng.standard_normal((6, Bl, H)) for _ in range(layer.state_size))
    dy = rng.standard_normal((Tl, Bl, 2 * H))
    dstate = tuple(rng.standard_normal((6, Bl, H)) for _ in range(layer.state_size))
    lengths = np.array([Tl, 9])
    _, _, cache = layer.forward_train(x, _pack(state0), lengths=lengths)
    dx, dstate0, grads = layer.backward(cache, dy, _pack(dstate))
    tensors = [x, *state0, *layer.parameters().values()]
    analytic = [dx, *_parts(dstate0), *grads.values()]
    directions = [rng.standard_normal(a.shape) for a in tensors]
    f = _loss_fn(layer, x, state0, dy, dstate, lengths)
    eps = 1e-6

    def shifted(sign):
        for a, v in zip(tensors, directions):
            a += sign * eps * v
        value = f()
        for a, v in zip(tensors, directions):
            a -= sign * eps * v
        return value

    numeric = (shifted(+1) - shifted(-1)) / (2 * eps)
    predicted = sum(float((g * v).sum()) for g, v in zip(analytic, directions))
    assert abs(numeric - predicted) <= TOL * max(1.0, abs(predicted)), (numeric, predicted)
