"""Checkpoint round-trips and failure modes; serialised session state round-trips and failure modes."""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import model_core
from model_core import CheckpointError, DeviceError, ModelConfig, SequenceModel
from model_core.backend import gpu_available
from model_core.state import StateFormatError, slice_state, stack_states, state_from_bytes, state_to_bytes

CONFIG = ModelConfig(cell="lstm", task="lm", input_size=5, hidden_size=6, output_size=5, num_layers=2,
                     input_encoding="embedding", embedding_dim=3, vocab=tuple("abcde"), metadata={"note": "x"})


@pytest.fixture
def saved(tmp_path):
    model = SequenceModel(CONFIG, seed=0)
    path = model_core.save(model, tmp_path / "m.safetensors", extra={"epoch": 3},
                           extra_tensors={"optim.step": np.array([3.0])})
    return model, path


@pytest.mark.parametrize("cell,encoding,task", [("gru", "onehot", "classify"), ("rnn", "features", "seq2seq"),
                                                ("lstm", "embedding", "lm")])
def test_round_trip_gives_identical_outputs(tmp_path, cell, encoding, task):
    kw = dict(input_size=4, input_encoding=encoding, output_size=4 if task == "lm" else 2)
    if encoding != "features":
        kw["vocab"] = tuple("wxyz")
    if encoding == "embedding":
        kw["embedding_dim"] = 3
    config = ModelConfig(cell=cell, task=task, hidden_size=5, labels=("no", "yes") if task == "classify" else None, **kw)
    model = SequenceModel(config, seed=1)
    loaded = model_core.load(model_core.save(model, tmp_path / "a.safetensors"))
    assert loaded.config == config
    x = np.random.default_rng(0).integers(0, 4, (3, 2)) if encoding != "features" else np.ones((3, 2, 4))
    np.testing.assert_array_equal(model.forward(x)[0], loaded.forward(x)[0])


def test_extra_data_survives(saved):
    _, path = saved
    config, params, extra, tensors = model_core.checkpoint.read(path)
    assert extra == {"epoch": 3} and tensors["optim.step"].tolist() == [3.0]
    assert config.metadata == {"note": "x"} and "rnn.weight_hh_l1" in params


