"""scripts/bench_protocols.py runs end to end for a moment: every protocol answers, the table prints."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("tritonclient.http")



@pytest.mark.timeout(120)
def test_bench_protocols_quick_runs_every_protocol(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "scripts.bench_protocols", "--quick", "--duration", "0.3", "--concurrency", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "req/s vs websocket" in proc.stdout and "server CPU µs/req" in proc.stdout
    results = json.loads(out.read_text())
    assert set(results) == {"triton http json", "triton http binary", "triton grpc unary", "triton grpc stream",
                            "v1 session step", "websocket"}
    for name, r in results.items():
        assert r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["server_cpu_us"] >= 0, name
