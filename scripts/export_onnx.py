"""Export a checkpoint to a standard ONNX graph (LSTM/GRU/RNN ops) that onnxruntime runs as is.

    python -m scripts.export_onnx models/charlm charlm.onnx
    python -m scripts.export_onnx runs/echo/model.safetensors echo.onnx --opset 17 --verify

Prints the graph's inputs and outputs with their shapes and checks the written file with
``onnx.checker`` (full check). ``--verify`` also runs the graph in onnxruntime, when it is installed,
on random ragged inputs with a random initial state and compares every output with our engine
(exit status 1 when some |diff| / (1 + |engine output|) exceeds --tolerance).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import onnx

import model_core
from model_core import CheckpointError
from model_core.onnx.exporter import DEFAULT_OPSET, MIN_OPSET, export
from model_core.onnx.export_check import onnxruntime_diff
from model_core.training import CHECKPOINT_NAME
from scripts.cli_types import positive_float, positive_int


def opset(s: str) -> int:
    v = int(s)
    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= v <= latest:
        raise argparse.ArgumentTypeError(f"must be in [{MIN_OPSET}, {latest}], got {s}")
    return v


def describe(value_info) -> str:
    t = value_info.type.tensor_type
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
    return f"{value_info.name:<14} {onnx.TensorProto.DataType.Name(t.elem_type).lower():<8} ({dims})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help=f"a {CHECKPOINT_NAME} or the directory holding it (e.g. models/charlm)")
    p.add_argument("output", type=Path, help="the .onnx file to write")
    p.add_argument("--opset", type=opset, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--verify", action="store_true", help="compare onnxruntime's outputs with our engine's")
    p.add_argument("--time", type=positive_int, default=12, help="steps in the --verify inputs")
    p.add_argument("--batch", type=positive_int, default=4, help="sequences in the --verify inputs")
    p.add_argument("--tolerance", type=positive_float, default=1e-5,
                   help="largest --verify |diff| / (1 + |engine output|) that passes")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.checkpoint / CHECKPOINT_NAME if args.checkpoint.is_dir() else args.checkpoint
    try:
        model = model_core.load(path)
        export(model, args.output, opset=args.opset)
    except (ValueError, CheckpointError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    proto = onnx.load(str(args.output))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes, opset {args.opset}) from {path}")
    print(f"  {model!r}")
    print("  inputs:")
    for v in proto.graph.input:
        print(f"    {describe(v)}")
    print("  outputs:")
    for v in proto.graph.output:
        print(f"    {describe(v)}")
    for key in ("labels", "vocab"):
        if json.loads(meta[key]) is not None:
            print(f"  {key}: {json.loads(meta[key])!r}")
    print("  onnx.checker (full_check): ok")
    if args.verify:
        return verify(model, args)
    return 0


def verify(model, args) -> int:
    if importlib.util.find_spec("onnxruntime") is None:
        print("  --verify skipped: onnxruntime is not installed", file=sys.stderr)
        return 0
    diffs = onnxruntime_diff(model, args.output.read_bytes(), time=args.time, batch=args.batch)
    worst = max(scaled for _, scaled in diffs.values())
    detail = ", ".join(f"{k} {a:.2e}" for k, (a, _) in diffs.items())
    ok = worst <= args.tolerance
    verdict = "ok" if ok else "FAILED"
    print(f"  onnxruntime vs engine, T={args.time} B={args.batch}, max |diff|: {detail}")
    print(f"  max |diff| / (1 + |engine|): {worst:.2e} (tolerance {args.tolerance:g}): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
