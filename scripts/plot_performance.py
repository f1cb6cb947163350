#!/usr/bin/env python
"""Plot time per step against batch size and hidden size, ours against the peers, from bench JSON.

    python -m scripts.bench_core --cell all --sweep batch  --stat min --threads 1 --json runs/batch.json
    python -m scripts.bench_core --cell all --sweep hidden --stat min --threads 1 --json runs/hidden.json
    python -m scripts.plot_performance runs/batch.json runs/hidden.json        # -> docs/figures/

Each input is one ``bench_core.py --json`` file. The axis is whichever of B or H varies across its
shapes; times are divided by T (shapes in a sweep may differ in T), so the y axis is milliseconds
per timestep. One figure per file and cell: forward on the left (ours, torch, onnxruntime),
forward+backward on the right (ours, torch).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AXES = {0: ("batch", "batch size B"), 3: ("hidden", "hidden size H")}
SERIES = {  # key in a forward row -> (label, style)
    "ours_fwd": ("ours", dict(color="tab:blue", marker="o")),
    "torch_fwd": ("torch", dict(color="tab:orange", marker="s")),
    "ort_fwd": ("onnxruntime", dict(color="tab:green", marker="^")),
    "ours_train": ("ours", dict(color="tab:blue", marker="o")),
    "torch_train": ("torch", dict(color="tab:orange", marker="s")),
}


def sweep_axis(rows: list[dict]) -> int:
    """The index in (B, T, I, H) that varies: 0 (batch) or 3 (hidden)."""
    shapes = [r["shape"] for r in rows]
    varying = [k for k in AXES if len({s[k] for s in shapes}) > 1]
    if len(varying) != 1:
        raise SystemExit(f"expected a sweep over exactly one of B or H, got shapes {shapes}; "
                         "make the JSON with bench_core.py --sweep batch|hidden")
    return varying[0]


def plot_file(path: Path, out_dir: Path, plt) -> list[Path]:
    results = json.loads(path.read_text())
    machine, args = results.get("machine", {}), results.get("args", {})
    device = args.get("device", "cpu")
    written = []
    for cell, rows in results["forward"].items():
        if len(rows) < 2:
            continue
        axis = sweep_axis(rows)
        name, xlabel = AXES[axis]
        rows = sorted(rows, key=lambda r: r["shape"][axis])
        xs = [r["shape"][axis] for r in rows]
        fig, (ax_f, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
        for ax, keys, title in ((ax_f, ("ours_fwd", "torch_fwd", "ort_fwd"), "forward"),
                                (ax_t, ("ours_train", "torch_train"), "forward + backward")):
            for key in keys:
                pts = [(x, r[key] / r["shape"][1]) for x, r in zip(xs, rows) if r.get(key) is not None]
                if pts:
                    label, style = SERIES[key]
                    ax.plot(*zip(*pts), label=label, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("ms per timestep")
            ax.set_title(f"{cell.upper()} {title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fixed = ", ".join(f"{d}={rows[0]['shape'][k]}" for k, d in enumerate("BTIH") if k != axis)
        fig.suptitle(f"{device.upper()} float32, {fixed}; {args.get('stat', 'median')} of {args.get('repeat', '?')}, "
                     f"{machine.get('threads', '?')} thread(s); {machine.get('cpu', '')}", fontsize=9)
        fig.tight_layout()
        out = out_dir / f"perf-{device}-{cell}-{name}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path, help="bench_core.py --json outputs (one sweep each)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="folder for the PNGs")
    args = p.parse_args(argv)
    import matplotlib  # an optional 'scripts' dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.json:
        for out in plot_file(path, args.out, plt):
            print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
