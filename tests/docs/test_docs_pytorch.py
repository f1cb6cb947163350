"""docs/pytorch.md runs as written: every fenced block, in order, in an empty folder.

Each fence's info string says what the test does with it, so the page and the test cannot drift:

* ``python run``: executed, all in one namespace (the walk-through's state carries on);
* ``bash run``: run by bash (``-euo pipefail``), with ``python`` being this interpreter;
* ``bash serve``: started in the background as written, the service it starts used by the rest;
* ``json file=PATH``: written to PATH (and validated, for a model card);
* ``bash install``: the pip lines, checked against pyproject's extras (the suite does not install);
* ``python onnxscript``: the new exporter's variant, run only where ``onnxscript`` is installed.

Client URLs say ``127.0.0.1:8000``, the service's default; the test gives the server a free port
(``RNN_SERVE_PORT``) and rewrites the URLs to it. After the page has run, the served models'
outputs are compared with the page's own torch models.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, free_port, wait_ready

from service.model_card import ModelCard

DOC = ROOT / "docs" / "pytorch.md"
FENCE = re.compile(r"^```(\w+)[ \t]*([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
KINDS = {("python", "run"), ("bash", "run"), ("bash", "serve"), ("bash", "install"), ("python", "onnxscript"),
         ("json", "file")}
DOC_URL = "127.0.0.1:8000"


@dataclass(frozen=True)
class Block:
    lang: str
    tag: str
    arg: str
    code: str
    line: int

    def where(self) -> str:
        return f"docs/pytorch.md:{self.line}"


def blocks() -> list[Block]:
    text = DOC.read_text()
    out = []
    for m in FENCE.finditer(text):
        tag, _, arg = m.group(2).partition("=")
        out.append(Block(m.group(1), tag.strip(), arg.strip(), m.group(3), text.count("\n", 0, m.start()) + 1))
    return out


# -- checks that need no torch ---------------------------------------------------------------------------
def test_every_block_says_how_it_is_tested():
    found = blocks()
    assert len(found) >= 10
    for b in found:
        assert (b.lang, b.tag) in KINDS, f"{b.where()}: fence '{b.lang} {b.tag}' is not one the doc test runs"
    assert [b.tag for b in found].count("serve") == 1


def test_install_lines_name_real_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for b in blocks():
        if b.tag != "install":
            continue
        for line in b.code.strip().splitlines():
            assert line.startswith("pip install "), f"{b.where()}: {line!r}"
            for group in re.findall(r"\.\[([\w,]+)\]", line):
                assert set(group.split(",")) <= set(extras), f"{b.where()}: unknown extra in {line!r}"


def test_card_blocks_are_valid_cards():
    cards = [b for b in blocks() if b.tag == "file" and b.arg.endswith("model-card.json")]
    assert cards
    for b in cards:
        ModelCard.model_validate(json.loads(b.code)).binding()


# -- the walk-through, run ------------------------------------------------------------------------------
def _python_shim(folder: Path) -> dict:
    """An environment whose ``python`` is this interpreter, with the repository importable."""
    folder.mkdir()
    (folder / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (folder / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "RNN_SERVE_LOG_LEVEL": "warning"}


def _run_python(b: Block, ns: dict, port: int) -> None:
    exec(compile(b.code.replace(DOC_URL, f"127.0.0.1:{port}"), b.where(), "exec"), ns)


def _serve(b: Block, env: dict, port: int, cwd: Path) -> subprocess.Popen:
    log = open(cwd / "server.log", "wb")                                    # the server holds it
    proc = subprocess.Popen(["bash", "-c", b.code], cwd=cwd, env={**env, "RNN_SERVE_PORT": str(port)},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_ready(proc, port, timeout=60)
    except RuntimeError as exc:
        if proc.poll() is None:
            _stop(proc)
        raise AssertionError(f"{b.where()}: {exc}: {(cwd / 'server.log').read_text()[-2000:]}") from None
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)                                     # bash and the server it started
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def torch():
    """torch on one thread: on a shared two-core machine its thread pool fights the server's and
    the page's short training loop runs ten times slower."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.torch
