"""``from_torch``: a PyTorch ``Embedding? -> LSTM|GRU|RNN -> Linear`` model as a ``SequenceModel``.

torch is imported inside ``from_torch`` only: it is needed to convert, never to load or serve the
result (``model_core.save`` writes an ordinary checkpoint).

The converted model computes what this torch ``forward`` computes, whatever the module's own
``forward`` says; ``from_torch`` cannot read Python code, so a forward that does more (an
activation before the head, a second head, attention) must not be converted::

    y, state = rnn(embedding(ids), state)     # ids (T, B), or (B, T) with batch_first
    logits = head(y)                          # lm, seq2seq: every step
    logits = head(state_h[-1])                # classify: the top layer's final hidden state
    logits = head(cat(state_h[-2], state_h[-1]))   # classify, bidirectional

``SequenceModel`` is time-major: it takes ids (T, B) or features (T, B, I) and returns (T, B, C)
per-step logits. A ``batch_first`` torch model's weights are the same either way, so the
converted model equals it on transposed inputs and outputs (``model(ids.T)`` vs ``net(ids)``);
the state (L*D, B, H) has one layout in both. The service reads text, so it never sees a layout.
"""
from __future__ import annotations

import numpy as np

from model_core.config import ModelConfig
from model_core.model import SequenceModel

_HARMLESS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity")   # no-ops at inference
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


class TorchImportError(ValueError):
    """A torch module that cannot be converted; the message names the submodule and what to change."""


def from_torch(module, *, task: str, vocab=None, labels=None, output: str = "logits",
               input_encoding: str | None = None, embedding=None, rnn=None, head=None,
               metadata: dict | None = None, device: str = "cpu", dtype=None) -> SequenceModel:
    """Convert ``module`` (an ``nn.Module``) into a ``SequenceModel`` with the same weights.

    task: ``classify``, ``seq2seq`` or ``lm`` (see ``ModelConfig``). vocab: the tokens of the
    input ids (a string is a list of characters). labels: class names (classify) or output names.
    output: how seq2seq outputs are read (``logits``, ``binary``, ``regression``).
    input_encoding: ``embedding`` when there is an ``nn.Embedding``; otherwise ``onehot`` when
    ``vocab`` is given (the RNN reads one-hot vectors of token ids), else ``features``.
    embedding, rnn, head: the submodules to use, when finding them by type is ambiguous; giving
    any of them also lets the module hold other layers (a training-only decoder, say), which the
    converted model leaves out. dtype: float32 or float64 (default: the RNN's own).
    """
    try:
        import torch  # a conversion-time dependency only
    except ImportError:
        raise ImportError("from_torch needs torch installed (pip install torch); the model it returns does not") from None
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TorchImportError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    explicit = any(m is not None for m in (embedding, rnn, head))
    found = _discover(module, nn, strict=not explicit)
    rec = _pick("rnn", rnn, found["rnn"], (nn.LSTM, nn.GRU, nn.RNN), required=True)
    cell = _check_rnn(rec, nn)
    emb = _pick("embedding", embedding, found["embedding"], nn.Embedding, required=False)
    lin = _pick("head", head, found["head"], nn.Linear, required=True)
    D = 2 if rec.bidirectional else 1
    if lin.in_features != D * rec.hidden_size:
        raise TorchImportError(f"head: nn.Linear has in_features={lin.in_features}, but the {type(rec).__name__} "
                               f"gives {D * rec.hidden_size} features ({D} x hidden_size {rec.hidden_size})")
    if isinstance(vocab, str):
        vocab = list(vocab)
    if emb is not None:
        if input_encoding not in (None, "embedding"):
            raise TorchImportError("the module has an nn.Embedding, so input_encoding must be 'embedding', "
                                   f"got {input_encoding!r}")
        _check_embedding(emb, rec)
        input_encoding, input_size, embedding_dim = "embedding", emb.num_embeddings, emb.embedding_dim
    else:
        input_encoding = input_encoding or ("onehot" if vocab is not None else "features")
        if input_encoding == "embedding":
            raise TorchImportError("input_encoding 'embedding' needs an nn.Embedding, and the module has none")
        input_size, embedding_dim = rec.input_size, None

    dtype = dtype or _dtype_of(rec, torch)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TorchImportError(f"dtype must be float32 or float64, got {dtype}")
    try:
        config = ModelConfig(
            cell=cell, task=task, input_size=input_size, hidden_size=rec.hidden_size, output_size=lin.out_features,
            num_layers=rec.num_layers, input_encoding=input_encoding, embedding_dim=embedding_dim,
            nonlinearity=getattr(rec, "nonlinearity", "tanh"), bias=rec.bias, bidirectional=rec.bidirectional,
            dropout=float(rec.dropout), output=output, vocab=vocab, labels=labels,
            metadata={"source": "torch", "torch_module": type(module).__name__, "torch_batch_first": rec.batch_first,
                      **(metadata or {})})
    except ValueError as exc:
        raise TorchImportError(f"from_torch: {exc}") from None

    host = np.dtype(dtype)
    state = {}
    if emb is not None:
        state["embedding.weight"] = _numpy(emb.weight, host)
    state.update({f"rnn.{k}": _numpy(v, host) for k, v in rec.named_parameters()})
    state["head.weight"] = _numpy(lin.weight, host)
    state["head.bias"] = _numpy(lin.bias, host) if lin.bias is not None else np.zeros(lin.out_features, host)
    model = SequenceModel(config, device=device, dtype=host)
    model.load_state_dict(state)
    return model


