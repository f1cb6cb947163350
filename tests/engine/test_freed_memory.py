"""Freed memory kept (``model_core.keep_freed_memory``) for training: each step's forward cache and
BPTT's gradients (the kernels' path) reuse the last step's pages, where glibc's own thresholds
hand them back to the kernel and the next step faults fresh ones in."""
import subprocess
import sys

import pytest

from model_core import native
from model_core.heap import keep_freed_memory
from tests.helpers import ROOT

STEPS = """
import resource, sys
import numpy as np
import model_core
from model_core.nn import LSTM
if sys.argv[1] == "1":
    assert model_core.keep_freed_memory()
layer = LSTM(128, 512, seed=0)
rng = np.random.default_rng(0)
x, dy = rng.standard_normal((100, 32, 128), dtype=np.float32), rng.standard_normal((100, 32, 512), dtype=np.float32)
def step():
    _, _, cache = layer.forward_train(x)
    layer.backward(cache, dy)
for _ in range(2):
    step()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[2])        # the median step: a heap that grows now and then is not the point
"""


def _faults_per_step(kept: bool) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, str(int(kept))], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                              "OPENBLAS_NUM_THREADS": "1"}, timeout=300, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.timeout(300)
@pytest.mark.skipif(not native.AVAILABLE, reason="the kernels' caches (the NumPy cells allocate otherwise)")
def test_training_steps_reuse_their_pages_when_freed_memory_is_kept():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: its own policy stands")
    default, kept = _faults_per_step(False), _faults_per_step(True)
    assert default > 1000                 # ~45 MB of caches and gradients a step, partly on fresh pages
    assert kept < default / 10, (kept, default)
