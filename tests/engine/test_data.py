"""The data generators produce exactly the specified tasks, deterministically."""
from __future__ import annotations

import json

import numpy as np
import pytest

from model_core.data import charlm, echo, temporal_order as to
from model_core.data.charlm import CharBatches, Vocab
from model_core.data.temporal_order import CLASSES, SYMBOLS, Difficulty

# ---------------------------------------------------------------- temporal order

SPEC = {  # (length, t1, t2), inclusive, 0-based positions
    "EASY": ((7, 8), (1, 2), (4, 5)),
    "NORMAL": ((30, 40), (2, 5), (20, 27)),
    "MODERATE": ((60, 80), (10, 20), (45, 54)),
    "HARD": ((100, 110), (10, 20), (50, 60)),
    "NIGHTMARE": ((300, 500), (10, 80), (250, 290)),
}


def test_symbols_and_classes():
    assert SYMBOLS == ("X", "Y", "a", "b", "c", "d", "B", "E")
    assert CLASSES == ("Q", "R", "S", "U")
    assert [to.class_of(a, b) for a, b in ("XX", "XY", "YX", "YY")] == [0, 1, 2, 3]


def test_difficulty_parameters_and_parse():
    for name, (length, t1, t2) in SPEC.items():
        level = Difficulty[name]
        assert (level.length_range, level.t1_range, level.t2_range) == (length, t1, t2)
        assert Difficulty.parse(name.lower()) is level
        assert Difficulty.parse(f" {name.title()} ") is level
        assert Difficulty.parse(level) is level
    with pytest.raises(ValueError, match="easy, normal, moderate, hard, nightmare"):
        Difficulty.parse("impossible")


@pytest.mark.parametrize("name", list(SPEC))
def test_sequences_follow_the_spec(name):
    (lmin, lmax), (amin, amax), (bmin, bmax) = SPEC[name]
    lengths, t1s, t2s, labels = [], [], [], []
    for s, label in to.generate(3000, name, seed=123):
        relevant = [i for i, c in enumerate(s) if c in "XY"]
        assert len(relevant) == 2, s
        t1, t2 = relevant
        assert s[0] == "B" and s[-1] == "E"
        assert set(s[1:t1] + s[t1 + 1:t2] + s[t2 + 1:-1]) <= set("abcd")
        assert label == to.class_of(s[t1], s[t2])
        lengths.append(len(s))
        t1s.append(t1)
        t2s.append(t2)
        labels.append(label)
    for values, lo, hi in ((lengths, lmin, lmax), (t1s, amin, amax), (t2s, bmin, bmax)):
        assert min(values) == lo and max(values) == hi  # within range, and both ends are hit
    assert sorted(set(labels)) == [0, 1, 2, 3]


def test_generate_is_deterministic_by_seed():
    assert to.generate(50, "normal", seed=7) == to.generate(50, "normal", seed=7)
    assert to.generate(50, "normal", seed=7) != to.generate(50, "normal", seed=8)


def test_encode_batch_one_hot_and_padding():
    strings = ["BXaYE", "BbXcXcbE", "BYE"]
    x, lengths = to.encode_batch(strings)
    assert x.dtype == np.float32 and x.shape == (3, 8, 8)
    assert lengths.dtype == np.int64 and lengths.tolist() == [5, 8, 3]
    for b, s in enumerate(strings):
        for t, c in enumerate(s):
            expected = np.zeros(8, np.float32)
            expected[SYMBOLS.index(c)] = 1.0
            np.testing.assert_array_equal(x[b, t], expected)
        assert not x[b, len(s):].any()  # zero padding past the length
    assert to.decode_batch(x, lengths) == strings
    with pytest.raises(ValueError, match="outside"):
        to.encode_batch(["BzE"])


def test_dataset_epoch_shapes_and_determinism():
    ds = to.TemporalOrderDataset("moderate", seed=3)
    batches = list(ds.batches(epoch=0))
    assert len(ds) == len(batches) == 32
    assert [len(y) for _, _, y in batches] == [32] * 31 + [8]
    assert sum(len(y) for _, _, y in batches) == 1000
    for x, lengths, y in batches:
        assert x.shape == (len(y), lengths.max(), 8) and x.dtype == np.float32
        assert lengths.dtype == np.int64 and y.dtype == np.int64
        np.testing.assert_array_equal(x.sum(axis=(1, 2)), lengths)  # one hot row per real step
    again = list(to.TemporalOrderDataset("moderate", seed=3).batches(epoch=0))  # a resumed run
    for first, second in zip(batches, again):
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
    x0, l0, _ = batches[0]
    x1, l1, _ = next(ds.batches(epoch=1))
    assert to.decode_batch(x0, l0) != to.decode_batch(x1, l1)  # a new epoch brings new data


