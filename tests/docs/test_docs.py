"""Every code block in README.md and docs/*.md runs, so none can rot.

A document's ``python`` blocks run in order in one interpreter (one namespace, like a notebook);
each ``bash`` block runs in ``bash -euo pipefail``; each ``json`` block must parse, and a model card
must validate. Blocks run in a scratch folder that sees the repository's models/ and scripts/, with
``localhost:8000`` pointed at a real server started for the test and ``curl`` failing on HTTP errors.

Commands that other checks own are not run here, each for the reason in ``COVERED_ELSEWHERE``.
Training commands run with their epochs and batches capped (``CAPS``): the command line, its
arguments and its outputs are what a document promises; the full runs' results are in the tables.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, start_server, stop_server

# Documents with a runner of their own, which knows the order their blocks build on each other.
OWN_RUNNER = {"docs/pytorch.md": "tests/docs/test_docs_pytorch.py"}
DOCS = [d for d in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if d.relative_to(ROOT).as_posix() not in OWN_RUNNER]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)

# A command line holding one of these is run by another check, named here.
COVERED_ELSEWHERE = {
    "make serve": "the quick start: CI and the fresh-clone check run it",
    "make test": "the quick start: .ci/run runs it",
    "docker": "the deployment check (deploy/check.sh) builds and runs the images and compose stack",
    "kubectl": "the manifests are validated against the Kubernetes schemas in tests/deploy/test_k8s_manifests.py",
    "scripts.bench_": "benchmarks take minutes: the smoke tests (tests/bench/test_bench_smoke.py, "
                      "test_bench_protocols_smoke.py) run them on tiny grids",
    "scripts.plot_performance": "it plots the benchmarks' sweeps, which take minutes (not run by the suite)",
}
# (pattern, replacement): long training and benchmark runs, shortened; the interface stays the same.
CAPS = [(re.compile(r"--epochs \d+"), "--epochs 1"),
        (re.compile(r"--max-batches-per-epoch \d+"), "--max-batches-per-epoch 2"),
        (re.compile(r"(scripts\.train .*)$", re.M), r"\1 --max-batches-per-epoch 2 --max-val-batches 2 --no-progress"),
        (re.compile(r"--repeat \d+"), "--repeat 1")]


def blocks(lang: str) -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((doc.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, m.group(2)))
    return out


def _id(item) -> str:
    return f"{item[0]}:{item[1]}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A working folder like a fresh checkout's root, without writing into the repository."""
    d = tmp_path_factory.mktemp("docs")
    for name in ("models", "scripts", "data", "model_core", "service"):
        (d / name).symlink_to(ROOT / name)
    return d


@pytest.fixture(scope="module")
def docs_server():
    """The bundled models over HTTP and gRPC; the documents' localhost:8000 and :8001 (or 127.0.0.1:...) point here."""
    http, grpc = free_port(), free_port()
    proc = start_server(http, {"RNN_SERVE_GRPC_PORT": str(grpc)})
    yield {f"{host}:{documented}": f"127.0.0.1:{real}" for host in ("localhost", "127.0.0.1")
           for documented, real in ((8000, http), (8001, grpc))}
    stop_server(proc)


def _env() -> dict:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "MPLBACKEND": "Agg"}


def _localise(code: str, server: dict) -> str:
    for documented, real in server.items():
        code = code.replace(documented, real)
    code = code.replace(".venv/bin/python", "python")
    for pattern, repl in CAPS:
        code = pattern.sub(repl, code)
    return code


def test_every_document_has_runnable_examples():
    """Indented code would escape this check: every example is a fenced block with a language."""
    for doc in DOCS:
        text = doc.read_text()
        unlabelled = [text[: m.start()].count("\n") + 1 for m in FENCE.finditer(text) if not m.group(1)]
        indented = [i + 1 for i, line in enumerate(text.splitlines())
                    if line.startswith("    ") and i > 0 and not text.splitlines()[i - 1].strip()
                    and not text.splitlines()[i - 1].startswith(" ")]
        in_fences = {n for m in FENCE.finditer(text)
                     for n in range(text[: m.start()].count("\n") + 1, text[: m.end()].count("\n") + 2)}
        indented = [n for n in indented if n not in in_fences]
        assert not indented, f"{doc.name}: indented code at lines {indented}; fence it with a language"
        for line in unlabelled:                      # a plain fence is allowed only for text such as a tree
            body = text.splitlines()[line:line + 3]
            assert not any(re.match(r"\s*(\$ |python|curl|make|docker)", b) for b in body), \
                f"{doc.name}:{line}: a command in an unlabelled fence"


@pytest.mark.parametrize("item", blocks("json"), ids=_id)
def test_json_blocks_parse(item):
    doc, line, code = item
    data = json.loads(code)
    if isinstance(data, dict) and {"task", "encoding", "output"} <= set(data):      # a model card
        from service.model_card import ModelCard
        ModelCard.model_validate(data)


@pytest.mark.parametrize("doc", sorted({b[0] for b in blocks("python")}))
def test_python_blocks_run(doc, docs_server, scratch):
    code = "\n".join(c for d, _, c in blocks("python") if d == doc)
    if re.search(r"^\s*import torch\b", code, re.M):
        pytest.importorskip("torch")
    if re.search(r"^\s*import onnxruntime\b|onnxruntime as ort", code, re.M):
        pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, "-c", _localise(code, docs_server)], cwd=scratch, env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"{doc}:\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("item", blocks("bash"), ids=_id)
def test_bash_blocks_run(item, docs_server, scratch):
    doc, line, code = item
    commands = [c for c in code.splitlines() if c.strip() and not c.lstrip().startswith("#")]
    owned = {k: why for k, why in COVERED_ELSEWHERE.items() if any(k in c for c in commands)}
    if owned:
        assert all(any(k in c for k in owned) for c in commands), \
            f"{doc}:{line} mixes commands run elsewhere ({sorted(owned)}) with others; split the block"
        pytest.skip("; ".join(owned.values()))
    script = "curl() { command curl --fail-with-body \"$@\"; }\n" + _localise(code, docs_server)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=scratch, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{doc}:{line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
