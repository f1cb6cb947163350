"""SequenceModel: gradients through every task, streaming equivalence, batching equivalence, sampling."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.gradcheck import numerical_grad

from model_core import ModelConfig, SequenceModel
from model_core.nn import losses
from model_core.sampling import complete, generate, sample_next
from model_core.state import slice_state, stack_states

VOCAB = tuple("abcdef")


def normwise_error(analytic, numeric) -> float:
    """max |a - n| / max |n|: robust where single gradient entries are tiny."""
    analytic = np.asarray(analytic)
    return float(np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-12))


def make(task="lm", cell="lstm", encoding="embedding", bidirectional=False, layers=1, dtype="float64", seed=0):
    kw = dict(cell=cell, task=task, hidden_size=5, num_layers=layers, bidirectional=bidirectional)
    if encoding == "features":
        kw.update(input_size=3, input_encoding="features")
    else:
        kw.update(input_size=len(VOCAB), input_encoding=encoding, vocab=VOCAB,
                  embedding_dim=4 if encoding == "embedding" else None)
    kw["output_size"] = len(VOCAB) if task == "lm" else 3
    return SequenceModel(ModelConfig(**kw), dtype=dtype, seed=seed)


def inputs_for(model, T, B, rng):
    c = model.config
    if c.uses_tokens:
        return rng.integers(0, c.input_size, size=(T, B))
    return rng.standard_normal((T, B, c.input_size))


CASES = [
    ("classify", "lstm", "features", True, 2),
    ("classify", "gru", "onehot", False, 1),
    ("seq2seq", "rnn", "features", False, 2),
    ("lm", "lstm", "embedding", False, 1),
    ("lm", "gru", "embedding", False, 2),
]


@pytest.mark.parametrize("task,cell,encoding,bi,layers", CASES)
def test_model_gradients_match_finite_differences(task, cell, encoding, bi, layers):
    rng = np.random.default_rng(1)
    model = make(task, cell, encoding, bi, layers)
    T, B = 4, 3
    x = inputs_for(model, T, B, rng)
    lengths = np.array([4, 2, 3])
    state0 = model.init_state(B)
    state0 = (tuple(rng.standard_normal(p.shape) for p in state0) if isinstance(state0, tuple)
              else rng.standard_normal(state0.shape))
    targets = rng.integers(0, model.config.output_size, size=(B,) if task == "classify" else (T, B))
    mask = None if task == "classify" else (np.arange(T)[:, None] < lengths[None]).astype(float)

    def loss():
        logits, _ = model.forward(x, state0, lengths)
        return losses.cross_entropy(logits, targets, mask)[0]

    logits, _, cache = model.forward_train(x, state0, lengths)
    _, dlogits = losses.cross_entropy(logits, targets, mask)
    grads, dstate0 = model.backward(cache, dlogits)
    for name, param in model.parameters().items():
        assert normwise_error(grads[name], numerical_grad(loss, param)) < 1e-6, name
    for got, s in zip(dstate0 if isinstance(dstate0, tuple) else (dstate0,), state0 if isinstance(state0, tuple) else (state0,)):
        assert normwise_error(got, numerical_grad(loss, s)) < 1e-6


@pytest.mark.parametrize("task,cell,encoding", [("lm", "lstm", "embedding"), ("classify", "gru", "features"),
                                                ("seq2seq", "rnn", "onehot")])
def test_step_by_step_equals_whole_sequence(task, cell, encoding):
    rng = np.random.default_rng(2)
    model = make(task, cell, encoding)
    x = inputs_for(model, 6, 2, rng)
    whole, final = model.forward(x)
    state = model.init_state(2)
    for t in range(6):
        out, state = model.step(x[t], state)
        expected = whole if task == "classify" and t == 5 else (None if task == "classify" else whole[t])
        if expected is not None:
            np.testing.assert_allclose(out, expected, atol=1e-12)
    for a, b in zip(state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("task", ["classify", "seq2seq", "lm"])
def test_forward_steps_gives_the_head_at_every_step(task):
    rng = np.random.default_rng(4)
    model = make(task, "gru", "embedding" if task == "lm" else "features")
    x = inputs_for(model, 5, 3, rng)
    per_step, state = model.forward_steps(x)
    assert per_step.shape[:2] == (5, 3)
    whole, final = model.forward(x)
    np.testing.assert_allclose(per_step[-1] if task == "classify" else per_step, whole, atol=1e-12)
    np.testing.assert_allclose(state, final, atol=1e-12)
    for t in range(1, 5):                       # a classifier's running logits: as if the sequence ended at t
        if task == "classify":
            np.testing.assert_allclose(per_step[t - 1], model.forward(x[:t])[0], atol=1e-12)


def test_ragged_batch_equals_one_by_one():
    rng = np.random.default_rng(3)
    model = make("classify", "lstm", "features", bidirectional=True, layers=2, dtype="float32")
    lengths = np.array([5, 1, 3, 4])
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    batched, _ = model.forward(x, lengths=lengths)
    for b, L in enumerate(lengths):
        alone, _ = model.forward(x[:L, b:b + 1])
        np.testing.assert_allclose(batched[b], alone[0], atol=1e-5)


def test_sessions_stacked_into_one_batch_equal_separate_steps():
    rng = np.random.default_rng(4)
    model = make("lm", "lstm", "embedding")
    states = []
    for _ in range(3):  # three sessions with different histories
        _, s = model.forward(rng.integers(0, 6, size=(int(rng.integers(1, 5)), 1)))
        states.append(s)
    ids = np.array([1, 4, 2])
    out, stacked = model.step(ids, stack_states(states))
    for i, s in enumerate(states):
        alone, s1 = model.step(ids[i:i + 1], s)
        np.testing.assert_allclose(out[i], alone[0], atol=1e-12)
        for a, b in zip(slice_state(stacked, i), s1):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_training_lowers_loss():
    from model_core.optim import Adam, clip_grad_norm_
    model = make("lm", "gru", "embedding", dtype="float32")
    text = np.array([0, 1, 2, 3, 4, 5] * 20)
    x, y = text[:-1].reshape(-1, 1), text[1:].reshape(-1, 1)
    opt = Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        logits, _, cache = model.forward_train(x)
        loss, d = losses.cross_entropy(logits, y)
        first = loss if first is None else first
        grads, _ = model.backward(cache, d)
        clip_grad_norm_(grads, 5.0)
        opt.step(grads)
    assert loss < 0.2 * first
    out = generate(model, [0], max_length=5, greedy=True)
    assert out == [[1, 2, 3, 4, 5]]


def test_sampling_options():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.5]])
    assert sample_next(logits, rng, greedy=True).tolist() == [1, 0]
    assert sample_next(logits, rng, temperature=0).tolist() == [1, 0]
    for _ in range(20):
        assert sample_next(logits, rng, top_k=1).tolist() == [1, 0]
        assert set(sample_next(logits, rng, top_k=2).tolist()) <= {0, 1, 2}
    draws = np.array([sample_next(logits[:1], rng)[0] for _ in range(4000)])
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, p, atol=0.03)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, rng, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, rng, top_k=0)


def test_complete_leaves_state_untouched_and_stops():
    model = make("lm", "lstm", "embedding")
    logits, state = model.forward(np.array([[0], [1]]))
    before = [p.copy() for p in state]
    outs = complete(model, state, logits[-1, 0], n=4, max_length=10, stop_ids=range(6), rng=np.random.default_rng(0))
    assert len(outs) == 4 and all(len(o) == 1 for o in outs)      # every token is a stop token
    for a, b in zip(before, state):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="language model"):
        complete(make("classify", "lstm", "features"), state, logits[-1, 0])


def test_bad_inputs_give_clear_errors():
    model = make("lm", "lstm", "embedding")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 6\)"):
        model.forward(np.array([[7]]))
    with pytest.raises(ValueError, match="integer array"):
        model.forward(np.array([[0.5]]))
    with pytest.raises(ValueError, match=r"\(T, B, 3\)"):
        make("seq2seq", "rnn", "features").forward(np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="bidirectional"):
        make("classify", "lstm", "features", bidirectional=True).step(np.zeros((1, 3)), None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cell="transformer"), "cell must be"),
    (dict(task="lm", input_encoding="features"), "token-id inputs"),
    (dict(input_encoding="embedding"), "embedding_dim"),
    (dict(labels=("a",)), "labels for output_size"),
    (dict(task="seq2seq", bidirectional=True), "bidirectional"),
    (dict(hidden_size=0), "hidden_size"),
])
def test_config_validation(kwargs, match):
    base = dict(cell="lstm", task="classify", input_size=3, hidden_size=4, output_size=2)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **kwargs})


def test_config_json_round_trip_and_errors():
    c = make("lm").config
    assert ModelConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_json('{"cell": "lstm", "bogus": 1}')
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")
