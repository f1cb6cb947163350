"""Regenerate the committed PyTorch golden files ``tests/golden/parity_*.npz``.

    .venv/bin/python -m scripts.make_golden            # writes tests/golden/
    .venv/bin/python -m scripts.make_golden --check    # recompute and compare, write nothing

Each file is one case from ``tests/torch_reference.golden_configs()``: torch's float32 run with its
default init under a fixed ``torch.manual_seed``, saved as compressed npz with the config as a
JSON string (loads with ``allow_pickle=False``). Needs the ``reference`` extra (torch).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from tests.engine.torch_reference import GOLDEN_DIR, build_case, case_filename, golden_configs, load_case, save_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args()

    configs = golden_configs()
    per_cell: dict[str, int] = {}
    expected, mismatched = set(), []
    for cfg in configs:
        index = per_cell[cfg["cell"]] = per_cell.get(cfg["cell"], -1) + 1
        path = GOLDEN_DIR / case_filename(cfg, index)
        expected.add(path.name)
        case = build_case(cfg)
        if args.check:
            old = load_case(path) if path.exists() else None
            same = old is not None and old["config"] == case["config"] and old.keys() == case.keys() and all(
                np.array_equal(old[k], case[k]) for k in case if k != "config")
            if not same:
                mismatched.append(path.name)
        else:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            save_case(path, case)
    stale = sorted(p.name for p in GOLDEN_DIR.glob("parity_*.npz") if p.name not in expected)
    total = sum(p.stat().st_size for p in GOLDEN_DIR.glob("parity_*.npz"))
    print(f"{len(configs)} cases, {total / 1024:.1f} KiB in {GOLDEN_DIR}")
    if stale:
        print("files no config produces (delete them):", ", ".join(stale))
    if args.check and mismatched:
        print("differ from a fresh torch run:", ", ".join(mismatched))
    return 1 if (stale or mismatched) else 0


if __name__ == "__main__":
    sys.exit(main())