def test_validation_set_is_fixed_and_distinct_from_training():
    x, lengths, y = to.validation_set("easy", n=200, seed=0)
    assert x.shape[0] == lengths.shape[0] == y.shape[0] == 200
    for a, b in zip((x, lengths, y), to.validation_set("easy", n=200, seed=0)):
        np.testing.assert_array_equal(a, b)
    train = to.generate(200, "easy", np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0, 0))))
    assert to.decode_batch(x, lengths) != [s for s, _ in train]


# ---------------------------------------------------------------- echo

def test_echo_targets_are_delayed_input():
    bits = np.array([[1, 1, 0, 0, 1, 0, 1, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(echo.echo_targets(bits, 3)[0], [0, 0, 0, 1, 1, 0, 0, 1, 0, 1])
    streams = echo.EchoStreams(n_streams=4, length=1000, delay=5, chunk=10, seed=1)
    assert streams.inputs.shape == streams.targets.shape == (4, 1000)
    assert set(np.unique(streams.inputs)) == {0.0, 1.0}
    assert not streams.targets[:, :5].any()
    np.testing.assert_array_equal(streams.targets[:, 5:], streams.inputs[:, :-5])


@pytest.mark.parametrize("length", [1000, 1003])
def test_echo_chunks_are_contiguous_and_cover_the_stream(length):
    streams = echo.EchoStreams(n_streams=3, length=length, delay=3, chunk=10, seed=2)
    chunks = list(streams.chunks())
    assert len(chunks) == len(streams) == -(-length // 10)
    assert [first for _, _, first in chunks] == [True] + [False] * (len(chunks) - 1)
    for x, y, _ in chunks[:-1]:
        assert x.shape == y.shape == (10, 3, 1) and x.dtype == y.dtype == np.float32
    xs = np.concatenate([x for x, _, _ in chunks])[:, :, 0]  # (length, N), time-major
    ys = np.concatenate([y for _, y, _ in chunks])[:, :, 0]
    np.testing.assert_array_equal(xs.T, streams.inputs)
    np.testing.assert_array_equal(ys.T, streams.targets)


def test_echo_seeding():
    a, b = echo.EchoStreams(length=500, seed=0), echo.EchoStreams(length=500, seed=0)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, echo.EchoStreams(length=500, seed=1).inputs)
    val = echo.validation_streams(length=500, seed=0)
    assert val.inputs.shape == (32, 500) and not np.array_equal(val.inputs, a.inputs)
    np.testing.assert_array_equal(val.inputs, echo.validation_streams(length=500, seed=0).inputs)


# ---------------------------------------------------------------- char LM

def test_vocab_round_trip_and_json():
    text = "To be, or not to be:\nthat is the question."
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    restored = Vocab.from_json(vocab.to_json())
    assert restored == vocab and restored.decode(restored.encode(text)) == text
    assert json.loads(vocab.to_json())["chars"] == list(vocab.chars)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("Zounds!")
    with_unk = Vocab.from_text(text, unk="?")
    assert with_unk.decode(with_unk.encode("Zo!")) == "?o?"
    assert Vocab.from_json(with_unk.to_json()) == with_unk


def test_corpus_and_split():
    text = charlm.load_corpus()
    assert 4_000_000 < len(text) < 5_000_000
    assert "To be, or not to be" in text and "Gutenberg" not in text
    train, val = charlm.split(text, val_fraction=0.05)
    assert train + val == text and len(val) == round(0.05 * len(text))
    assert charlm.split(text) == (train, val)
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(val)) == val
    assert charlm.bits_per_char(np.log(2.0)) == pytest.approx(1.0)


def test_char_batches_are_consecutive_streams():
    ids = np.arange(10_000, dtype=np.int64)  # id == position makes continuity easy to read
    batches = CharBatches(ids, batch_size=4, seq_len=25, seed=0)
    for epoch in (0, 1, 2):
        chunks = list(batches.epoch_batches(epoch))
        assert len(chunks) == len(batches) > 0
        offset = batches.offset(epoch)
        assert 0 <= offset < 25
        for k, (x, y) in enumerate(chunks):
            assert x.shape == y.shape == (25, 4) and x.dtype == y.dtype == np.int64
            np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one character
            np.testing.assert_array_equal(x[1:], y[:-1])
            if k:
                np.testing.assert_array_equal(x[0], chunks[k - 1][0][-1] + 1)  # picks up where it stopped
        np.testing.assert_array_equal(chunks[0][0][0], offset + np.arange(4) * batches.stream_len)
    assert [batches.offset(e) for e in range(8)] == [CharBatches(ids, 4, 25, seed=0).offset(e) for e in range(8)]
    with pytest.raises(ValueError, match="too few"):
        CharBatches(np.arange(50), batch_size=4, seq_len=25)
