"""``model_core.from_torch`` against torch: the converted model computes what the module computes.

Every configuration (cells, layers, bidirectional, batch_first, no bias, relu, the three input
encodings) runs the same ids through torch and through the converted model, in one go and in two
chunks with the returned state fed back, to 1e-5. The rest checks that what cannot be mapped is
refused with a message that names it, and that torch stays a conversion-time dependency.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import model_core
from model_core import TorchImportError, from_torch

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-5, atol=1e-5)
VOCAB = "\n abcdefgh"
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Net(nn.Module):
    """Embedding? -> LSTM|GRU|RNN -> Linear, with forward the way from_torch reads it."""

    def __init__(self, cell="lstm", encoding="embedding", task="lm", out=None, hidden=6, layers=1,
                 bidirectional=False, batch_first=False, bias=True, **rnn_kwargs):
        super().__init__()
        self.encoding, self.task, self.batch_first = encoding, task, batch_first
        size = len(VOCAB) if encoding != "features" else 3
        self.embed = nn.Embedding(size, 5) if encoding == "embedding" else None
        self.rnn = CELLS[cell](5 if self.embed else size, hidden, num_layers=layers, bias=bias,
                               bidirectional=bidirectional, batch_first=batch_first, **rnn_kwargs)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), out or size)

    def forward(self, x, state=None):
        """x: ids (T, B) / (B, T), or features with a last axis; returns (logits, state)."""
        if self.encoding == "embedding":
            x = self.embed(x)
        elif self.encoding == "onehot":
            x = nn.functional.one_hot(x, len(VOCAB)).float()
        y, state = self.rnn(x, state)
        if self.task != "classify":
            return self.head(y), state
        h = state[0] if isinstance(state, tuple) else state
        return self.head(torch.cat([h[-2], h[-1]], -1) if self.rnn.bidirectional else h[-1]), state


def inputs(net, T=7, B=3, seed=0):
    """The same inputs in torch's layout and in ours (time-major)."""
    rng = np.random.default_rng(seed)
    ours = rng.standard_normal((T, B, 3)).astype(np.float32) if net.encoding == "features" \
        else rng.integers(0, len(VOCAB), (T, B))
    theirs = torch.from_numpy(ours.swapaxes(0, 1).copy() if net.batch_first else ours)
    return ours, theirs


def time_major(net, logits):
    out = logits.detach().numpy()
    return out.swapaxes(0, 1) if net.batch_first and net.task != "classify" else out


def state_numpy(state):
    return tuple(s.detach().numpy() for s in state) if isinstance(state, tuple) else (state.detach().numpy(),)


