"""``enable_cpu_mem_arena`` (on by default, as in onnxruntime) keeps freed memory in the process:
a ragged node's next call reuses the pages of the last instead of faulting fresh ones in."""
import subprocess
import sys
from pathlib import Path

import pytest

from model_core import native
from model_core.heap import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]
RUN = """
import resource, sys, types
import numpy as np
from model_core.onnx import InferenceSession
from tests.engine.test_native_kernels import _node_model
options = types.SimpleNamespace(enable_cpu_mem_arena=sys.argv[1] == "1")
session = InferenceSession(_node_model("LSTM", H=256, I=64, direction="bidirectional"), options)
rng = np.random.default_rng(0)
feed = {"X": rng.standard_normal((100, 32, 64)).astype(np.float32),
        "sequence_lens": rng.integers(50, 101, 32).astype(np.int32)}     # ranked on the kernels
for _ in range(3):
    session.run(None, feed)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    session.run(None, feed)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_call(arena: bool) -> float:
    out = subprocess.run([sys.executable, "-c", RUN, str(int(arena))], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         timeout=300, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not native.AVAILABLE, reason="the ranked ragged batch is the native kernels' path")
def test_the_arena_keeps_a_ragged_nodes_pages_for_the_next_call():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: its own policy stands")
    without, with_arena = _faults_per_call(False), _faults_per_call(True)
    assert without > 500                  # a call's arrays (Y alone is 6.5 MB) on fresh pages
    assert with_arena < without / 5, (with_arena, without)
