"""The bundled models load and reproduce their recorded validation metrics on the fixed validation sets."""
from __future__ import annotations

import json

import pytest

import model_core
from model_core.training import CHECKPOINT_NAME, TrainConfig
from model_core.training.loop import make_task
from tests.helpers import ROOT

MODELS = ROOT / "models"
BUNDLED = sorted(p.name for p in MODELS.iterdir() if (p / CHECKPOINT_NAME).is_file()) if MODELS.is_dir() else []


def test_expected_models_are_bundled():
    assert {"charlm", "echo", "temporal-order"} <= set(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_reproduces_recorded_validation_metrics(name):
    metrics = json.loads((MODELS / name / "metrics.json").read_text())
    cfg = TrainConfig(**{**metrics["config"], "device": "cpu"})
    model = model_core.load(MODELS / name / CHECKPOINT_NAME)
    assert model.config.to_json() == json.dumps(metrics["model"], sort_keys=True)
    got = make_task(cfg).evaluate(model)
    for key, recorded in metrics["final"]["validation"].items():
        assert got[key] == pytest.approx(recorded, rel=1e-4, abs=1e-6), key
    assert (MODELS / name / "curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoints_stay_small(name):
    assert (MODELS / name / CHECKPOINT_NAME).stat().st_size < 3_000_000
