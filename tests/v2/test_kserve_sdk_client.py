"""The KServe SDK's REST client (``InferenceRESTClient`` + ``InferRequest``), unchanged, against a real uvicorn.

kserve cannot share a process with tritonclient (both register the same protobuf names), so it
lives in its own venv and runs as a subprocess: ``KSERVE_PYTHON``, else ``.venv-kserve`` in the repo
root (``.ci/run`` creates it), else ``/work/venv-kserve``. Skipped, saying so, when none has kserve.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np

from tests.helpers import kserve_python

SCRIPT = Path(__file__).parent / "kserve_rest_client.py"
TEXT = "To be, or not to be"
BITS = [[1.0], [0.0], [1.0], [1.0], [0.0], [1.0]]


def test_kserve_rest_client_every_model_binary_and_json(live_server):
    python = kserve_python()
    base = f"http://{live_server}"
    vocab = {m: httpx.get(f"{base}/v1/models/{m}").json()["vocab"] for m in ("charlm", "temporal-order")}
    seq = "BaXbcYdE"

    def ids(m, text):
        return [vocab[m].index(ch) for ch in text]

    cases = [
        {"model": "charlm", "input": "INPUT_IDS", "datatype": "INT64", "rows": ids("charlm", TEXT),
         "chunks": [ids("charlm", TEXT[:4]), ids("charlm", TEXT[4:5]), ids("charlm", TEXT[5:])]},
        {"model": "charlm", "input": "INPUT_TEXT", "datatype": "BYTES", "rows": [TEXT],
         "chunks": [[TEXT[:7]], [TEXT[7:]]]},
        {"model": "temporal-order", "input": "INPUT_IDS", "datatype": "INT64", "rows": ids("temporal-order", seq),
         "chunks": [ids("temporal-order", seq[:3]), ids("temporal-order", seq[3:])]},
        {"model": "echo", "input": "INPUT", "datatype": "FP32", "rows": BITS, "chunks": [BITS[:2], BITS[2:]]},
    ]
    done = subprocess.run([python, str(SCRIPT), base, json.dumps(cases)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["server_ready"] and all(out["model_ready"].values())
    assert len(out["runs"]) == 2 * len(cases)
    for run in out["runs"]:
        whole, chunks = np.array(run["whole"])[0], [np.array(c)[0] for c in run["chunks"]]
        model = run["model"]
        if model == "temporal-order":
            ref = httpx.post(f"{base}/v1/models/{model}/classify", json={"inputs": [seq]}).json()["results"][0]
            np.testing.assert_allclose(whole, [ref["probabilities"][k] for k in "QRSU"], atol=2e-6)
            np.testing.assert_allclose(chunks[-1], whole, atol=2e-6)              # the sequence ends where the run does
            continue
        seq_in = BITS if model == "echo" else TEXT
        steps = httpx.post(f"{base}/v1/models/{model}/predict",
                           json={"inputs": [seq_in], "top_k": whole.shape[-1]}).json()["outputs"][0]
        ref = np.stack([s["probabilities"] if "probabilities" in s else
                        np.bincount([t["index"] for t in s["top_k"]], [t["probability"] for t in s["top_k"]],
                                    whole.shape[-1]) for s in steps])
        np.testing.assert_allclose(whole, ref, rtol=5e-5, atol=2e-6)
        np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=5e-5, atol=2e-6)
