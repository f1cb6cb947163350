"""oneDNN as a benchmark peer (scripts/onednn_probe.py): its LSTM and GRU primitives compute our
layers' outputs on the same weights, and its sgemm the product. Skipped where oneDNN 2.x's C library
is not installed (.ci/run installs Debian's libdnnl2)."""
import numpy as np
import pytest

from model_core.nn import GRU, LSTM
from scripts import bench_peers, onednn_probe

LIB = onednn_probe.load()
pytestmark = pytest.mark.skipif(LIB is None, reason=onednn_probe.version())


@pytest.mark.parametrize("cls,cell", [(LSTM, "lstm"), (GRU, "gru")])
@pytest.mark.parametrize("shape", [(3, 7, 5, 9), (1, 12, 8, 32), (4, 1, 3, 16)])
def test_primitive_computes_our_layer(cls, cell, shape):
    """Gate order, bias folding (the GRU's b_hn apart) and layouts: a wrong one moves outputs by O(0.1)."""
    B, T, I, H = shape
    layer = cls(I, H, seed=B * 100 + H)
    sd = layer.state_dict()
    for seed, name in enumerate(("bias_ih_l0", "bias_hh_l0")):   # biases large enough that a misplaced one shows
        sd[name] = np.random.default_rng(seed).standard_normal(sd[name].shape).astype(np.float32)
    layer.load_state_dict(sd)
    x = np.random.default_rng(1).standard_normal((T, B, I), dtype=np.float32)
    primitive = onednn_probe.Recurrent(LIB, cell, sd, T, B)
    want = layer.forward(x)[0]
    np.testing.assert_allclose(primitive.run(x), want, atol=2e-6)
    x2 = x[::-1].copy()                                           # the input is read at every call, not kept
    np.testing.assert_allclose(primitive.run(x2), layer.forward(x2)[0], atol=2e-6)


def test_primitive_rejects_an_input_it_was_not_built_for():
    primitive = onednn_probe.Recurrent(LIB, "lstm", LSTM(4, 8, seed=0).state_dict(), 5, 2)
    with pytest.raises(ValueError, match=r"\(5, 2, 4\)"):
        primitive.run(np.zeros((5, 3, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        primitive.run(np.zeros((5, 2, 4), np.float64))
    with pytest.raises(ValueError, match="runs lstm and gru"):
        onednn_probe.Recurrent(LIB, "rnn", {}, 5, 2)


def test_sgemm_job_computes_the_product():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((7, 33), dtype=np.float32)
    wt = rng.standard_normal((33, 4 * 33), dtype=np.float32)
    out = np.empty((7, 4 * 33), np.float32)
    (job,) = onednn_probe.sgemm_jobs(LIB, h, wt, out).values()
    job()
    np.testing.assert_allclose(out, h.astype(np.float64) @ wt.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_benchmarks_name_its_version():
    version = onednn_probe.version()
    assert version.startswith("2.")
    assert f"onednn {version}" in bench_peers.machine_line(bench_peers.machine_info(1))
