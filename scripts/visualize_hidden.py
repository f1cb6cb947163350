"""Draw a temporal-order LSTM's hidden state (units x time) over one sequence, as in the NYU lecture.

    python -m scripts.visualize_hidden --checkpoint runs/compare-easy/lstm --out runs/compare-easy/hidden
    python -m scripts.visualize_hidden --checkpoint runs/compare-hard/lstm --sequence "BbXcdYaE" --cell --out figs

The sequence is ``--sequence`` or one drawn at the checkpoint's difficulty (``--seed``, ``--class``).
Writes ``hidden.png``: h_t for every unit after every symbol (h already lies in (-1, 1)); with
``--cell`` also ``cell.png``: tanh(c_t), the lecture's squashing of the unbounded cell state.
The unit whose activation changes most between the first X/Y and the second is boxed (in both):
in the classic figure one unit switches on at the first X and off at the second
(``switching_unit``). The first and second X/Y are marked by dashed lines and bold ticks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure    # a Figure renders without pyplot's global backend: headless
from matplotlib.patches import Rectangle

import model_core
from model_core import CheckpointError
from model_core.backend import to_numpy
from model_core.data import temporal_order as to
from model_core.training import CHECKPOINT_NAME


def load_model(path: Path):
    """A temporal-order classifier from a checkpoint file or a run directory."""
    path = path / CHECKPOINT_NAME if path.is_dir() else path
    model = model_core.load(path)
    c = model.config
    if c.task != "classify" or c.metadata.get("task") != "temporal-order":
        raise ValueError(f"{path} is not a temporal-order classifier (task={c.task!r}, "
                         f"metadata task={c.metadata.get('task')!r})")
    if c.bidirectional:
        raise ValueError(f"{path}: a bidirectional model has no single hidden state per step")
    return model


def pick_sequence(args, difficulty: str) -> str:
    if args.sequence is not None:
        return args.sequence
    rng = np.random.default_rng(args.seed)
    while True:  # draw until the requested class comes up (1 in 4)
        seq, label = to.generate(1, difficulty, rng)[0]
        if args.cls is None or to.CLASSES[label] == args.cls:
            return seq


def run_states(model, seq: str, layer: int):
    """Step through ``seq``; returns h and c after each symbol, each (H, T) (c is None for RNN/GRU)."""
    x, _ = to.encode_batch([seq])                                        # (1, T, 8)
    x = x.transpose(1, 0, 2)                                             # (T, 1, 8)
    state, hs, cs = None, [], []
    for t in range(x.shape[0]):
        _, state = model.rnn.step_states(x[t], state)                    # (h,) or (h, c), each (L, 1, H)
        hs.append(to_numpy(state[0][layer, 0]))                         # (H,)
        if len(state) > 1:
            cs.append(to_numpy(state[1][layer, 0]))
    logits, _ = model.forward(x.argmax(-1))                              # ids (T, 1) -> (1, C)
    probs = np.exp(to_numpy(logits[0]) - to_numpy(logits[0]).max())
    h = np.stack(hs, axis=1)                                             # (H, T)
    c = np.stack(cs, axis=1) if cs else None                             # (H, T)
    return h, c, probs / probs.sum()


def key_positions(seq: str) -> tuple[int, int]:
    """Indices of the first and second X/Y in ``seq``."""
    pos = [i for i, s in enumerate(seq) if s in "XY"]
    if len(pos) != 2:
        raise ValueError(f"a temporal-order sequence has exactly two X/Y symbols; {seq!r} has {len(pos)}")
    return pos[0], pos[1]


def switching_unit(h: np.ndarray, t1: int, t2: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The unit that switches at the first X/Y and switches back (or again) at the second.

    A unit's level between the two symbols (the steps from reading the first up to the second) is
    compared with its level before the first and from the second on; its score is the smaller of
    the two changes, so it must change at both: on at the first X, off at the second scores high;
    a blip at one symbol, or a drift that only starts at one of them, scores low.
    Returns (unit, scores (H,), levels (3, H): before, between, after).
    """
    before = h[:, :t1].mean(axis=1) if t1 else np.zeros(h.shape[0])    # (H,); the state starts at zero
    between = h[:, t1:t2].mean(axis=1)                                   # (H,)
    after = h[:, t2:].mean(axis=1)                                       # (H,)
    score = np.minimum(np.abs(between - before), np.abs(between - after))
    return int(score.argmax()), score, np.stack([before, between, after])  # (H,), (3, H)


