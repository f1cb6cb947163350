"""``make gpu-check``: the GPU tests and the GPU benchmarks in one run that fits 8 minutes.

Runs, with this interpreter and nothing but the repository and its installed wheels:

1. the tests marked ``gpu`` (every test written once for both backends, on CuPy) plus the tests
   whose answer depends on whether a GPU is present (``device="auto"``);
2. ``python -m scripts.bench_core --device gpu`` over every cell: forward, training step and
   single-step latency against torch's cuDNN (when torch has CUDA) and a naive CuPy loop.

It writes ``<out>/gpu_check.json`` (everything, including the benchmark's own JSON) and
``<out>/gpu_check.md`` (one table), and prints that table.

Exit codes: 0 every test passed and the benchmark ran; 1 a test failed, or a stage errored or
ran out of time; 3 no usable CUDA device, so nothing ran (the reason is printed and written).

    python -m scripts.gpu_check --out gpu-check            # what ``make gpu-check`` runs
    python -m scripts.gpu_check --plan                     # the commands and time limits only
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from model_core.backend import gpu_available

ROOT = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3
BUDGET_S = 480                       # one 8-minute run on a lent machine
TESTS_LIMIT_S = 240
MARGIN_S = 20                        # writing the report, and interpreter start-up
BENCH_SHAPES = "1,100,64,256;32,100,64,256;256,50,64,256;1024,100,128,512"
# the tests marked gpu, and the ones whose answer changes with a GPU present (device "auto", fallbacks)
TEST_SELECTION = "gpu or auto or fallback"


def no_gpu_reason() -> str | None:
    """Why the GPU cannot be used here, in words, or None when CuPy sees a CUDA device."""
    if gpu_available():
        return None
    try:
        import cupy
        del cupy
    except Exception as exc:  # ImportError, or CUDA libraries that fail to load
        return f"CuPy cannot be imported ({type(exc).__name__}: {exc}); install the wheels with pip install -e '.[gpu]'"
    return "CuPy is installed but sees no CUDA device (check the driver, nvidia-smi and CUDA_VISIBLE_DEVICES)"


def stages(out: Path, budget_s: float) -> list[dict]:
    """The commands, in order, each with its time limit."""
    python = sys.executable
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={out / 'gpu_tests.xml'}",
             "-k", TEST_SELECTION, "tests/"]
    bench = [python, "-m", "scripts.bench_core", "--device", "gpu", "--cell", "all", "--repeat", "3",
             "--step-calls", "300", "--shapes", BENCH_SHAPES, "--json", str(out / "bench_gpu.json")]
    tests_limit = min(TESTS_LIMIT_S, budget_s / 2)
    return [{"name": "tests", "cmd": tests, "limit_s": tests_limit},
            {"name": "bench", "cmd": bench, "limit_s": budget_s - tests_limit - MARGIN_S}]


def run_stage(stage: dict, log: Path) -> dict:
    """Run one stage under its time limit; its output goes to ``log`` and the console tail."""
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as f:
        proc = subprocess.Popen(stage["cmd"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=stage["limit_s"])
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, status = None, "timeout"
    return {"name": stage["name"], "status": status, "returncode": rc, "seconds": round(time.monotonic() - t0, 1),
            "limit_s": stage["limit_s"], "log": log.name}


def junit_counts(junit: Path) -> dict:
    """passed / failed / errors / skipped from pytest's JUnit XML (zeros when it was not written)."""
    if not junit.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    head = junit.read_text()[:2000]
    n = {k: int(m.group(1)) if (m := re.search(rf'\b{k}="(\d+)"', head)) else 0
         for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def table(report: dict) -> str:
    """One Markdown table: a row per test stage and one per benchmark measurement, ratios against peers."""
    rows = ["| what | ours | peer (torch cuDNN) | ours/peer | naive CuPy | ours/naive | note |",
            "|---|---|---|---|---|---|---|"]
    t = report.get("tests", {})
    if t:
        rows.append(f"| GPU tests | {t['passed']} passed | | | | | {t['failed']} failed, {t['errors']} errors, "
                    f"{t['skipped']} skipped ({t['status']}, {t['seconds']} s) |")
    bench = report.get("bench", {})
    for cell, shapes in bench.get("forward", {}).items():
        for r in shapes:
            shape = ",".join(map(str, r["shape"]))
            rows.append(f"| {cell} forward B,T,I,H={shape} (ms) | {_ms(r.get('ours_fwd'))} | {_ms(r.get('torch_fwd'))} "
                        f"| {_ratio(r.get('ours_fwd'), r.get('torch_fwd'))} | | | |")
            rows.append(f"| {cell} fwd+bwd B,T,I,H={shape} (ms) | {_ms(r.get('ours_train'))} | "
                        f"{_ms(r.get('torch_train'))} | {_ratio(r.get('ours_train'), r.get('torch_train'))} | | | |")
    for r in bench.get("step", []):
        rows.append(f"| {r['cell']} single step B={r['B']} (µs) | {_ms(r.get('ours'))} | {_ms(r.get('torch'))} | "
                    f"{_ratio(r.get('ours'), r.get('torch'))} | {_ms(r.get('naive'))} | "
                    f"{_ratio(r.get('ours'), r.get('naive'))} | |")
    if "bench_status" in report and report["bench_status"] != "ok":
        rows.append(f"| GPU benchmark | | | | | | {report['bench_status']} (see bench.log) |")
    return "\n".join(rows) + "\n"


def write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = table(report) if report["status"] != "no_gpu" else f"GPU check not run: {report['reason']}\n"
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "gpu-check", help="folder for the JSON, the table and the logs")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run (default 480)")
    p.add_argument("--plan", action="store_true", help="print the commands and their time limits, run nothing")
    args = p.parse_args(argv)
    out = args.out.resolve()
    plan = stages(out, args.budget)
    if args.plan:
        for s in plan:
            print(f"[{s['name']}, at most {s['limit_s']:.0f} s] {' '.join(s['cmd'])}")
        return EXIT_OK
    out.mkdir(parents=True, exist_ok=True)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"CPU fallback: no usable CUDA device, so the GPU tests and benchmarks did not run.\n  why: {reason}\n"
              f"  the CPU suite covers the same code on NumPy (make test); run make gpu-check on a machine with "
              f"a CUDA device. Exit code {EXIT_NO_GPU}.", file=sys.stderr)
        write(out, {"status": "no_gpu", "reason": reason, "exit_code": EXIT_NO_GPU})
        return EXIT_NO_GPU
    report: dict = {"status": "running", "budget_s": args.budget, "stages": []}
    for stage in plan:
        print(f"== {stage['name']} (at most {stage['limit_s']:.0f} s)", flush=True)
        result = run_stage(stage, out / f"{stage['name']}.log")
        report["stages"].append(result)
        print(f"   {result['status']} in {result['seconds']} s", flush=True)
    tests_stage, bench_stage = report["stages"]
    report["tests"] = {**junit_counts(out / "gpu_tests.xml"), "status": tests_stage["status"],
                       "seconds": tests_stage["seconds"]}
    bench_json = out / "bench_gpu.json"
    report["bench"] = json.loads(bench_json.read_text()) if bench_json.is_file() else {}
    report["bench_status"] = bench_stage["status"]
    ok = all(s["status"] == "ok" for s in report["stages"]) and report["tests"]["passed"] > 0
    report["status"] = "ok" if ok else "failed"
    report["exit_code"] = EXIT_OK if ok else EXIT_FAILED
    write(out, report)
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
