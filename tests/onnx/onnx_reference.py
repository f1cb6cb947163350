"""Builders shared by the ONNX tests and ``scripts/make_onnx_golden.py``: single-node recurrent
graphs from the operator spec, their random feeds, onnxruntime as the reference, golden files, and
the check that one session serves many threads at once.

A golden case is ``<name>.onnx`` next to ``<name>.npz`` holding ``input.<name>`` and
``output.<name>`` arrays (loaded with ``allow_pickle=False``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from tests.helpers import GOLDEN_ROOT

GOLDEN_OPS_DIR = GOLDEN_ROOT / "onnx_ops"
GOLDEN_TORCH_DIR = GOLDEN_ROOT / "onnx_torch"

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
               "HardSigmoid", "Elu", "Softsign", "Softplus")
ELEM_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
              np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int64): TensorProto.INT64,
              np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL,
              np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def ir_version_for(opset: int) -> int:
    """The IR version that shipped with ``opset``: onnxruntime refuses newer IR versions."""
    for max_opset, ir in ((8, 3), (9, 4), (10, 5), (11, 6), (14, 7), (18, 8), (20, 9), (22, 10)):
        if opset <= max_opset:
            return ir
    return 11


def make_model(nodes, inputs, outputs, opset: int, initializers=()) -> ModelProto:
    """inputs / outputs: (name, elem_type) pairs, declared without shapes."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir_version_for(opset), producer_name="onnx_reference")


