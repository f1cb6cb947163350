"""PyTorch reference cases for the parity tests, shared by ``scripts/make_golden.py`` and the tests.

A *case* is a flat dict of NumPy arrays plus a ``config`` dict: the weights (torch's names,
``param.<name>``), the inputs (``x``, ``lengths``, ``h0``/``c0``), the upstream gradients
(``dy``, ``dh_n``/``dc_n``) and torch's results (``y``, ``h_n``/``c_n``, ``dx``, ``dh0``/``dc0``,
``grad.<name>``) for the loss ``sum(y*dy) + sum(h_n*dh_n) (+ sum(c_n*dc_n))``.

torch is imported only inside ``build_case``: loading a saved case needs NumPy alone, so the
golden-file tests run where torch is not installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import GOLDEN_ROOT

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GOLDEN_DIR = GOLDEN_ROOT


def state_names(cell: str) -> tuple[str, ...]:
    """Names of the state components: ("h",) or ("h", "c") for the LSTM."""
    return ("h", "c") if cell == "lstm" else ("h",)


# -- configs ------------------------------------------------------------------------------------
def _ragged_lengths(rng: np.random.Generator, T: int, B: int) -> list[int]:
    """Lengths in [1, T] with one full-length sequence and, when B > 1, one of length 1."""
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T
    if B > 1:
        lengths[(np.argmax(lengths == T) + 1 + rng.integers(B - 1)) % B] = 1
    return [int(v) for v in lengths]


def random_config(cell: str, seed: int, **overrides) -> dict:
    """A random small configuration for ``cell``; ``overrides`` pin any field.

    ``split`` (two-chunk cases) is only drawn for unidirectional layers without ``lengths``:
    there carrying the state from chunk 1 into chunk 2 is exactly one long run.
    """
    rng = np.random.default_rng(seed)
    cfg = {
        "cell": cell, "seed": int(seed),
        "num_layers": int(rng.integers(1, 4)), "bidirectional": bool(rng.random() < 0.5),
        "batch_first": bool(rng.random() < 0.5), "bias": bool(rng.random() < 0.8),
        "T": int(rng.integers(1, 8)), "B": int(rng.integers(1, 5)),
        "input_size": int(rng.integers(1, 6)), "hidden_size": int(rng.integers(1, 6)),
        "initial_state": bool(rng.random() < 0.75), "final_grad": bool(rng.random() < 0.75),
    }
    ragged = rng.random() < 0.5
    chunked = rng.random() < 0.3
    cfg.update({k: v for k, v in overrides.items() if k not in ("lengths", "split")})
    T, B = cfg["T"], cfg["B"]
    cfg["lengths"] = _ragged_lengths(rng, T, B) if overrides.get("lengths", ragged) else None
    can_split = not cfg["bidirectional"] and cfg["lengths"] is None and T >= 2
    want_split = overrides.get("split", chunked)
    cfg["split"] = int(rng.integers(1, T)) if (want_split and can_split) else None
    if overrides.get("split") and cfg["split"] is None:
        raise ValueError(f"a two-chunk case needs a unidirectional layer, no lengths and T >= 2: {cfg}")
    return cfg


def golden_configs() -> list[dict]:
    """The committed cases: per cell, targeted configs plus random ones, all from fixed seeds."""
    targeted = [
        dict(num_layers=1, bidirectional=False, lengths=False, split=False, bias=True,
             initial_state=True, final_grad=True),                                       # plain
        dict(num_layers=3, bidirectional=True, batch_first=True, lengths=True, T=6, B=4),  # deep, ragged
        dict(num_layers=2, bidirectional=False, bias=False, lengths=True, T=5, B=3),      # no bias
        dict(num_layers=2, bidirectional=True, bias=False, batch_first=False, T=4, B=3),  # no bias, bidir
        dict(T=1, B=1, lengths=False, split=False),                                        # smallest
        dict(num_layers=2, bidirectional=False, lengths=False, T=6, B=3, split=True,
             initial_state=True, final_grad=True),                                       # two chunks
        dict(num_layers=1, bidirectional=False, lengths=False, batch_first=True, T=5, B=2, split=True),  # two chunks, bf
    ]
    configs = []
    for c, cell in enumerate(CELLS):
        for k, over in enumerate(targeted):
            configs.append(random_config(cell, 1000 * c + k, **over))
        for k in range(2):
            configs.append(random_config(cell, 1000 * c + 100 + k))
    return configs


# -- building a case with torch -----------------------------------------------------------------
def _torch_module(torch, cfg: dict):
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              bidirectional=cfg["bidirectional"], dtype=torch.float32)
    cell, I, H = cfg["cell"], cfg["input_size"], cfg["hidden_size"]
    if cell.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, **kw)


def build_case(cfg: dict) -> dict:
    """Run torch (float32, its default init under ``torch.manual_seed``) on ``cfg``."""
    import torch  # the golden tests must not need torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: extra threads only fight NumPy's BLAS threads for the cores
    try:
        return _build_case(torch, cfg)
    finally:
        torch.set_num_threads(threads)


def _build_case(torch, cfg: dict) -> dict:
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(cfg["seed"])
    module = _torch_module(torch, cfg)
    rng = np.random.default_rng(10_000 + cfg["seed"])
    T, B, H = cfg["T"], cfg["B"], cfg["hidden_size"]
    D, L = (2 if cfg["bidirectional"] else 1), cfg["num_layers"]
    layout = (lambda t, b: (b, t)) if cfg["batch_first"] else (lambda t, b: (t, b))

    def f32(a):
        return np.asarray(a, dtype=np.float32)

    names = state_names(cfg["cell"])

    case = {"x": f32(rng.standard_normal((*layout(T, B), cfg["input_size"])))}
    for n in names:
        s = 0.5 * rng.standard_normal((L * D, B, H)) if cfg["initial_state"] else np.zeros((L * D, B, H))
        case[f"{n}0"] = f32(s)
    case["dy"] = f32(rng.standard_normal((*layout(T, B), D * H)))
    for n in names:
        g = rng.standard_normal((L * D, B, H)) if cfg["final_grad"] else np.zeros((L * D, B, H))
        case[f"d{n}_n"] = f32(g)
    if cfg["lengths"] is not None:
        case["lengths"] = np.asarray(cfg["lengths"], dtype=np.int64)

    x = torch.tensor(case["x"], requires_grad=True)
    state0 = [torch.tensor(case[f"{n}0"], requires_grad=True) for n in names]
    hx = tuple(state0) if len(names) == 2 else state0[0]
    if cfg["lengths"] is None:
        y, hn = module(x, hx)
    else:
        packed = pack_padded_sequence(x, torch.tensor(case["lengths"]), batch_first=cfg["batch_first"],
                                      enforce_sorted=False)
        out, hn = module(packed, hx)
        y, _ = pad_packed_sequence(out, batch_first=cfg["batch_first"], total_length=T)
    finals = hn if len(names) == 2 else (hn,)
    loss = (y * torch.tensor(case["dy"])).sum()
    for n, f in zip(names, finals):
        loss = loss + (f * torch.tensor(case[f"d{n}_n"])).sum()
    loss.backward()

    case["y"] = f32(y.detach().numpy())
    for n, f, s0 in zip(names, finals, state0):
        case[f"{n}_n"] = f32(f.detach().numpy())
        case[f"d{n}0"] = f32(s0.grad.numpy())
    case["dx"] = f32(x.grad.numpy())
    for name, p in module.named_parameters():
        case[f"param.{name}"] = f32(p.detach().numpy())
        case[f"grad.{name}"] = f32(p.grad.numpy())
    case["config"] = dict(cfg)
    return case


# -- files: npz, config as JSON, no pickle ------------------------------------------------------
def case_filename(cfg: dict, index: int) -> str:
    return f"parity_{cfg['cell']}_{index:02d}.npz"


def save_case(path: Path, case: dict) -> None:
    arrays = {k: v for k, v in case.items() if k != "config"}
    np.savez_compressed(path, config=np.array(json.dumps(case["config"], sort_keys=True)), **arrays)


def load_case(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        case = {k: z[k] for k in z.files if k != "config"}
        case["config"] = json.loads(str(z["config"]))
    return case
