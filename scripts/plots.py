"""Training-curve plots shared by train.py and compare.py (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure    # a Figure renders without pyplot's global backend: headless


def plot_curves(runs: dict[str, list[dict]], path, title: str = "") -> Path:
    """Loss (train and validation) and the validation metric per epoch, one line per run."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_metric = fig.subplots(1, 2)
    metric = "bpc" if any("val_bpc" in r for h in runs.values() for r in h) else "accuracy"
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        line, = ax_loss.plot(epochs, [r["train_loss"] for r in history], label=f"{label} train")
        ax_loss.plot(epochs, [r["val_loss"] for r in history], "--", color=line.get_color(), label=f"{label} validation")
        if metric == "accuracy":
            ax_metric.plot(epochs, [100 * r["val_accuracy"] for r in history], color=line.get_color(), label=label)
        else:
            ax_metric.plot(epochs, [r["val_bpc"] for r in history], color=line.get_color(), label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    ax_metric.set(xlabel="epoch", ylabel="validation accuracy (%)" if metric == "accuracy" else "validation bits/char",
                  title=f"validation {metric}")
    if metric == "accuracy":
        ax_metric.set_ylim(0, 101)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
