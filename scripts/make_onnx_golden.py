"""Regenerate the committed ONNX golden files.

    .venv/bin/python -m scripts.make_onnx_golden            # writes tests/golden/onnx_ops and onnx_torch
    .venv/bin/python -m scripts.make_onnx_golden --check    # recompute and compare, write nothing

``onnx_ops``: single-node LSTM / GRU / RNN graphs built from the operator spec
(``tests/onnx_reference.golden_recurrent_cases``), with onnxruntime's outputs as the expectation.
``onnx_torch``: embedding + recurrent core + linear head models exported by torch.onnx's
TorchScript exporter (``tests/onnx_reference.torch_cases``), with torch's outputs.
Each case is ``<name>.onnx`` plus ``<name>.npz`` (inputs and outputs; loads with
``allow_pickle=False``). Needs the ``reference`` extra (onnxruntime and torch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tests.onnx.onnx_reference import (GOLDEN_OPS_DIR, GOLDEN_TORCH_DIR, golden_recurrent_cases, load_case,
                                  ort_recurrent, recurrent_feed, recurrent_model, save_case, torch_case, torch_cases)

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def recurrent_golden():
    import onnxruntime as ort  # the reference extra only
    for name, case in golden_recurrent_cases().items():
        feed = recurrent_feed(case)
        model = recurrent_model(case)
        names = [o.name for o in model.graph.output]
        yield GOLDEN_OPS_DIR, name, model.SerializeToString(), feed, dict(zip(names, ort_recurrent(ort, case, feed)))


def torch_golden():
    for name, cfg in torch_cases().items():
        model, feed, expected = torch_case(cfg)
        yield GOLDEN_TORCH_DIR, name, model, feed, expected


def same_case(directory: Path, name: str, feed: dict, expected: dict) -> bool:
    if not (directory / f"{name}.npz").exists():
        return False
    _, old_feed, old_expected = load_case(directory, name)
    return (old_feed.keys() == feed.keys() and old_expected.keys() == expected.keys()
            and all(np.array_equal(old_feed[k], feed[k]) for k in feed)
            and all(np.allclose(old_expected[k], expected[k], **TOLERANCE) for k in expected))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args()
    import onnx

    mismatched, written = [], {GOLDEN_OPS_DIR: set(), GOLDEN_TORCH_DIR: set()}
    for directory, name, model, feed, expected in [*recurrent_golden(), *torch_golden()]:
        written[directory].add(name)
        if args.check:
            if not same_case(directory, name, feed, expected):
                mismatched.append(name)
        else:
            save_case(directory, name, onnx.load_from_string(model), feed, expected)
    for directory, names in written.items():
        stale = sorted(p.stem for p in directory.glob("*.onnx") if p.stem not in names)
        if stale and not args.check:
            for stem in stale:
                (directory / f"{stem}.onnx").unlink()
                (directory / f"{stem}.npz").unlink(missing_ok=True)
        mismatched += stale if args.check else []
    total = sum(len(n) for n in written.values())
    size = sum(p.stat().st_size for d in written for p in d.glob("*") if p.is_file())
    if mismatched:
        print(f"{len(mismatched)} of {total} golden cases differ: {', '.join(mismatched)}")
        return 1
    print(f"{'checked' if args.check else 'wrote'} {total} golden cases ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
