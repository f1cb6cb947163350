"""Parity with PyTorch's RNN, LSTM and GRU in float32: forward, final state and every gradient.

Each case is checked by one function, fed either a committed golden file (always runs, no torch
needed) or a case built live by torch from a random config (``-m torch``; skipped without torch).
Two-chunk cases run our engine in two pieces, carrying the state forward and ``dstate`` backward,
and compare with torch's single long run. ``test_two_chunks_equal_one_run`` checks the same
carry within our engine alone, in float64.
"""
import numpy as np
import pytest

from model_core.nn import GRU, LSTM, RNN
from tests.engine.torch_reference import CELLS, GOLDEN_DIR, build_case, load_case, random_config, state_names

FWD_ATOL = 1e-5   # forward outputs and final states, float32
GRAD_RTOL = 1e-4  # max|ours - torch| / max|torch|, float32
GOLDEN = sorted(GOLDEN_DIR.glob("parity_*.npz"))
LIVE_SEEDS = range(50_000, 50_004)


def make_layer(cfg: dict, dtype="float32", device="cpu", **kw):
    cell = cfg["cell"]
    common = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
                  bidirectional=cfg["bidirectional"], device=device, dtype=dtype, **kw)
    if cell.startswith("rnn_"):
        return RNN(cfg["input_size"], cfg["hidden_size"], nonlinearity=cell[4:], **common)
    return {"lstm": LSTM, "gru": GRU}[cell](cfg["input_size"], cfg["hidden_size"], **common)


def _pack(parts):
    return tuple(parts) if len(parts) == 2 else parts[0]