def draw(values: np.ndarray, seq: str, unit: int, t1: int, t2: int, title: str, label: str, path: Path) -> Path:
    H, T = values.shape
    fig = Figure(figsize=(max(8.0, 0.12 * T + 2.5), max(3.0, 0.28 * H + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(T))
    ax.set_xticklabels(list(seq), fontsize=8 if T <= 40 else 5, fontfamily="monospace")
    for t in (t1, t2):
        ax.get_xticklabels()[t].set_fontweight("bold")
        ax.get_xticklabels()[t].set_fontsize(10)
        ax.get_xticklabels()[t].set_color("darkgreen")
        ax.axvline(t - 0.5, color="darkgreen", lw=1, ls="--")
    ax.set_yticks(range(H))
    ax.set_yticklabels([str(u) for u in range(H)], fontsize=8 if H <= 32 else 4)
    ax.add_patch(Rectangle((-0.5, unit - 0.5), T, 1, fill=False, edgecolor="gold", lw=2.5))
    ax.annotate(f"unit {unit}", xy=(T - 0.5, unit), xytext=(4, 0), textcoords="offset points",
                va="center", fontsize=8, color="black", annotation_clip=False)
    ax.set(xlabel="input symbol (time)", ylabel="unit", title=title)
    fig.colorbar(im, ax=ax, label=label, fraction=0.04, pad=0.06)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help=f"a {CHECKPOINT_NAME} or the run dir holding it")
    p.add_argument("--sequence", default=None, help="e.g. BbXcdYaE (symbols X Y a b c d B E)")
    p.add_argument("--class", dest="cls", choices=to.CLASSES, default=None,
                   help="class of the generated sequence (ignored with --sequence)")
    p.add_argument("--difficulty", default=None, help="of the generated sequence (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="for the generated sequence")
    p.add_argument("--layer", type=int, default=-1, help="which layer's state to draw (default: the top one)")
    p.add_argument("--cell", action="store_true", help="also draw tanh(cell state) (LSTM only)")
    p.add_argument("--out", type=Path, required=True, help="output directory for hidden.png (and cell.png)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = load_model(args.checkpoint)
        c = model.config
        if args.cell and c.cell != "lstm":
            raise ValueError(f"--cell needs an LSTM; this checkpoint is a {c.cell.upper()}")
        if not -c.num_layers <= args.layer < c.num_layers:
            raise ValueError(f"--layer must lie in [{-c.num_layers}, {c.num_layers}), got {args.layer}")
        difficulty = to.Difficulty.parse(args.difficulty or c.metadata.get("difficulty", "easy")).name.lower()
        seq = pick_sequence(args, difficulty)
        to.encode_batch([seq])                                           # rejects unknown symbols
        t1, t2 = key_positions(seq)
        h, cell, probs = run_states(model, seq, args.layer)
    except (ValueError, CheckpointError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    truth = to.CLASSES[to.class_of(seq[t1], seq[t2])]
    pred = to.CLASSES[int(probs.argmax())]
    unit, score, levels = switching_unit(h, t1, t2)
    head = (f"{c.cell.upper()} hidden {c.hidden_size}: class {truth} ({seq[t1]} at {t1}, {seq[t2]} at {t2}), "
            f"predicted {pred} ({100 * probs.max():.0f}%)")
    boxed = f"boxed: the unit that switches at the first {seq[t1]} and again at the second {seq[t2]}"
    written = [draw(h, seq, unit, t1, t2, f"hidden state h_t\n{head}\n{boxed}", "h", args.out / "hidden.png")]
    if args.cell:                                                        # the same unit: the memory behind h
        ctitle = f"cell state tanh(c_t)\n{head}\n{boxed} (chosen from h)"
        written.append(draw(np.tanh(cell), seq, unit, t1, t2, ctitle, "tanh(c)", args.out / "cell.png"))
    print(f"sequence {seq} (class {truth}, predicted {pred}); X/Y at {t1} and {t2}")
    before, between, after = levels[:, unit]
    print(f"unit {unit}: mean h {before:+.2f} before {seq[t1]}, {between:+.2f} between, {after:+.2f} from {seq[t2]} on "
          f"(score {score[unit]:.2f}; runner-up {np.sort(score)[-2] if len(score) > 1 else 0:.2f})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