def test_truncated_file(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        model_core.load(bad)


def test_the_package_docstring_example_loads_and_saves(tmp_path, monkeypatch):
    """``model_core``'s docstring: load takes the checkpoint file (a folder is refused, naming the file)."""
    monkeypatch.chdir(Path(model_core.__file__).resolve().parents[1])
    path = re.search(r'model_core\.load\("([^"]+)"', model_core.__doc__).group(1)
    model = model_core.load(path, device="cpu")
    again = model_core.load(model_core.save(model, tmp_path / "charlm" / "model.safetensors"))
    assert again.config == model.config
    with pytest.raises(CheckpointError, match=r"is a folder; pass the checkpoint file in it \(e.g. .*model.safetensors\)"):
        model_core.load(Path(path).parent)


def test_garbage_and_missing_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        model_core.load(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        model_core.load(tmp_path / "absent.safetensors")


def _rewrite(path, out, tensors=None, **meta_changes):
    config, params, extra, _ = model_core.checkpoint.read(path)
    meta = {"format": "rnn-serve-checkpoint", "format_version": "1", "config": config.to_json(), "extra": "{}"}
    meta.update(meta_changes)
    save_file(tensors if tensors is not None else params, str(out), metadata=meta)
    return out


def test_wrong_shape(saved, tmp_path):
    _, path = saved
    params = model_core.checkpoint.read(path)[1]
    params["rnn.weight_hh_l0"] = np.zeros((24, 7), dtype=np.float32)
    with pytest.raises(CheckpointError, match=r"weight_hh_l0.*shape \(24, 7\), expected \(24, 6\)"):
        model_core.load(_rewrite(path, tmp_path / "s.safetensors", params))


def test_missing_tensor(saved, tmp_path):
    _, path = saved
    params = model_core.checkpoint.read(path)[1]
    del params["head.bias"]
    with pytest.raises(CheckpointError, match="declares 650 parameters but the file holds 645"):
        model_core.load(_rewrite(path, tmp_path / "m2.safetensors", params))


def test_unknown_version_and_foreign_format(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="unsupported checkpoint version '99'"):
        model_core.load(_rewrite(path, tmp_path / "v.safetensors", format_version="99"))
    with pytest.raises(CheckpointError, match="not an rnn-serve-checkpoint"):
        model_core.load(_rewrite(path, tmp_path / "f.safetensors", format="something-else"))
    with pytest.raises(CheckpointError, match="unknown fields"):
        model_core.load(_rewrite(path, tmp_path / "c.safetensors", config=json.dumps({"cell": "lstm", "x": 1})))


def test_nan_weights_rejected(saved, tmp_path):
    _, path = saved
    params = model_core.checkpoint.read(path)[1]
    params["head.weight"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        model_core.load(_rewrite(path, tmp_path / "n.safetensors", params))


@pytest.mark.skipif(gpu_available(), reason="checks the error raised without a GPU")
def test_gpu_request_without_gpu(saved):
    _, path = saved
    with pytest.raises(DeviceError, match="no GPU is usable"):
        model_core.load(path, device="gpu")
    assert model_core.load(path, device="auto").device == "cpu"


@pytest.mark.torch
def test_torch_state_dict_names_load_unchanged():
    """A torch LSTM state_dict (converted with .numpy()) loads into the rnn part of a model."""
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(3, 6, num_layers=2)
    model = SequenceModel(ModelConfig(cell="lstm", task="seq2seq", input_size=3, hidden_size=6, num_layers=2,
                                      output_size=2), seed=0)
    model.rnn.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = t(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(model.rnn.forward(x)[0], ref, atol=1e-5)


# -- session state -------------------------------------------------------------------------
def _state(seed=0, lstm=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((2, 3, 4)).astype(dtype)
    return (h, rng.standard_normal((2, 3, 4)).astype(dtype)) if lstm else (h,)


@pytest.mark.parametrize("lstm", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_bytes_round_trip(lstm, dtype):
    s = _state(lstm=lstm, dtype=dtype)
    back = state_from_bytes(state_to_bytes(s))
    assert isinstance(back, tuple) and len(back) == len(s)
    for a, b in zip(s, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lstm", [True, False])
def test_state_bytes_keep_the_documented_wire_format(lstm):
    """The tuple form inside changed nothing on the wire: bytes written by hand to the format table
    (as older builds wrote them) parse, and the same state serialises to the same bytes."""
    s = _state(lstm=lstm)
    payload = b"".join(p.astype("<f4").tobytes() for p in s)
    blob = struct.pack("<8sHBB3II", b"RNNSTATE", 1, 1, len(s), 2, 3, 4, zlib.crc32(payload)) + payload
    assert state_to_bytes(s) == blob
    for a, b in zip(state_from_bytes(blob), s, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_bare_array_is_not_a_state():
    with pytest.raises(TypeError, match="tuple of arrays"):
        state_to_bytes(_state(lstm=False)[0])


def test_slice_and_stack_are_inverse():
    s = _state()
    pieces = [slice_state(s, i) for i in range(3)]
    assert pieces[0][0].shape == (2, 1, 4)
    for a, b in zip(stack_states(pieces), s):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mangle,match", [
    (lambda b: b[:10], "truncated"),
    (lambda b: b"NOTSTATE" + b[8:], "bad magic"),
    (lambda b: b[:8] + struct.pack("<H", 7) + b[10:], "version 7"),
    (lambda b: b[:-4], "payload is"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
    (lambda b: b[:10] + bytes([9]) + b[11:], "corrupt state header"),
])
def test_state_bytes_errors(mangle, match):
    with pytest.raises(StateFormatError, match=match):
        state_from_bytes(mangle(state_to_bytes(_state())))


def test_a_config_declaring_endless_layers_is_refused_without_counting_them(saved, tmp_path):
    """The parameter count is worked out in closed form: a config of 10^15 layers, crafted into a
    checkpoint, is refused at once, not counted layer by layer (found by tests/service/test_fuzz.py)."""
    _, path = saved
    config = json.loads(CONFIG.to_json()) | {"num_layers": 10**15}
    with pytest.raises(CheckpointError, match="over the limit"):
        model_core.load(_rewrite(path, tmp_path / "deep.safetensors", config=json.dumps(config)))


@pytest.mark.parametrize("changes", [{}, {"num_layers": 1}, {"num_layers": 3, "bias": False},
                                     {"task": "classify", "bidirectional": True, "num_layers": 3},
                                     {"input_encoding": "onehot", "embedding_dim": None, "cell": "gru"},
                                     {"cell": "rnn", "num_layers": 4}])
def test_declared_parameters_match_the_model_s(changes):
    config = ModelConfig(**(json.loads(CONFIG.to_json()) | changes))
    model = SequenceModel(config, seed=0)
    held = sum(int(np.prod(p.shape)) for p in model.parameters().values())
    assert model_core.checkpoint.declared_parameters(config) == held
