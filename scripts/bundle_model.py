"""Copy a finished training run into the model repository (``models/NAME/``) for serving.

    python -m scripts.bundle_model runs/charlm models/charlm

Writes ``model.safetensors`` without the optimiser moments (serving does not need them and they
triple the size), plus the run's ``metrics.json`` and ``curves.png``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import model_core
from model_core import checkpoint
from model_core.training import CHECKPOINT_NAME


def bundle(run_dir: Path, dest: Path) -> Path:
    config, params, extra, _ = checkpoint.read(run_dir / CHECKPOINT_NAME)
    model = model_core.load(run_dir / CHECKPOINT_NAME)
    dest.mkdir(parents=True, exist_ok=True)
    keep = {k: extra[k] for k in ("train_config", "epoch") if k in extra}
    checkpoint.save(model, dest / CHECKPOINT_NAME, extra=keep)
    for name in ("metrics.json", "curves.png"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help=f"a train.py --out directory holding {CHECKPOINT_NAME}")
    p.add_argument("dest", type=Path, help="models/NAME")
    args = p.parse_args(argv)
    try:
        out = bundle(args.run_dir, args.dest)
    except (ValueError, OSError) as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"bundled {args.run_dir} -> {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
