"""Run by tests/v2/test_grpc_clients.py in the KServe SDK's own interpreter (its protobufs clash with tritonclient's).

``python kserve_grpc_script.py HOST:PORT INPUTS.json [API_KEY]`` drives every model in INPUTS.json through
``kserve.InferenceGRPCClient``: stateless with raw contents, stateless with typed contents, and as a
sequence in chunks. Prints one JSON object: per model, each mode's PROBABILITIES as nested lists.
"""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def request(model, name, arr, typed=False, parameters=None):
    dt = "INT64" if arr.dtype.kind == "i" else "FP32"
    data = arr.reshape(-1).tolist() if typed else arr
    return InferRequest(model_name=model, infer_inputs=[InferInput(name, list(arr.shape), dt, data=data)],
                        request_id=f"{model}-{'typed' if typed else 'raw'}", parameters=parameters)


def probabilities(resp):
    return next(o for o in resp.outputs if o.name == "PROBABILITIES").as_numpy().tolist()


async def main(address, cases, key):
    headers = [("x-api-key", key)] if key else None
    client = InferenceGRPCClient(address, timeout=60)
    out = {"live": await client.is_server_live(headers=headers), "ready": await client.is_server_ready(headers=headers)}
    for model, case in cases.items():
        arr = np.asarray(case["data"], dtype=case["dtype"])
        got = {"ready": await client.is_model_ready(model, headers=headers),
               "raw": probabilities(await client.infer(request(model, case["name"], arr), headers=headers)),
               "typed": probabilities(await client.infer(request(model, case["name"], arr, typed=True),
                                                         headers=headers)),
               "chunks": []}
        bounds = np.cumsum([0] + case["chunks"])
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            params = {"sequence_id": f"kserve-{model}", "sequence_start": i == 0,
                      "sequence_end": i == len(case["chunks"]) - 1}
            resp = await client.infer(request(model, case["name"], arr[:, a:b], parameters=params), headers=headers)
            got["chunks"].append(probabilities(resp))
        out[model] = got
    await client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3] if len(sys.argv) > 3 else None))
