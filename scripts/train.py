"""Train a recurrent model on one of the classic tasks.

    python -m scripts.train --task temporal-order --difficulty easy --cell lstm --epochs 10 --out runs/to-easy
    python -m scripts.train --task echo --cell lstm --hidden-size 16 --epochs 2 --out runs/echo
    python -m scripts.train --task charlm --cell lstm --hidden-size 256 --epochs 1 --out runs/charlm

Writes ``model.safetensors`` (a model_core checkpoint, with optimiser state for ``--resume``),
``metrics.json`` (config, final metrics, per-epoch history) and ``curves.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from model_core import CheckpointError, DeviceError, keep_freed_memory
from model_core.config import CELLS
from model_core.data.temporal_order import Difficulty
from model_core.training import CHECKPOINT_NAME, TASKS, TrainConfig, train
from scripts.cli_types import positive_float, positive_int
from scripts.plots import plot_curves


def difficulty(s: str) -> str:
    try:
        return Difficulty.parse(s).name.lower()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--hidden-size", type=positive_int, default=32)
    p.add_argument("--num-layers", type=positive_int, default=1)
    p.add_argument("--embedding-dim", type=positive_int, default=64, help="char-LM embedding size")
    p.add_argument("--dropout", type=float, default=0.0, help="between stacked layers (char-LM)")
    p.add_argument("--difficulty", type=difficulty, default="easy", help="temporal-order level: " +
                   ", ".join(d.name.lower() for d in Difficulty))
    p.add_argument("--delay", type=positive_int, default=3, help="echo delay in steps")
    p.add_argument("--chunk", type=positive_int, default=10, help="echo chunk length (truncated BPTT)")
    p.add_argument("--stream-length", type=positive_int, default=40_000, help="echo bits per stream")
    p.add_argument("--seq-len", type=positive_int, default=100, help="char-LM chunk length (truncated BPTT)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--max-batches-per-epoch", "--steps", type=positive_int, default=None,
                   help="cap on training batches per epoch (--steps is the old name)")
    p.add_argument("--max-val-batches", type=positive_int, default=None,
                   help="cap on validation batches, for a quick run (default: the whole validation split)")
    p.add_argument("--lr", type=positive_float, default=0.01)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--clip", type=positive_float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--forget-bias", type=float, default=0.0,
                   help="LSTM only: start the forget-gate biases this much higher (e.g. 3 for long lags)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--resume", type=Path, default=None, help=f"checkpoint to continue from (its {CHECKPOINT_NAME})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return p


def config_from_args(args) -> TrainConfig:
    opts = {"temporal-order": {"difficulty": args.difficulty},
            "echo": {"delay": args.delay, "chunk": args.chunk, "length": args.stream_length},
            "charlm": {"seq_len": args.seq_len}}[args.task]
    return TrainConfig(task=args.task, cell=args.cell, hidden_size=args.hidden_size, num_layers=args.num_layers,
                       embedding_dim=args.embedding_dim, dropout=args.dropout, epochs=args.epochs,
                       max_batches_per_epoch=args.max_batches_per_epoch, max_val_batches=args.max_val_batches,
                       lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size, clip=args.clip,
                       forget_bias=args.forget_bias, seed=args.seed, device=args.device, task_options=opts)


def run(cfg: TrainConfig, out: Path, resume: Path | None = None, progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    bar = None

    def on_step(epoch, i, n, res):
        nonlocal bar
        if not progress:
            return
        if bar is None:
            bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, dynamic_ncols=True)
        bar.update(1)
        bar.set_postfix(loss=f"{res.loss:.4f}", acc=f"{res.correct / max(res.count, 1):.3f}")

    def on_epoch(rec):
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        extra = f"val bpc {rec['val_bpc']:.3f}" if "val_bpc" in rec else f"val acc {100 * rec['val_accuracy']:.2f}%"
        tqdm.write(f"epoch {rec['epoch']:3d}  train loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}  "
                   f"{extra}  ({rec['seconds']:.1f}s)")

    start = time.perf_counter()
    model, history = train(cfg, out_dir=out, resume=resume, on_step=on_step, on_epoch=on_epoch)
    final = history[-1] if history else {}
    metrics = {
        "config": asdict(cfg),
        "model": json.loads(model.config.to_json()),
        "num_parameters": model.num_parameters(),
        "device": model.device,
        "final": {"train": {k[6:]: v for k, v in final.items() if k.startswith("train_")},
                  "validation": {k[4:]: v for k, v in final.items() if k.startswith("val_")}},
        "epochs_run": len(history),
        "wall_seconds_this_run": time.perf_counter() - start,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves({cfg.cell.upper(): history}, out / "curves.png", title=f"{cfg.task} ({cfg.cell})")
    return metrics


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.resume is not None and not args.resume.is_file():
            parser.error(f"--resume: no checkpoint at {args.resume}")
        keep_freed_memory()            # each step's caches reuse the last step's pages (model_core/heap.py)
        metrics = run(cfg, args.out, args.resume, progress=not args.no_progress)
    except (ValueError, DeviceError, CheckpointError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    val = metrics["final"]["validation"]
    print(f"done: {metrics['epochs_run']} epochs, validation " +
          ", ".join(f"{k} {v:.4f}" for k, v in val.items()) + f"; wrote {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
