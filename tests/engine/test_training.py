"""Training: learning, exact resume, the train.py CLI, the three tasks, and the compare/visualise/sample scripts."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from model_core import checkpoint
from model_core.backend import gpu_available
from model_core import SequenceModel
from model_core.training import CHECKPOINT_NAME, TrainConfig, train
from model_core.training.loop import make_task, raise_forget_bias
from scripts import compare, sample, visualize_hidden
from scripts import train as train_cli
from tests.helpers import ROOT


EASY = dict(task="temporal-order", cell="lstm", hidden_size=16, lr=0.01, task_options={"difficulty": "easy"})
CORPUS_TEXT = "the cat sat on the mat. the dog sat on the log. " * 120


def run_script(name: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", f"scripts.{name}", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "tiny.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def charlm_run(corpus, tmp_path_factory):
    """A tiny char-LM trained for three short epochs: (out_dir, history)."""
    out = tmp_path_factory.mktemp("charlm")
    cfg = TrainConfig(task="charlm", cell="lstm", hidden_size=32, embedding_dim=8, epochs=3, batch_size=8, lr=0.01,
                      task_options={"corpus": str(corpus), "seq_len": 20, "val_chars": 300})
    _, history = train(cfg, out_dir=out)
    return out, history


# -- the loop -------------------------------------------------------------------------------
def test_short_run_learns_easy_temporal_order():
    _, history = train(TrainConfig(**EASY, epochs=5))
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_accuracy"] >= 0.9                           # chance is 0.25


def test_resume_gives_the_uninterrupted_run_exactly(tmp_path):
    cfg = TrainConfig(**{**EASY, "hidden_size": 8}, epochs=4)
    straight, half = tmp_path / "straight", tmp_path / "half"
    model_a, hist_a = train(cfg, out_dir=straight)
    train(TrainConfig(**{**EASY, "hidden_size": 8}, epochs=2), out_dir=half)
    model_b, hist_b = train(cfg, out_dir=half, resume=half / CHECKPOINT_NAME)
    assert len(hist_b) == 4
    assert without_timing(hist_a) == without_timing(hist_b)
    for name, value in model_a.state_dict().items():
        np.testing.assert_array_equal(value, model_b.state_dict()[name], err_msg=name)
    _, _, extra_a, tensors_a = checkpoint.read(straight / CHECKPOINT_NAME)
    _, _, extra_b, tensors_b = checkpoint.read(half / CHECKPOINT_NAME)
    assert extra_a["optimizer"] == extra_b["optimizer"] and extra_a["epoch"] == extra_b["epoch"] == 4
    for name, value in tensors_a.items():                             # Adam moments
        np.testing.assert_array_equal(value, tensors_b[name], err_msg=name)


def test_echo_carries_state_across_chunks():
    cfg = TrainConfig(task="echo", cell="lstm", hidden_size=16, lr=0.01, epochs=2,
                      task_options={"length": 2000, "delay": 3, "chunk": 10})
    _, history = train(cfg)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    # The first 3 outputs of every 10-step chunk echo bits from the previous chunk: without the
    # carried state at most 0.7 + 0.3 * 0.5 = 85% of the bits can be right.
    assert history[-1]["val_accuracy"] > 0.9


def test_charlm_learns_a_tiny_corpus(charlm_run):
    out, history = charlm_run
    vocab_bits = math.log2(len(set(CORPUS_TEXT)))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_bpc"] < 0.5 * vocab_bits                     # uniform guessing costs log2(V)
    config, _, extra, _ = checkpoint.read(out / CHECKPOINT_NAME)
    assert config.task == "lm" and "".join(config.vocab) == "".join(sorted(set(CORPUS_TEXT)))
    assert extra["epoch"] == 3


def test_forget_bias_moves_only_the_lstm_forget_gate_biases():
    cfg = TrainConfig(**{**EASY, "hidden_size": 8}, epochs=1)
    H = cfg.hidden_size
    fresh = SequenceModel(make_task(cfg).config("lstm", H), seed=cfg.seed)
    biased = SequenceModel(make_task(cfg).config("lstm", H), seed=cfg.seed)
    raise_forget_bias(biased, 3.0)
    for name, value in fresh.state_dict().items():
        delta = biased.state_dict()[name] - value
        if name.startswith("rnn.bias_hh_"):
            np.testing.assert_allclose(delta[H:2 * H], 3.0, atol=1e-6)   # gate order i, f, g, o
            delta[H:2 * H] = 0.0
        assert not delta.any(), name
    with pytest.raises(ValueError, match="LSTM only"):
        TrainConfig(**{**EASY, "cell": "gru"}, forget_bias=1.0)


# -- train.py -------------------------------------------------------------------------------
def test_train_cli_writes_checkpoint_metrics_and_curves(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    kept = []                                  # the process's heap policy, set once before training
    monkeypatch.setattr(train_cli, "keep_freed_memory", lambda: kept.append(not out.exists()) or True)
    rc = train_cli.main(["--task", "temporal-order", "--difficulty", "easy", "--hidden-size", "8", "--epochs", "2",
                         "--out", str(out), "--no-progress"])
    assert rc == 0 and kept == [True]
    assert "done: 2 epochs" in capsys.readouterr().out
    for name in ("model.safetensors", "metrics.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hidden_size"] == 8 and metrics["config"]["task_options"] == {"difficulty": "easy"}
    assert set(metrics["final"]["train"]) == {"loss", "accuracy"}
    assert set(metrics["final"]["validation"]) == {"loss", "accuracy"}
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["final"]["validation"]["accuracy"] == metrics["history"][-1]["val_accuracy"]


BAD_ARGS = {
    "unknown task": (["--task", "nope"], "invalid choice: 'nope'"),
    "zero lr": (["--task", "temporal-order", "--lr", "0"], "--lr: must be > 0"),
    "bad difficulty": (["--task", "temporal-order", "--difficulty", "impossible"],
                       "unknown difficulty 'impossible'"),
    "missing resume": (["--task", "temporal-order", "--resume", "no/such/model.safetensors"],
                       "--resume: no checkpoint"),
    "gpu without one": (["--task", "temporal-order", "--device", "gpu", "--epochs", "1"], "no GPU is usable"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_train_cli_rejects_bad_arguments_cleanly(case, tmp_path, capsys):
    if case == "gpu without one" and gpu_available():
        pytest.skip("a GPU is available here")
    argv, message = BAD_ARGS[case]
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_cli_bad_argument_in_a_real_process(tmp_path):
    proc = run_script("train", "--task", "temporal-order", "--difficulty", "impossible", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown difficulty 'impossible'" in proc.stderr


# -- compare.py, visualize_hidden.py, sample.py ---------------------------------------------
def test_compare_visualize_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    proc = run_script("compare", "--epochs", "2", "--hidden-size", "8", "--lr", "0.01", "--cells", "rnn,lstm",
                      "--forget-bias", "3", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (out / "compare.png").stat().st_size > 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["cells"] == ["rnn", "lstm"] and summary["config"]["hidden_size"] == 8
    assert summary["runs"]["lstm"]["forget_bias"] == 3 and summary["runs"]["rnn"]["forget_bias"] == 0
    for cell in ("rnn", "lstm"):
        run = summary["runs"][cell]
        assert len(run["history"]) == 2 and 0.0 <= run["final"]["validation"]["accuracy"] <= 1.0
        assert (out / cell / "model.safetensors").is_file() and (out / cell / "curves.png").is_file()

    vis = tmp_path / "vis"
    proc = run_script("visualize_hidden", "--checkpoint", str(out / "lstm"), "--sequence", "BbXcdYaE", "--cell",
                      "--out", str(vis))
    assert proc.returncode == 0, proc.stderr
    assert "sequence BbXcdYaE (class R" in proc.stdout
    assert (vis / "hidden.png").stat().st_size > 0 and (vis / "cell.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exc:
        visualize_hidden.main(["--checkpoint", str(out / "rnn"), "--cell", "--out", str(vis)])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv,message", [
    (["--cells", "rnn,transformer"], "argument --cells"),
    (["--cells", "lstm,lstm"], "each cell may appear once"),
    (["--cell", "rnn"], "use --cells"),
    (["--resume", "x.safetensors"], "--resume does not apply"),
    (["--preset", "medium"], "argument --preset"),
])
def test_compare_rejects_bad_arguments(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_visualize_rejects_a_non_temporal_order_checkpoint(charlm_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        visualize_hidden.main(["--checkpoint", str(charlm_run[0]), "--out", str(tmp_path)])
    assert exc.value.code == 2 and "not a temporal-order classifier" in capsys.readouterr().err


def test_sample_generates_from_a_char_lm(charlm_run):
    out, _ = charlm_run
    proc = run_script("sample", "--checkpoint", str(out), "--prompt", "the ", "--length", "30", "--n", "2",
                      "--seed", "0", "--top-k", "5")
    assert proc.returncode == 0, proc.stderr
    samples = [line for line in proc.stdout.splitlines() if line.startswith("the ")]
    assert len(samples) == 2 and all(len(s) == 4 + 30 for s in samples)
    assert set("".join(samples)) <= set(CORPUS_TEXT)


def test_sample_greedy_is_deterministic_and_unknown_characters_are_listed(charlm_run, capsys):
    out, _ = charlm_run
    for _ in range(2):
        assert sample.main(["--checkpoint", str(out / CHECKPOINT_NAME), "--prompt", "the", "--greedy",
                            "--length", "20"]) == 0
    first, second, _ = capsys.readouterr().out.split("\n")
    assert first == second and len(first) == 3 + 20
    with pytest.raises(SystemExit) as exc:
        sample.main(["--checkpoint", str(out), "--prompt", "THE zebra"])
    assert exc.value.code == 2
    assert "['E', 'H', 'T', 'b', 'r', 'z']" in capsys.readouterr().err