def assert_state(ours, theirs):
    ours = ours if isinstance(ours, tuple) else (ours,)
    for a, b in zip(ours, state_numpy(theirs), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


CASES = {
    "lstm-lm-embedding-2layers-batch_first": dict(cell="lstm", layers=2, batch_first=True),
    "gru-lm-embedding-nobias-3layers": dict(cell="gru", layers=3, bias=False),
    "rnn-relu-seq2seq-onehot-nobias": dict(cell="rnn", encoding="onehot", task="seq2seq", out=4, bias=False,
                                           nonlinearity="relu"),
    "rnn-tanh-seq2seq-features-batch_first": dict(cell="rnn", encoding="features", task="seq2seq", out=2,
                                                   batch_first=True),
    "gru-classify-embedding-2layers": dict(cell="gru", task="classify", out=3, layers=2),
    "lstm-classify-features-batch_first": dict(cell="lstm", encoding="features", task="classify", out=2,
                                                batch_first=True),
    "lstm-classify-bidirectional-2layers": dict(cell="lstm", task="classify", out=3, layers=2, bidirectional=True),
    "rnn-relu-classify-bidirectional-batch_first": dict(cell="rnn", task="classify", out=2, bidirectional=True,
                                                         batch_first=True, nonlinearity="relu"),
    "gru-lm-dropout-between-layers": dict(cell="gru", layers=2, dropout=0.3),
}


def convert(net, **kwargs):
    vocab = VOCAB if net.encoding != "features" else None
    labels = [f"c{i}" for i in range(net.head.out_features)] if net.task == "classify" else None
    return from_torch(net, task=net.task, vocab=vocab, labels=labels, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_chunked_state_match_torch(case):
    torch.manual_seed(sum(map(ord, case)))
    net = Net(**CASES[case]).eval()
    model = convert(net)
    c = model.config
    assert (c.cell, c.num_layers, c.bidirectional, c.bias) == (
        CASES[case].get("cell"), net.rnn.num_layers, net.rnn.bidirectional, net.rnn.bias)
    assert c.input_encoding == net.encoding and c.metadata["torch_batch_first"] == net.batch_first
    ours_x, torch_x = inputs(net)
    with torch.no_grad():
        want, want_state = net(torch_x)
    got, got_state = model.forward(ours_x)
    np.testing.assert_allclose(got, time_major(net, want), **TOL)
    assert_state(got_state, want_state)
    if net.rnn.bidirectional:
        return                                                  # needs whole sequences: no chunks
    # two chunks, the state carried over, equal the whole sequence
    first, state = model.forward(ours_x[:3])
    second, state = model.forward(ours_x[3:], state)
    if c.task == "classify":
        np.testing.assert_allclose(second, time_major(net, want), **TOL)
    else:
        np.testing.assert_allclose(np.concatenate([first, second]), time_major(net, want), **TOL)
    assert_state(state, want_state)
    # and a state from torch carries over: torch's (L*D, B, H) is ours too, as a tuple of its parts
    with torch.no_grad():
        half = net(torch_x[:, :3] if net.batch_first else torch_x[:3])[1]
    torch_state = tuple(s.numpy() for s in half) if isinstance(half, tuple) else (half.numpy(),)
    np.testing.assert_allclose(model.forward(ours_x[3:], torch_state)[0], second, **TOL)


def test_float64_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = Net(cell="lstm", layers=2, batch_first=True).double().eval()
    model = convert(net)
    assert model.dtype == np.float64
    ours_x, torch_x = inputs(net)
    with torch.no_grad():
        want = time_major(net, net(torch_x)[0])
    np.testing.assert_allclose(model.forward(ours_x)[0], want, rtol=1e-12, atol=1e-12)
    path = model_core.save(model, tmp_path / "charlm" / "model.safetensors")
    again = model_core.load(path)
    assert again.config == model.config
    np.testing.assert_array_equal(again.forward(ours_x)[0], model.forward(ours_x)[0])
    with pytest.raises(model_core.CheckpointError, match="is a folder; pass the checkpoint file"):
        model_core.load(tmp_path / "charlm")


def test_head_without_bias_and_explicit_modules():
    torch.manual_seed(1)

    class TwoHeads(nn.Module):                                  # a training-only auxiliary head
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4)
            self.out = nn.Linear(4, 2, bias=False)
            self.aux = nn.Linear(4, 5)

    net = TwoHeads().eval()
    with pytest.raises(TorchImportError, match=r"2 candidates for the head \(out \(Linear\), aux \(Linear\)\).*head="):
        from_torch(net, task="seq2seq")
    model = from_torch(net, task="seq2seq", head=net.out)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want = net.out(net.rnn(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(model.forward(x)[0], want, **TOL)


@pytest.mark.parametrize("build, match", [
    (lambda: nn.LSTM(3, 4, proj_size=2), "proj_size=2"),
    (lambda: nn.Sequential(nn.LSTM(3, 4)), r"no nn.Linear found for the head"),
    (lambda: nn.ModuleDict({"a": nn.GRU(3, 4), "b": nn.GRU(3, 4), "h": nn.Linear(4, 2)}), r"2 candidates for the rnn.*rnn="),
    (lambda: nn.ModuleList([nn.LSTM(3, 4), nn.Linear(4, 8), nn.Linear(8, 2)]), r"2 candidates for the head"),
    (lambda: nn.ModuleDict({"rnn": nn.LSTM(3, 4), "head": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))}),
     r"head.1 \(ReLU\) is a layer from_torch cannot map"),
    (lambda: nn.ModuleList([nn.LSTMCell(3, 4), nn.Linear(4, 2)]), r"0 \(LSTMCell\) holds parameters"),
    (lambda: nn.ModuleList([nn.LSTM(3, 4), nn.Tanh(), nn.Linear(4, 2)]), r"1 \(Tanh\) is a layer from_torch cannot map"),
    (lambda: nn.ModuleList([nn.LSTM(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)]), r"1 \(LayerNorm\) holds parameters"),
    (lambda: nn.ModuleList([nn.Embedding(9, 5), nn.LSTM(3, 4), nn.Linear(4, 2)]),
     "embedding_dim=5 but the LSTM has input_size=3"),
    (lambda: nn.ModuleList([nn.Embedding(9, 3, max_norm=1.0), nn.LSTM(3, 4), nn.Linear(4, 2)]), "max_norm"),
    (lambda: nn.ModuleList([nn.LSTM(3, 4), nn.Linear(5, 2)]), "in_features=5, but the LSTM gives 4"),
    (lambda: nn.ModuleList([nn.LSTM(3, 4, bidirectional=True), nn.Linear(8, 2)]), "only task 'classify'"),
])
def test_unsupported_modules_are_named(build, match):
    with pytest.raises(TorchImportError, match=match):
        from_torch(build(), task="seq2seq")


def test_config_errors_name_the_field():
    net = nn.ModuleList([nn.Embedding(9, 3), nn.LSTM(3, 4), nn.Linear(4, 9)])
    with pytest.raises(TorchImportError, match="vocab has 3 tokens but input_size is 9"):
        from_torch(net, task="lm", vocab="abc")
    with pytest.raises(TorchImportError, match="input_encoding must be 'embedding'"):
        from_torch(net, task="lm", input_encoding="onehot")
    with pytest.raises(TorchImportError, match="expects a torch.nn.Module"):
        from_torch({"rnn.weight_ih_l0": 1}, task="lm")


def test_torch_is_not_imported_by_model_core():
    code = "import sys, model_core; model_core.from_torch; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
