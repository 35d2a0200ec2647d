"""`evaluation/notebooks/restore_feature_shift.ipynb` runs headless on an untrained tiny RESTORE (built from the tiny
CLIP) and a tiny dataset: it measures the feature shift before and after a few training steps, plots it and writes it,
and its "start" numbers are `feature_shift` of the same model on the same images, computed here."""

import json
import math
import random

import pytest
import torch
import transformers
from classification_fixtures import CLASSNAMES, restore_folder, write_coop_dataset
from notebook_runner import images, isolate_jupyter, outputs, run_notebook

from towerzoo.evaluation.classification_data import (
    few_shot,
    load_classification_dataset,
    open_rgb_image,
    subsample_classes,
)
from towerzoo.models.restore import feature_shift

BASE = [name.replace("_", " ") for name in CLASSNAMES[:3]]


@pytest.fixture(autouse=True)
def _jupyter_offline(tmp_path, monkeypatch):
    isolate_jupyter(tmp_path, monkeypatch)


def test_feature_shift_notebook(tmp_path):
    model_dir = restore_folder(tmp_path, BASE)
    data = write_coop_dataset(tmp_path / "data", {"train": 4})
    parameters = {
        "MODEL": str(model_dir),
        "CLIP": None,
        "DATA": str(data),
        "NUM_SHOTS": 4,
        "STEPS": 6,
        "SHIFT_IMAGES": 8,
        "SEED": 1,
        "DEVICE": "cpu",
        "OUTPUT_DIR": str(tmp_path / "results"),
    }
    notebook = run_notebook("restore_feature_shift.ipynb", parameters, tmp_path)

    record = json.loads((tmp_path / "results" / "feature_shift.json").read_text())
    assert record["layers"] == ["embeddings", "layer 1", "layer 2", "layer 3", "projected"]
    assert record["classes"] == BASE and len(record["losses"]) == 6
    start, after = record["start"], record["after"]
    for state in (start, after):
        assert all(math.isfinite(value) for column in state.values() for value in column)
        gap = [abs(t - v) for t, v in zip(state["text"], state["vision"], strict=True)]
        assert state["|text - vision|"] == pytest.approx(gap)
        # the pooled tokens see no prompt in the embeddings; [CLS] sees the vision prompts from layer 1 on
        assert state["text"][0] == state["vision"][0] == 0 and min(state["vision"][1:]) > 0
    # the text context starts as the template's own words, so [EOS] first moves with the deep prompt of layer 2;
    # training moves the context too
    assert start["text"][1] == 0 and min(start["text"][2:]) > 0 and min(after["text"][1:]) > 0
    assert after["vision"] != start["vision"]
    table = outputs(notebook, "shift-table")
    assert "after 6 steps" in table and f"{after['text'][-1]:.6f}"[:6] in table
    assert images(notebook) == 1 and (tmp_path / "results" / "feature_shift.png").is_file()

    # the same model on the same images (the notebook's seeded sample of the shots)
    shots = subsample_classes(few_shot(load_classification_dataset(data, "train"), 4, 1), "base")
    model = transformers.AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True)
    processor = transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    measured = random.Random(1).sample(shots.paths, 8)

    pixels = processor(images=[open_rgb_image(path) for path in measured], return_tensors="pt")["pixel_values"]
    expected = feature_shift(model.eval(), pixels)
    torch.testing.assert_close(torch.tensor(start["text"]), expected.text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(start["vision"]), expected.vision, rtol=1e-5, atol=1e-6)