def _parts(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


# -- running our engine on a case ---------------------------------------------------------------
def run_engine(layer, case: dict) -> dict:
    """Forward + backward on ``case``'s inputs; in two chunks when ``config["split"]`` is set."""
    cfg = case["config"]
    names = state_names(cfg["cell"])
    state0 = _pack([case[f"{n}0"] for n in names]) if cfg["initial_state"] else None
    dstate = _pack([case[f"d{n}_n"] for n in names]) if cfg["final_grad"] else None
    lengths = case.get("lengths")
    if cfg["split"] is None:
        y, state, cache = layer.forward_train(case["x"], state0, lengths=lengths)
        dx, dstate0, grads = layer.backward(cache, case["dy"], dstate)
    else:
        y, state, dx, dstate0, grads = run_two_chunks(layer, case["x"], state0, case["dy"], dstate, cfg["split"])
    out = {"y": y, "dx": dx, **{f"grad.{k}": g for k, g in grads.items()}}
    for n, s, d in zip(names, _parts(state), _parts(dstate0)):
        out[f"{n}_n"], out[f"d{n}0"] = s, d
    return out


def run_two_chunks(layer, x, state0, dy, dstate, split):
    """Chunk 1 then chunk 2 from its returned state; backward chunk 2, then chunk 1 with its dstate0."""
    axis = 1 if layer.batch_first else 0
    x1, x2 = np.split(x, [split], axis=axis)
    dy1, dy2 = np.split(dy, [split], axis=axis)
    y1, state1, cache1 = layer.forward_train(x1, state0)
    y2, state2, cache2 = layer.forward_train(x2, state1)
    dx2, dstate1, grads2 = layer.backward(cache2, dy2, dstate)
    dx1, dstate0, grads1 = layer.backward(cache1, dy1, dstate1)
    grads = {k: grads1[k] + grads2[k] for k in grads1}
    return (np.concatenate([y1, y2], axis=axis), state2, np.concatenate([dx1, dx2], axis=axis),
            dstate0, grads)


# -- comparison ---------------------------------------------------------------------------------
def grad_error(ours, ref) -> float:
    """max|ours - ref| / max|ref| (0 when both are zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max(initial=0.0)
    diff = np.abs(ours - ref).max(initial=0.0)
    return diff / scale if scale > 0 else diff


def check_case(case: dict) -> None:
    cfg = case["config"]
    layer = make_layer(cfg)
    layer.load_state_dict({k[len("param."):]: v for k, v in case.items() if k.startswith("param.")})
    ours = run_engine(layer, case)
    names = state_names(cfg["cell"])
    fwd = ["y", *(f"{n}_n" for n in names)]
    back = ["dx", *(f"d{n}0" for n in names), *(k for k in case if k.startswith("grad."))]
    assert set(ours) == set(fwd) | set(back), f"{sorted(ours)} vs {sorted(fwd + back)}"
    failures = []
    for k in fwd:
        err = np.abs(np.asarray(ours[k], np.float64) - case[k]).max(initial=0.0)
        if not (ours[k].shape == case[k].shape and err <= FWD_ATOL):
            failures.append(f"{k}: max abs error {err:.2e} (shape {ours[k].shape} vs {case[k].shape})")
    for k in back:
        err = grad_error(ours[k], case[k])
        if not err <= GRAD_RTOL:
            failures.append(f"{k}: relative error {err:.2e}")
    assert not failures, f"config {cfg}:\n  " + "\n  ".join(failures)


@pytest.fixture(params=[pytest.param(p, id=p.stem) for p in GOLDEN]
                + [pytest.param((cell, seed), id=f"live-{cell}-{seed}", marks=pytest.mark.torch)
                   for cell in CELLS for seed in LIVE_SEEDS]
                + [pytest.param((cell, seed, "split"), id=f"live-{cell}-{seed}-chunks", marks=pytest.mark.torch)
                   for cell in CELLS for seed in LIVE_SEEDS[:1]])
def case(request):
    if not isinstance(request.param, tuple):
        return load_case(request.param)
    pytest.importorskip("torch")
    cell, seed, *split = request.param
    over = dict(split=True, bidirectional=False, lengths=False, T=7) if split else {}
    return build_case(random_config(cell, seed, **over))


def test_golden_files_present():
    """Every cell has golden cases, and they cover the configurations that matter."""
    cfgs = [load_case(p)["config"] for p in GOLDEN]
    assert {c["cell"] for c in cfgs} == set(CELLS)
    for cell in CELLS:
        mine = [c for c in cfgs if c["cell"] == cell]
        assert {c["num_layers"] for c in mine} >= {1, 2, 3}
        assert {c["bidirectional"] for c in mine} == {True, False}
        assert {c["batch_first"] for c in mine} == {True, False}
        assert False in {c["bias"] for c in mine}
        assert any(c["split"] for c in mine)
        assert any(c["T"] == 1 and c["B"] == 1 for c in mine)
        assert any(c["lengths"] and 1 in c["lengths"] and c["T"] in c["lengths"] and c["T"] > 1 for c in mine)
    assert sum(p.stat().st_size for p in GOLDEN) < 1.5e6


def test_parity(case):
    check_case(case)


def test_forward_matches_forward_train(case):
    """Inference ``forward`` gives what ``forward_train`` does (a single chunk run)."""
    cfg = case["config"]
    layer = make_layer(cfg)
    layer.load_state_dict({k[len("param."):]: v for k, v in case.items() if k.startswith("param.")})
    names = state_names(cfg["cell"])
    state0 = _pack([case[f"{n}0"] for n in names])
    y, state = layer.forward(case["x"], state0, lengths=case.get("lengths"))
    y_t, state_t, _ = layer.forward_train(case["x"], state0, lengths=case.get("lengths"))
    np.testing.assert_array_equal(y, y_t)
    for a, b in zip(_parts(state), _parts(state_t)):
        np.testing.assert_array_equal(a, b)


# -- two chunks within our engine (no torch) ----------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_two_chunks_equal_one_run(cell, batch_first, ragged):
    """Carrying state (forward) and dstate (backward) across chunks reproduces one long run.

    With ragged lengths each chunk gets its share of every sequence (possibly 0 steps, which
    passes the state through unchanged).
    """
    T, B, split = 7, 4, 3
    cfg = dict(cell=cell, num_layers=2, bias=True, batch_first=batch_first, bidirectional=False,
               input_size=3, hidden_size=4)
    layer = make_layer(cfg, dtype="float64", seed=5)
    rng = np.random.default_rng(6)
    names = state_names(cell)
    lay = (lambda t: (B, t)) if batch_first else (lambda t: (t, B))
    axis = 1 if batch_first else 0
    x, dy = rng.standard_normal((*lay(T), 3)), rng.standard_normal((*lay(T), 4))
    state0 = _pack([0.5 * rng.standard_normal((2, B, 4)) for _ in names])
    dstate = _pack([rng.standard_normal((2, B, 4)) for _ in names])
    lengths = np.array([7, 1, 3, 5]) if ragged else None
    l1 = None if lengths is None else np.minimum(lengths, split)
    l2 = None if lengths is None else np.clip(lengths - split, 0, T - split)

    y, state, cache = layer.forward_train(x, state0, lengths=lengths)
    dx, dstate0, grads = layer.backward(cache, dy, dstate)

    x1, x2 = np.split(x, [split], axis=axis)
    dy1, dy2 = np.split(dy, [split], axis=axis)
    y1, s1, c1 = layer.forward_train(x1, state0, lengths=l1)
    y2, s2, c2 = layer.forward_train(x2, s1, lengths=l2)
    dx2, ds1, g2 = layer.backward(c2, dy2, dstate)
    dx1, ds0, g1 = layer.backward(c1, dy1, ds1)

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    close(np.concatenate([y1, y2], axis=axis), y)
    close(np.concatenate([dx1, dx2], axis=axis), dx)
    for a, b in zip(_parts(s2), _parts(state)):
        close(a, b)
    for a, b in zip(_parts(ds0), _parts(dstate0)):
        close(a, b)
    for k in grads:
        close(g1[k] + g2[k], grads[k])
