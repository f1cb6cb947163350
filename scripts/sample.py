"""Generate text from a character-level language-model checkpoint.

    python -m scripts.sample --checkpoint runs/charlm --prompt "ROMEO:" --length 300
    python -m scripts.sample --checkpoint runs/charlm/model.safetensors --prompt "The " --n 3 --top-k 10
    python -m scripts.sample --checkpoint runs/charlm --prompt "KING" --greedy

Characters are encoded with the vocabulary stored in the checkpoint's config, so a prompt may use
only characters the model was trained on; anything else is an error that lists them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import model_core
from model_core import CheckpointError, DeviceError
from model_core.data.charlm import Vocab
from model_core.sampling import generate
from model_core.training import CHECKPOINT_NAME
from scripts.cli_types import non_negative_int, positive_int


def temperature(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 is greedy), got {s}")
    return v


def load_lm(path: Path, device: str = "cpu"):
    """A character LM and its vocabulary, from a checkpoint file or a run directory."""
    path = path / CHECKPOINT_NAME if path.is_dir() else path
    model = model_core.load(path, device=device)
    if model.config.task != "lm" or not model.config.vocab:
        raise ValueError(f"{path} is not a language model with a vocabulary (task={model.config.task!r})")
    vocab = Vocab(list(model.config.vocab))
    if vocab.chars != tuple(model.config.vocab):                         # ids are positions in the stored order
        raise ValueError(f"{path}: the stored vocabulary is not a sorted set of characters")
    return model, vocab


def encode_prompt(vocab: Vocab, prompt: str) -> np.ndarray:
    if not prompt:
        raise ValueError("--prompt must not be empty: generation starts from the prompt's last character")
    unknown = sorted(set(prompt) - set(vocab.chars))
    if unknown:
        raise ValueError(f"the prompt has characters the model's vocabulary lacks: {unknown!r} "
                         f"(vocabulary: {''.join(vocab.chars)!r})")
    return vocab.encode(prompt)                                          # (len(prompt),)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help=f"a {CHECKPOINT_NAME} or the run dir holding it")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--length", type=non_negative_int, default=200, help="characters to generate per sample")
    p.add_argument("--temperature", type=temperature, default=1.0, help="softmax temperature; 0 is greedy")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely characters")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character")
    p.add_argument("--n", type=positive_int, default=1, help="number of samples (run as one batch)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: fresh randomness)")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model, vocab = load_lm(args.checkpoint, args.device)
        ids = encode_prompt(vocab, args.prompt)
        outs = generate(model, ids, max_length=args.length, n=args.n, temperature=args.temperature,
                        top_k=args.top_k, greedy=args.greedy, rng=np.random.default_rng(args.seed))
    except (ValueError, DeviceError, CheckpointError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    for i, out in enumerate(outs):
        if args.n > 1:
            print(f"--- sample {i + 1} ---")
        print(args.prompt + vocab.decode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