def test_the_walk_through_runs_and_serves_what_torch_computes(torch, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env, port, ns, server = _python_shim(tmp_path / "bin"), free_port(), {"__name__": "docs_pytorch"}, None
    try:
        for b in blocks():
            if b.tag == "run" and b.lang == "python":
                _run_python(b, ns, port)
            elif b.tag == "run":
                assert server is not None, f"{b.where()}: a client command before the server starts"
                code = b.code.replace(DOC_URL, f"127.0.0.1:{port}")
                assert ":8000" not in code, f"{b.where()}: a URL the test cannot redirect"
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"{b.where()}: {done.stdout[-1000:]}{done.stderr[-1000:]}"
                assert done.stdout.strip(), f"{b.where()}: printed nothing"
            elif b.tag == "serve":
                server = _serve(b, env, port, work)
            elif b.tag == "file":
                (work / b.arg).parent.mkdir(parents=True, exist_ok=True)
                (work / b.arg).write_text(b.code)
        assert server is not None
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"]
        assert {m["name"]: m["status"] for m in models} == dict.fromkeys(["question", "shakespeare", "shakespeare-onnx"], "ready")
        _assert_served_equals_torch(torch, ns, port)
    finally:
        if server is not None:
            _stop(server)


def _assert_served_equals_torch(torch, ns: dict, port: int) -> None:
    """Both routes' next-character probabilities, and the classifier's, equal the page's torch models."""
    net, clf, vocab = ns["net"], ns["clf"], ns["vocab"]
    text = "to be, or not to be"
    with torch.no_grad():
        p = torch.softmax(net(torch.tensor([[vocab.index(c) for c in text]]))[0][0].double(), -1).numpy()
    for name in ("shakespeare", "shakespeare-onnx"):
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}/predict", json={"inputs": [text], "top_k": 3}, timeout=30)
        assert r.status_code == 200, r.text
        for step, want in zip(r.json()["outputs"][0], p, strict=True):
            got = {t["index"]: t["probability"] for t in step["top_k"]}
            np.testing.assert_allclose(list(got.values()), want[list(got)], atol=1e-5, rtol=0)
            np.testing.assert_allclose(sorted(got.values(), reverse=True), np.sort(want)[::-1][:3], atol=1e-5, rtol=0)
    sentences = ["who is there?", "all is well."]
    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/question/classify", json={"inputs": sentences}, timeout=30)
    assert r.status_code == 200, r.text
    for s, res in zip(sentences, r.json()["results"], strict=True):
        with torch.no_grad():
            want = torch.softmax(clf(torch.tensor([[vocab.index(c) for c in s]]))[0].double(), -1).numpy()
        np.testing.assert_allclose([res["probabilities"][k] for k in ("statement", "question")], want, atol=1e-5, rtol=0)
    assert [res["label"] for res in r.json()["results"]] == ["question", "statement"]     # it learnt the task


@pytest.mark.torch
def test_the_new_exporter_variant(torch, tmp_path, monkeypatch):
    """The ``dynamo=True`` block, where onnxscript is installed: its graph serves with the page's card."""
    pytest.importorskip("onnxscript")
    from model_core.onnx.sequence_model import OnnxSequenceModel

    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "docs_pytorch"}
    for b in blocks():
        if b.lang == "python" and b.tag in ("run", "onnxscript"):
            _run_python(b, ns, 0)
        if b.tag == "onnxscript":
            break
    card = next(b for b in blocks() if b.tag == "file" and b.arg.endswith("model-card.json"))
    binding = ModelCard.model_validate(json.loads(card.code)).binding()
    served = OnnxSequenceModel.load(Path("models/shakespeare-onnx/model.onnx"), binding)
    ids = torch.tensor([[ns["vocab"].index(c) for c in "to be, or not"]])
    with torch.no_grad():
        want = ns["net"](ids)[0].numpy()
    np.testing.assert_allclose(served.forward(ids.numpy().T)[0].transpose(1, 0, 2), want, atol=1e-5, rtol=0)
