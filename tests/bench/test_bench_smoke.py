"""scripts/bench_core.py runs end to end on a tiny grid: it checks ours and ORT against torch, then times."""
import json
import subprocess
import sys

import pytest

from model_core.heap import keep_freed_memory
from scripts import onednn_probe
from tests.helpers import ROOT

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")



@pytest.mark.torch
@pytest.mark.timeout(60)
def test_bench_quick_runs_and_prints_tables(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench_core", "--quick", "--repeat", "1", "--cell", "all", "--threads", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ours fwd ms" in proc.stdout and "torch fwd+bwd ms" in proc.stdout  # the table header
    assert "ours step µs" in proc.stdout
    # every contestant runs with the same heap policy, and the header says which
    policy = "freed memory kept" if keep_freed_memory() else "the C library's policy"
    assert f"| heap: {policy}" in proc.stdout.splitlines()[0]
    assert "MISMATCH" not in proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(results["forward"]) == {"lstm", "gru", "rnn"}
    for rows in results["forward"].values():
        assert all(r["ours_fwd"] > 0 and r["torch_fwd"] > 0 and r["ort_fwd"] > 0 for r in rows)
        for r in rows:                                                  # every ratio also taken round by round
            assert r["paired"]["ours/ort"]["rounds"] == 1
            assert r["paired"]["ours/ort"]["median"] == pytest.approx(r["ms"]["ours_fwd"]["runs"][0]
                                                                      / r["ms"]["ort_fwd"]["runs"][0])
    assert "ratios round by round" in proc.stdout
    # the single step: the trainable layer and the served (frozen) one, each checked against the naive step
    assert {r["cell"] for r in results["step"]} == {"lstm", "gru", "rnn"}
    assert all(r["ours"] > 0 and r["served"] > 0 and r["torch"] > 0 for r in results["step"])
    # and its floor: the weights read once at this core's read rate, or the FMAs at the FMA loop's
    assert "served/floor" in proc.stdout and "floor of lstm B=1" in proc.stdout
    for r in results["step"]:
        f = r["floor"]
        assert f["us"] == max(f["read_us"], f["fma_us"]) > 0
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[r["cell"]]
        assert f["bytes"] == 4 * gates * (64 + 256) * 256                # W_ih and W_hh at I=64, H=256
        if r["cell"] == "rnn":                                          # bfloat16 weights: LSTM and GRU only
            assert r["bf16"] is None and "bf16_floor" not in r
        else:
            assert r["bf16"] > 0 and r["bf16_floor"]["bytes"] == 2 * gates * (64 + 256) * 256
    # the forward of bfloat16 weights, checked against float32 arithmetic on the rounded weights
    for cell, rows in results["forward"].items():
        for r in rows:
            if cell == "rnn":
                assert r["ours_bf16"] is None and r["paired"]["bf16/ort"] is None
            else:
                assert r["ours_bf16"] > 0 and r["check"]["bf16_vs_rounded"] <= 1e-4
                assert r["paired"]["bf16/ort"]["rounds"] == 1
    # oneDNN's primitives, where its library is installed (.ci/run installs it): checked, timed, paired
    onednn = onednn_probe.load() is not None
    for cell, rows in results["forward"].items():
        for r in rows:
            if onednn and cell != "rnn":
                assert r["onednn_fwd"] > 0 and r["check"]["onednn_vs_torch"] <= 1e-4
                assert r["paired"]["served/onednn"]["rounds"] == 1
            else:
                assert r["onednn_fwd"] is None and r["paired"]["served/onednn"] is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads, clock", [("1", "cpu"), ("2", "wall")])
def test_bench_onnx_runs_one_node_in_turns(threads, clock):
    """scripts/bench_onnx.py checks a node against onnxruntime, times both in turns and prints the ratios."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench_onnx", "--ops", "LSTM", "--shapes", "2,5,3,8", "--directions", "forward",
         "--repeat", "2", "--threads", threads, "--clock", clock],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("LSTM")]
    assert [r[3] for r in rows] == ["full", "ragged"]
    for r in rows:                                       # ours, ort, the ratio of bests, the paired median [quartiles]
        ours, ort, ratio, paired = map(float, r[4:8])
        assert ours > 0 and ort > 0 and ratio > 0 and paired > 0
        assert r[8].startswith("[") and r[8].endswith("]")
    assert "geometric mean ratio" in proc.stdout


def test_bench_onnx_adds_the_bfloat16_sessions_where_a_node_can_read_them():
    """--bf16: a third contestant on the LSTM and GRU rows (checked against float32 on rounded W and
    R first), n/a on the RNN's."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench_onnx", "--ops", "GRU,RNN", "--shapes", "2,5,3,8", "--directions",
         "bidirectional", "--repeat", "2", "--no-ragged", "--bf16"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("GRU", "RNN"))}
    bf16, paired = float(rows["GRU"][9]), float(rows["GRU"][10])
    assert bf16 > 0 and paired > 0 and rows["GRU"][11].startswith("[")
    assert rows["RNN"][9:] == ["n/a", "n/a"]
    assert "bf16/ort paired" in proc.stdout