def _discover(module, nn, strict: bool) -> dict[str, list]:
    """Submodules by role, as (dotted name, module); with ``strict``, anything else is an error."""
    found = {"embedding": [], "rnn": [], "head": []}
    roles = ((nn.Embedding, "embedding"), ((nn.LSTM, nn.GRU, nn.RNN), "rnn"), (nn.Linear, "head"))
    for name, sub in module.named_modules():
        role = next((r for t, r in roles if isinstance(sub, t)), None)
        if role is not None:
            found[role].append((name or "(the module itself)", sub))
            continue
        if not strict:
            continue
        own_params = [p for p, _ in sub.named_parameters(recurse=False)]
        is_leaf = not any(True for _ in sub.children())
        kind = type(sub).__name__
        if own_params:
            raise TorchImportError(f"{name or 'the module'} ({kind}) holds parameters {own_params} that from_torch "
                                   f"cannot map: only nn.Embedding, nn.LSTM/GRU/RNN and one nn.Linear are supported")
        if is_leaf and name and kind not in _HARMLESS and kind not in _CONTAINERS:
            raise TorchImportError(f"{name} ({kind}) is a layer from_torch cannot map (supported: nn.Embedding -> "
                                   f"nn.LSTM/GRU/RNN -> nn.Linear, with Dropout); if forward() does not use it, "
                                   f"pass embedding=, rnn= and head= explicitly")
    return found


def _pick(role: str, given, candidates: list, types, required: bool):
    if given is not None:
        if not isinstance(given, types):
            raise TorchImportError(f"{role}= must be {_names(types)}, got {type(given).__name__}")
        return given
    if len(candidates) > 1:
        names = ", ".join(f"{n} ({type(m).__name__})" for n, m in candidates)
        raise TorchImportError(f"found {len(candidates)} candidates for the {role} ({names}); from_torch maps one: "
                               f"pass {role}=module.<the one forward() uses>")
    if not candidates:
        if required:
            raise TorchImportError(f"no {_names(types)} found for the {role}; pass {role}= if it is there under another type")
        return None
    return candidates[0][1]


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return "|".join(f"nn.{t.__name__}" for t in types)


def _check_rnn(rec, nn) -> str:
    if getattr(rec, "proj_size", 0):
        raise TorchImportError(f"rnn: nn.LSTM with proj_size={rec.proj_size} (projected hidden state) is not supported")
    if isinstance(rec, nn.LSTM):
        return "lstm"
    if isinstance(rec, nn.GRU):
        return "gru"
    if rec.nonlinearity not in ("tanh", "relu"):
        raise TorchImportError(f"rnn: nonlinearity {rec.nonlinearity!r} is not supported (tanh or relu)")
    return "rnn"


def _check_embedding(emb, rec) -> None:
    if emb.max_norm is not None:
        raise TorchImportError(f"embedding: max_norm={emb.max_norm} renormalises rows at lookup time, which is not "
                               f"supported; renormalise the weight once and set max_norm=None")
    if emb.embedding_dim != rec.input_size:
        raise TorchImportError(f"embedding: embedding_dim={emb.embedding_dim} but the {type(rec).__name__} has "
                               f"input_size={rec.input_size}; they must be equal (nothing may sit between them)")


def _dtype_of(rec, torch) -> str:
    return "float64" if next(rec.parameters()).dtype == torch.float64 else "float32"


def _numpy(tensor, dtype: np.dtype) -> np.ndarray:
    return tensor.detach().cpu().double().numpy().astype(dtype)