def assert_concurrent_runs_match(session, feeds: list[dict], calls: int) -> None:
    """Each feed run ``calls`` times on its own thread, all threads started together, gives the
    arrays the same feed gives when run alone first: a session keeps no per-call state."""
    expected = [session.run(None, f) for f in feeds]
    results, barrier = [None] * len(feeds), threading.Barrier(len(feeds))

    def work(k):
        barrier.wait()
        results[k] = [session.run(None, feeds[k]) for _ in range(calls)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for runs, want in zip(results, expected):
        for got in runs:
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


# -- recurrent cases --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecurrentCase:
    """One LSTM / GRU / RNN node. ``lengths``: None (input absent), "ragged", "with_zero",
    "all_zero" or "full". ``outputs``: which of Y, Y_h, Y_c the node names."""
    op: str
    direction: str = "forward"
    layout: int = 0
    bias: bool = True
    lengths: str | None = "ragged"
    initial_state: bool = True
    peepholes: bool = False
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    activations: tuple | None = None
    alphas: tuple | None = None
    betas: tuple | None = None
    outputs: tuple = (True, True, True)
    opset: int = 14
    dtype: str = "float32"
    shape: tuple | None = None  # (T, N, I, H); drawn from the seed when None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def dims(self):
        if self.shape is not None:
            return self.shape
        rng = np.random.default_rng(1000 + self.seed)
        return tuple(int(v) for v in (rng.integers(1, 7), rng.integers(1, 5), rng.integers(1, 5), rng.integers(1, 6)))


def _input_names(case: RecurrentCase) -> list[str]:
    names = ["X", "W", "R", "B" if case.bias else "", "sequence_lens" if case.lengths else "",
             "initial_h" if case.initial_state else ""]
    if case.op == "LSTM":
        names += ["initial_c" if case.initial_state else "", "P" if case.peepholes else ""]
    while names[-1] == "":
        names.pop()
    return names


def _output_names(case: RecurrentCase) -> list[str]:
    names = [n if wanted else "" for n, wanted in zip(("Y", "Y_h", "Y_c"), case.outputs)]
    names = names[:3 if case.op == "LSTM" else 2]
    while names and names[-1] == "":
        names.pop()
    return names


def recurrent_model(case: RecurrentCase) -> ModelProto:
    _, _, _, H = case.dims()
    attrs = dict(hidden_size=H, direction=case.direction, **case.extra)
    if case.opset >= 14:
        attrs["layout"] = case.layout
    if case.clip is not None:
        attrs["clip"] = case.clip
    if case.input_forget:
        attrs["input_forget"] = 1
    if case.op == "GRU":
        attrs["linear_before_reset"] = int(case.linear_before_reset)
    for key, value in (("activations", case.activations), ("activation_alpha", case.alphas),
                       ("activation_beta", case.betas)):
        if value is not None:
            attrs[key] = list(value)
    ins, outs = _input_names(case), _output_names(case)
    node = helper.make_node(case.op, ins, outs, **attrs)
    elem = ELEM_TYPES[np.dtype(case.dtype)]
    inputs = [(n, TensorProto.INT32 if n == "sequence_lens" else elem) for n in ins if n]
    return make_model([node], inputs, [(n, elem) for n in outs if n], case.opset)


def recurrent_feed(case: RecurrentCase) -> dict[str, np.ndarray]:
    T, N, I, H = case.dims()
    D, G = case.directions, GATES[case.op]
    rng = np.random.default_rng(case.seed)
    scale = 1 / np.sqrt(H)
    arrays = {
        "X": rng.standard_normal((N, T, I) if case.layout else (T, N, I)),
        "W": rng.uniform(-scale, scale, (D, G * H, I)) * 2,
        "R": rng.uniform(-scale, scale, (D, G * H, H)) * 2,
        "B": rng.uniform(-scale, scale, (D, 2 * G * H)),
        "initial_h": rng.standard_normal((N, D, H) if case.layout else (D, N, H)) * 0.5,
        "initial_c": rng.standard_normal((N, D, H) if case.layout else (D, N, H)) * 0.5,
        "P": rng.uniform(-1, 1, (D, 3 * H)),
    }
    feed = {k: v.astype(case.dtype) for k, v in arrays.items() if k in _input_names(case)}
    if case.lengths:
        feed["sequence_lens"] = _lengths(case.lengths, T, N, rng)
    return feed


def _lengths(kind: str, T: int, N: int, rng) -> np.ndarray:
    if kind == "full":
        lengths = np.full(N, T)
    elif kind == "all_zero":
        lengths = np.zeros(N)
    else:
        lengths = rng.integers(1 if kind == "ragged" else 0, T + 1, N)
        lengths[0] = T  # the longest sequence fills the batch
        if kind == "with_zero":
            lengths[-1] = 0
    return lengths.astype(np.int32)


def ort_recurrent(ort, case: RecurrentCase, feed: dict) -> list[np.ndarray]:
    """onnxruntime's outputs. Its CPU kernels refuse layout 1, so that case runs the layout-0
    twin on transposed inputs and transposes the outputs back: the spec's definition of layout."""
    if not case.layout:
        return ort_run(ort, recurrent_model(case), feed)
    twin = replace(case, layout=0)
    swapped = {k: v.transpose(1, 0, 2) if k in ("X", "initial_h", "initial_c") else v for k, v in feed.items()}
    names = [n for n in _output_names(case) if n]
    results = ort_run(ort, recurrent_model(twin), swapped)
    return [r.transpose(2, 0, 1, 3) if n == "Y" else r.transpose(1, 0, 2) for n, r in zip(names, results)]


def ort_run(ort, model: ModelProto, feed: dict, output_names=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(output_names, feed)


def golden_recurrent_cases() -> dict[str, RecurrentCase]:
    """The committed recurrent cases: every op in every direction and layout, plus the options."""
    cases = {}
    for op in GATES:
        for direction in ("forward", "reverse", "bidirectional"):
            for layout in (0, 1):
                seed = len(cases)
                cases[f"{op.lower()}_{direction}_layout{layout}"] = RecurrentCase(
                    op, direction, layout, lengths="with_zero", peepholes=op == "LSTM" and layout == 1, seed=seed)
    cases["lstm_clip_input_forget"] = RecurrentCase("LSTM", "bidirectional", clip=0.5, input_forget=True,
                                                    peepholes=True, seed=40)
    cases["lstm_activations"] = RecurrentCase("LSTM", "bidirectional", seed=41, activations=(
        "HardSigmoid", "Elu", "Softsign", "LeakyRelu", "ScaledTanh", "Affine"), alphas=(0.3, 0.8, 0.05, 1.5, 0.7),
        betas=(0.4, 0.9, 0.1))
    cases["gru_linear_before_reset"] = RecurrentCase("GRU", "bidirectional", linear_before_reset=True, seed=42)
    cases["gru_activations"] = RecurrentCase("GRU", "reverse", seed=43, activations=("Softplus", "ThresholdedRelu"),
                                             alphas=(0.2,), clip=2.0)
    cases["rnn_relu_no_optional"] = RecurrentCase("RNN", "bidirectional", bias=False, lengths=None,
                                                  initial_state=False, activations=("Relu", "Tanh"), seed=44)
    cases["lstm_only_states_opset7"] = RecurrentCase("LSTM", "reverse", outputs=(False, True, True), opset=7,
                                                     seed=45)
    return cases


# -- golden files ---------------------------------------------------------------------------------
def save_case(directory: Path, name: str, model: ModelProto, feed: dict, expected: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.onnx").write_bytes(model.SerializeToString())
    arrays = {f"input.{k}": np.asarray(v) for k, v in feed.items()}
    arrays.update({f"output.{k}": np.asarray(v) for k, v in expected.items()})
    np.savez_compressed(directory / f"{name}.npz", **arrays)


def load_case(directory: Path, name: str):
    """(model bytes, feed, expected outputs by name)."""
    with np.load(directory / f"{name}.npz", allow_pickle=False) as data:
        feed = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        expected = {k[len("output."):]: data[k] for k in data.files if k.startswith("output.")}
    return (directory / f"{name}.onnx").read_bytes(), feed, expected


def golden_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.onnx"))


# -- torch-exported models ------------------------------------------------------------------------
VOCAB, EMBED, HIDDEN = 11, 5, 6


def torch_cases() -> dict[str, dict]:
    """Embedding -> recurrent core -> linear head, exported by torch.onnx's TorchScript exporter."""
    cases = {}
    for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        for layers, bidirectional, batch_first, opset in ((1, False, False, 17), (2, True, True, 13)):
            name = f"{cell}_l{layers}{'_bi' if bidirectional else ''}{'_bf' if batch_first else ''}_op{opset}"
            cases[name] = dict(cell=cell, layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                               opset=opset, state_input=True, seed=len(cases))
    # older opsets: attribute-form Unsqueeze / Squeeze / Slice and opset-9 glue; no state input
    cases["lstm_l2_bf_op9_nostate"] = dict(cell="lstm", layers=2, bidirectional=False, batch_first=True, opset=9,
                                           state_input=False, seed=20)
    cases["gru_l1_bi_op11_nostate"] = dict(cell="gru", layers=1, bidirectional=True, batch_first=False, opset=11,
                                           state_input=False, seed=21)
    return cases


def torch_net(cfg: dict):
    import torch  # the reference extra only

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            cell = cfg["cell"]
            cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(cell, torch.nn.RNN)
            kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
            self.lstm = cell == "lstm"
            self.embed = torch.nn.Embedding(VOCAB, EMBED)
            self.rnn = cls(EMBED, HIDDEN, num_layers=cfg["layers"], bidirectional=cfg["bidirectional"],
                           batch_first=cfg["batch_first"], **kw)
            self.head = torch.nn.Linear(HIDDEN * (2 if cfg["bidirectional"] else 1), VOCAB)

        def forward(self, tokens, *state):
            x = self.embed(tokens)
            if self.lstm:
                y, (h, c) = self.rnn(x, tuple(state) if state else None)
                return torch.log_softmax(self.head(y), dim=-1), h, c
            y, h = self.rnn(x, state[0] if state else None)
            return self.head(y), h

    torch.manual_seed(cfg["seed"])
    return Net().eval()


def torch_case(cfg: dict):
    """(model bytes, feed, expected): exported with one batch/time size, checked at another."""
    import io
    import warnings

    import torch

    net = torch_net(cfg)
    S = cfg["layers"] * (2 if cfg["bidirectional"] else 1)
    state_names = (["h0", "c0"] if cfg["cell"] == "lstm" else ["h0"]) if cfg["state_input"] else []
    output_names = ["logits", "h_n", "c_n"] if cfg["cell"] == "lstm" else ["logits", "h_n"]

    def inputs(batch, time, seed):
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, VOCAB, (batch, time) if cfg["batch_first"] else (time, batch), generator=g)
        return (tokens, *[torch.randn(S, batch, HIDDEN, generator=g) * 0.5 for _ in state_names])

    # without a state input the exporter bakes the batch size into the zero state: keep it fixed
    export_args = inputs(3 if not cfg["state_input"] else 2, 5, 0)
    batch_axis, time_axis = (0, 1) if cfg["batch_first"] else (1, 0)
    dynamic = {"tokens": {batch_axis: "batch", time_axis: "time"}, "logits": {batch_axis: "batch", time_axis: "time"}}
    dynamic.update({n: {1: "batch"} for n in state_names + output_names[1:]})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, export_args, buffer, dynamo=False, opset_version=cfg["opset"],
                          input_names=["tokens", *state_names], output_names=output_names, dynamic_axes=dynamic)
    test_args = inputs(3, 7, 1)
    with torch.no_grad():
        expected = net(*test_args)
    feed = {name: t.numpy() for name, t in zip(["tokens", *state_names], test_args)}
    return buffer.getvalue(), feed, {n: t.numpy() for n, t in zip(output_names, expected)}
