"""``make gpu-check`` (scripts/gpu_check.py): its CPU fallback, its plan and its one table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_core.backend import gpu_available
from scripts import gpu_check
from tests.helpers import ROOT



@pytest.mark.skipif(gpu_available(), reason="checks the fallback taken without a CUDA device")
def test_without_a_gpu_it_says_why_writes_both_files_and_exits_3(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == gpu_check.EXIT_NO_GPU == 3
    assert "CPU fallback: no usable CUDA device" in proc.stderr and "why:" in proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "no_gpu" and report["exit_code"] == 3
    assert report["reason"] and report["reason"] in (tmp_path / "gpu_check.md").read_text()
    assert not (tmp_path / "tests.log").exists()                     # nothing ran


def test_the_plan_fits_the_budget_and_runs_every_cell_on_the_gpu(capsys):
    assert gpu_check.main(["--plan", "--budget", "480"]) == 0
    printed = capsys.readouterr().out
    assert "pytest" in printed and "--device gpu --cell all" in printed
    plan = gpu_check.stages(Path("/tmp/x"), 480)
    assert sum(s["limit_s"] for s in plan) + gpu_check.MARGIN_S <= 480


def test_the_table_has_a_row_per_measurement_with_ratios(tmp_path):
    report = {"status": "ok",
              "tests": {"passed": 520, "failed": 0, "errors": 0, "skipped": 3, "status": "ok", "seconds": 95.0},
              "bench": {"forward": {"lstm": [{"shape": [32, 100, 64, 256], "ours_fwd": 2.0, "torch_fwd": 1.0,
                                              "ours_train": 6.0, "torch_train": None}]},
                        "step": [{"cell": "gru", "B": 64, "ours": 30.0, "torch": 60.0, "naive": 90.0}]},
              "bench_status": "ok"}
    gpu_check.write(tmp_path, report)
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| GPU tests | 520 passed |" in text
    assert "| lstm forward B,T,I,H=32,100,64,256 (ms) | 2.00 | 1.00 | 2.00 |" in text
    assert "| lstm fwd+bwd B,T,I,H=32,100,64,256 (ms) | 6.00 | n/a | n/a |" in text
    assert "| gru single step B=64 (µs) | 30.00 | 60.00 | 0.50 | 90.00 | 0.33 |" in text
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == report


def test_junit_counts_read_pytests_summary(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">'
                   '</testsuite></testsuites>')
    assert gpu_check.junit_counts(xml) == {"passed": 4, "failed": 2, "errors": 1, "skipped": 3}
    assert gpu_check.junit_counts(tmp_path / "missing.xml")["passed"] == 0
