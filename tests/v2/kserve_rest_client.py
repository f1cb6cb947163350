"""Drives the server with the KServe SDK's REST client; run by test_kserve_sdk_client.py in its own venv.

kserve and tritonclient register the same protobuf names, so this runs in a separate process
(and a separate environment). Usage: ``python kserve_rest_client.py BASE_URL CASES_JSON``, where
each case is ``{"model", "input", "datatype", "rows", "chunks"}``. Prints one JSON object: per case
and binary mode, the stateless output and the chunked outputs of a sequence.
"""
from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

DTYPES = {"INT64": np.int64, "FP32": np.float32, "BYTES": object}


def tensor(case: dict, rows, binary: bool) -> InferInput:
    if case["datatype"] == "BYTES":
        x = np.array([r.encode() for r in rows], dtype=object)
    else:
        x = np.array([rows], dtype=DTYPES[case["datatype"]])
    t = InferInput(case["input"], list(x.shape), case["datatype"])
    t.set_data_from_numpy(x, binary_data=binary)
    return t


async def main(base: str, cases: list[dict]) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    out = {"server_ready": await client.is_server_ready(base), "runs": []}
    for n, case in enumerate(cases):
        model = case["model"]
        out.setdefault("model_ready", {})[model] = await client.is_model_ready(base, model)
        for binary in (False, True):
            req = InferRequest(model_name=model, infer_inputs=[tensor(case, case["rows"], binary)], request_id="whole")
            whole = await client.infer(base, req, model_name=model)
            chunks, seq_id = [], f"kserve-{n}-{binary}"
            for i, rows in enumerate(case["chunks"]):
                params = {"sequence_id": seq_id, "sequence_start": i == 0, "sequence_end": i == len(case["chunks"]) - 1}
                req = InferRequest(model_name=model, infer_inputs=[tensor(case, rows, binary)], parameters=params)
                r = await client.infer(base, req, model_name=model)
                chunks.append(r.outputs[0].as_numpy().tolist())
            out["runs"].append({"model": model, "binary": binary, "name": whole.outputs[0].name,
                                "whole": whole.outputs[0].as_numpy().tolist(), "chunks": chunks})
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))))
