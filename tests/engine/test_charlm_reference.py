"""The torch char-LM reference (scripts/charlm_torch_reference.py) tracks our training loop step for step.

Same initial weights, same batches, the same Adam and clip: the per-step training losses and the
validation losses must agree to float32 rounding, across an epoch boundary (state reset, new offset).
"""
import importlib

import numpy as np
import pytest

pytest.importorskip("torch")

from model_core.training import TrainConfig, train



def load_reference():
    return importlib.import_module("scripts.charlm_torch_reference")


@pytest.fixture
def tiny_config(tmp_path):
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    text = " ".join(rng.choice(words, size=1500)) + "\n"
    (tmp_path / "corpus.txt").write_text(text)
    # clip=0.27: the gradient norms here are about 0.24-0.31, so some steps clip and some do not
    return TrainConfig(task="charlm", cell="lstm", hidden_size=32, embedding_dim=16, epochs=2, max_batches_per_epoch=5, lr=0.01,
                       batch_size=8, clip=0.27, seed=3,
                       task_options={"seq_len": 20, "corpus": str(tmp_path / "corpus.txt"), "val_chars": 400})


@pytest.mark.torch
@pytest.mark.timeout(60)
def test_reference_tracks_our_training(tiny_config):
    ref = load_reference()
    ours_steps, ref_steps = [], []
    _, ours = train(tiny_config, on_step=lambda e, i, n, res: ours_steps.append(res.loss))
    _, theirs = ref.train_reference(tiny_config, threads=1, on_step=lambda e, i, n, loss: ref_steps.append(loss))

    assert len(ours_steps) == len(ref_steps) == 10
    np.testing.assert_allclose(ref_steps, ours_steps, rtol=1e-4)
    assert ours_steps[-1] < ours_steps[0]                                   # it did learn something
    np.testing.assert_allclose([r["val_loss"] for r in theirs], [r["val_loss"] for r in ours], rtol=1e-4)
    np.testing.assert_allclose([r["train_accuracy"] for r in theirs], [r["train_accuracy"] for r in ours], atol=1e-3)


@pytest.mark.torch
def test_reference_starts_from_our_weights(tiny_config):
    ref = load_reference()
    from model_core.training.loop import make_task

    task = make_task(tiny_config)
    ours = ref.engine_model(tiny_config, task)
    net = ref.build_reference(tiny_config, task)
    theirs = net.state_dict()
    assert len(theirs) == len(ours.state_dict())
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(theirs[ref.torch_name(name)].numpy(), value)
    # the untrained models agree on the validation loss too
    ours_val = task.evaluate(ours)["loss"]
    assert ref.evaluate(net, task)["loss"] == pytest.approx(ours_val, rel=1e-5)
