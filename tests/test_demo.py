"""`towerzoo demo` end to end, as the README's first command runs it: the embedded model's Hub folders load in a
fresh process, the harnesses score it on a held-out generated set well above the blind and random baselines, and
the cards carry the measured numbers as model-index."""

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from towerzoo.demo import ASSETS, MODELS, export_asset, write_hub_folder_from_asset
from towerzoo.shapes import retrieval_chance, vqa_baselines

NUM_IMAGES = 60


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules")}
    done = subprocess.run(
        [sys.executable, "-m", "towerzoo.cli", "demo", "--output-dir", str(work), "--num-images", str(NUM_IMAGES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done.stdout


def test_embedded_models_are_small_and_carry_no_code():
    for name in MODELS.values():
        files = sorted(path.name for path in (ASSETS / name).iterdir())
        assert "config.json" in files and "model.safetensors" in files and "training.json" in files
        assert not [name for name in files if name.endswith(".py")]
        assert (ASSETS / name / "model.safetensors").stat().st_size < 4 * 2**20


def _comparable(path):
    """A file's content for comparison: JSON parsed (without `use_cache`, which transformers writes as null or false
    depending on how a config was made), anything else as bytes."""
    if path.suffix != ".json":
        return path.read_bytes()
    content = json.loads(path.read_text())
    for part in (content, content.get("text_config", {})):
        part.pop("use_cache", None)
    return content


def test_assets_round_trip_through_a_hub_folder(tmp_path):
    """What the demo writes from an asset is a Hub folder that `scripts/train_demo_models.py --export-assets` turns
    back into the same asset (same weights byte for byte, same configs), so the committed assets are what the
    script stores."""
    for name in MODELS.values():
        folder = write_hub_folder_from_asset(ASSETS / name, tmp_path / "hub" / name)
        assert (folder / "modeling_bridgetower.py").is_file() and "auto_map" in (folder / "config.json").read_text()
        exported = export_asset(folder, tmp_path / "assets" / name)
        expected = sorted(path.name for path in (ASSETS / name).iterdir())
        assert sorted(path.name for path in exported.iterdir()) == expected
        for file_name in expected:
            assert _comparable(exported / file_name) == _comparable(ASSETS / name / file_name), file_name


def test_demo_scores_well_above_the_baselines(demo):
    work, stdout = demo
    vqa = json.loads((work / "results" / "vqav2.json").read_text())
    retrieval = json.loads((work / "results" / "retrieval.json").read_text())
    baselines = vqa_baselines(work / "data" / "v2_shapes_test_annotations.json")
    chance = retrieval_chance(NUM_IMAGES)
    assert vqa["num_examples"] == 4 * NUM_IMAGES and retrieval["counts"]["images"] == NUM_IMAGES
    assert vqa["metrics"]["accuracy"] > baselines["overall"]["majority"] + 20, (vqa["metrics"], baselines)
    assert retrieval["metrics"]["ir_r1"] > 5 * chance["ir_r1"] and retrieval["metrics"]["tr_r1"] > 3 * chance["tr_r1"]
    # the printed table holds the measured numbers
    assert f"{vqa['metrics']['accuracy']:.2f}" in stdout and f"{retrieval['metrics']['ir_r1']:.2f}" in stdout


def test_demo_writes_cards_with_the_results_as_model_index(demo):
    work, _ = demo
    for task, name in MODELS.items():
        card = ModelCard.load(work / name / "README.md")
        assert card.data.library_name == "transformers" and "trust_remote_code=True" in card.text
        results = json.loads((work / "results" / f"{task}.json").read_text())
        _, eval_results = model_index_to_eval_results(card.data.to_dict()["model-index"])
        values = {result.metric_value for result in eval_results}
        headline = results["metrics"]["accuracy"] if task == "vqav2" else results["metrics"]["ir_r1"]
        assert round(headline, 2) in values, (values, headline)
