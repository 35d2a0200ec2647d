"""`towerzoo card`: the README of a tiny towerzoo folder, from real `towerzoo eval` results (VQAv2 and Flickr30K
retrieval run on fixtures) and the zoo registry — YAML metadata, model-index round trip, the Hub's YAML check (against
tests/fake_hub.py), the usage snippet run as a Hub user would, and clear errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from evaluation_fixtures import ANSWERS, tiny_model_folder, write_karpathy, write_vqav2
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from testing_utils import run_without_towerzoo

import towerzoo.models.bridgetower as bt
from towerzoo.cli import main
from towerzoo.conversions.bridgetower_folder import verification_record
from towerzoo.evaluation.retrieval import RetrievalOptions, evaluate_retrieval
from towerzoo.evaluation.vqav2 import VQAv2Options, evaluate_vqav2
from towerzoo.hub_cards.card import CardError, eval_results, read_results, record_entry, write_card
from towerzoo.registry import RegistryError

VQA_ENTRY, RETRIEVAL_ENTRY = "bridgetower-base-vqav2", "bridgetower-base-flickr30k"
SOURCE_URL = "https://example.org/BridgeTower_ftfpt_base_vqav2.ckpt"


def _verification(folder: Path) -> None:
    """A conversion record as the BridgeTower converters write it."""
    record = verification_record(
        "bridgetower-original",
        "/data/BridgeTower_ftfpt_base_vqav2.ckpt",
        {"vqa_logits": 1.5e-6, "pooler_output": 4e-7},
        {"vit_model.visual.proj": "unused by the original forward pass", "queue": "ITC queue, training state"},
        "the original BridgeTower forward pass",
    )
    (folder / "verification.json").write_text(json.dumps(record, indent=2))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny VQA folder and a tiny ITM+ITC folder, each with real results from the harness on fixtures."""
    root = tmp_path_factory.mktemp("cards")
    vqa = tiny_model_folder(root / "vqa")
    _verification(vqa)
    evaluate_vqav2(
        VQAv2Options(model=str(vqa), output=root / "vqa.json", batch_size=4, num_workers=0, **write_vqav2(root / "v"))
    )
    retrieval = tiny_model_folder(
        root / "retrieval", model_class=bt.BridgeTowerForPreTraining, pretraining_heads=["itm", "itc"]
    )
    evaluate_retrieval(
        RetrievalOptions(
            model=str(retrieval),
            output=root / "retrieval.json",
            cache_dir=root / "cache",
            k=2,
            batch_size=4,
            num_workers=0,
            **write_karpathy(root / "k", dataset="flickr30k"),
        )
    )
    return {"root": root, "vqa": vqa, "vqa_results": root / "vqa.json", "retrieval": retrieval,
            "retrieval_results": root / "retrieval.json"}  # fmt: skip


def front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0].removeprefix("---\n"))


def python_block(path: Path) -> str:
    return path.read_text().split("```python\n", 1)[1].split("\n```", 1)[0]


def test_vqa_card_metadata_and_body(zoo):
    path = write_card(zoo["vqa"], [zoo["vqa_results"]], entry=VQA_ENTRY)
    assert path == zoo["vqa"] / "README.md"
    metadata = front_matter(path)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "visual-question-answering"
    assert metadata["license"] == "mit" and "base_model" not in metadata  # an original checkpoint, not on the Hub
    assert {"towerzoo", "bridgetower", "custom_code", "arxiv:2206.08657"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["conceptual_captions", "sbu_captions", "visual_genome", "HuggingFaceM4/VQAv2"]
    [model] = metadata["model-index"]
    assert model["name"] == VQA_ENTRY
    [result] = model["results"]
    accuracy = json.loads(zoo["vqa_results"].read_text())["metrics"]["accuracy"]
    assert result["task"] == {"type": "visual-question-answering", "name": "Visual Question Answering"}
    assert result["dataset"] == {"name": "VQAv2", "type": "HuggingFaceM4/VQAv2", "split": "val2014"}
    assert result["metrics"] == [{"type": "accuracy", "value": round(accuracy, 2), "name": "accuracy"}]

    text = path.read_text()
    assert f"| vqav2 | VQAv2 | val2014 | accuracy | {accuracy:.2f} | — |" in text
    # the paper's numbers are on test-dev/test-std, which no local run scores: listed beside, with their table
    assert (
        "| vqav2 | VQAv2 | test-dev | accuracy | — | 78.66 (arXiv 2306.00103, Table 7 (BridgeTower base row)) |"
        in text
    )
    assert "AutoModelForVisualQuestionAnswering.from_pretrained(repo, trust_remote_code=True)" in text
    assert "@article{xu2022bridgetower," in text
    # the verification section: the registry's source without its query string, the record's numbers
    assert (
        "- Source: `https://chenfei.blob.core.windows.net/data/G/LCI/best_checkpoints/BridgeTower_ftfpt_base_vqav2.ckpt`"
        in text
    )
    assert "- Largest absolute difference: 1.50e-06 (float32, 2 outputs on random inputs)" in text
    assert "- Source keys dropped: 2" in text and "| vqa_logits | 1.50e-06 |" in text
    assert not [p for p in zoo["vqa"].iterdir() if p.name.startswith(".README")]  # the temporary file is gone


def test_model_index_round_trips(zoo):
    path = write_card(zoo["retrieval"], [zoo["retrieval_results"]], entry=RETRIEVAL_ENTRY)
    written = eval_results([read_results(zoo["retrieval_results"], zoo["retrieval"])])
    loaded = ModelCard.load(path)
    assert loaded.data.eval_results == written
    name, from_yaml = model_index_to_eval_results(front_matter(path)["model-index"])
    assert name == RETRIEVAL_ENTRY and from_yaml == written
    metrics = json.loads(zoo["retrieval_results"].read_text())["metrics"]
    assert {r.metric_type: r.metric_value for r in written} == {k: round(v, 2) for k, v in metrics.items()}
    assert {r.dataset_type for r in written} == {"nlphuji/flickr30k"} and {r.dataset_split for r in written} == {
        "test"
    }


def test_paper_number_next_to_the_measured_one(zoo):
    text = write_card(zoo["retrieval"], [zoo["retrieval_results"]], entry=RETRIEVAL_ENTRY).read_text()
    ir_r1 = json.loads(zoo["retrieval_results"].read_text())["metrics"]["ir_r1"]
    row = f"| retrieval | Flickr30K (Karpathy split) | test | text→image R@1 | {ir_r1:.2f} | 85.83 (arXiv 2306.00103"
    assert row in text
    assert front_matter(zoo["retrieval"] / "README.md")["pipeline_tag"] == "zero-shot-image-classification"
    assert "This folder has no verification.json." in text


def test_demo_entry_card_takes_the_datasets_own_name(zoo, tmp_path):
    """The demo's model is trained here: no conversion record, no paper numbers; its retrieval data call themselves
    "shapes" (a registry alias of towerzoo-shapes)."""
    folder = tmp_path / "demo"
    shutil.copytree(zoo["retrieval"], folder)
    results = _results(tmp_path, zoo["retrieval_results"], dataset="shapes", model=str(folder))
    text = write_card(folder, [results], entry="towerzoo-shapes-bridgetower").read_text()
    metadata = front_matter(folder / "README.md")
    assert metadata["license"] == "apache-2.0" and "datasets" not in metadata
    assert {r["dataset"]["type"] for r in metadata["model-index"][0]["results"]} == {"towerzoo-shapes"}
    assert "| retrieval | towerzoo shapes (procedurally generated) | test | text→image R@1 |" in text
    assert "Not converted: towerzoo demo (trained in this repository)." in text


def test_card_without_entry_or_results(zoo, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(zoo["vqa"], folder)
    text = write_card(folder).read_text()
    metadata = front_matter(folder / "README.md")
    assert "model-index" not in metadata and "license" not in metadata
    assert "No evaluation results yet" in text and "## Citation" not in text


def test_card_yaml_passes_the_hubs_check(zoo, tmp_path):
    """`ModelCard.validate` posts the card to the Hub's /api/validate-yaml: here the fake Hub, in a subprocess (the
    endpoint is read at import). A card with broken metadata is refused, so the check has teeth."""
    fake_hub = pytest.importorskip("fake_hub")
    path = write_card(zoo["vqa"], [zoo["vqa_results"]], entry=VQA_ENTRY)
    broken = tmp_path / "README.md"
    broken.write_text(path.read_text().replace("- towerzoo\n", "- 3\n", 1))
    script = "import sys\nfrom huggingface_hub import ModelCard\nModelCard.load(sys.argv[1]).validate()\n"
    with fake_hub.FakeHub() as hub:
        env = {**os.environ, **hub.env(token=False), "HF_HUB_DISABLE_TELEMETRY": "1"}
        good = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True)
        bad = subprocess.run([sys.executable, "-c", script, str(broken)], env=env, capture_output=True, text=True)
        assert hub.lines() == ["POST /api/validate-yaml"] * 2
    assert good.returncode == 0, good.stderr[-2000:]
    assert bad.returncode != 0 and '"tags" must be a string or a list of strings' in bad.stderr


@pytest.mark.parametrize("folder, answer_check", [("vqa", "answer"), ("retrieval", "similarities")])
def test_usage_snippet_runs_as_a_hub_user(zoo, tmp_path, folder, answer_check):
    """The card's code, pointed at the folder, runs where towerzoo cannot be imported."""
    path = write_card(zoo[folder], entry=VQA_ENTRY if folder == "vqa" else RETRIEVAL_ENTRY)
    code = python_block(path)
    repo_line = next(line for line in code.splitlines() if line.startswith("repo = "))
    code = code.replace(repo_line, f"repo = {str(zoo[folder])!r}")
    image = "from PIL import Image\nImage.new('RGB', (64, 48), 'orange').save('photo.jpg')\n"
    printed = run_without_towerzoo(image + code, tmp_path).stdout.strip()
    if answer_check == "answer":
        assert printed in ANSWERS
    else:
        assert printed.startswith("tensor([[") and printed.count("]") == 3  # 2 captions × 1 image


def test_video_usage_snippet_runs_as_a_hub_user(tmp_path):
    pytest.importorskip("av")
    from video_fixtures import moving_shapes, tiny_vidla_folder, write_video

    folder = tiny_vidla_folder(tmp_path / "vidla")
    metadata_path = write_card(folder, entry="vidla-base-patch16-from-clip")
    assert front_matter(metadata_path)["base_model"] == "openai/clip-vit-base-patch16"
    code = python_block(metadata_path).replace('repo = "vidla-base-patch16-from-clip"', f"repo = {str(folder)!r}")
    (tmp_path / "elsewhere").mkdir()
    write_video(tmp_path / "elsewhere" / "clip.mp4", moving_shapes(8, 32, 32))
    printed = run_without_towerzoo(code, tmp_path).stdout.strip()
    assert printed.startswith("tensor([[") and printed.count("]") == 3  # 2 captions × 1 video


def test_recorded_entry_is_used_and_checked(zoo, tmp_path):
    folder = tmp_path / "converted"
    shutil.copytree(zoo["vqa"], folder)
    record_entry(folder, VQA_ENTRY)
    assert json.loads((folder / "verification.json").read_text())["towerzoo_entry"] == VQA_ENTRY
    text = write_card(folder).read_text()  # no entry given: the recorded one
    assert f"# {VQA_ENTRY}\n" in text and "arxiv:2206.08657" in front_matter(folder / "README.md")["tags"]
    with pytest.raises(
        CardError, match=rf"converted as zoo entry '{VQA_ENTRY}' \(verification.json\), not 'bridgetower-base-nlvr2'"
    ):
        write_card(folder, entry="bridgetower-base-nlvr2")
    with pytest.raises(RegistryError, match="no zoo entry named 'bridgetower-vqa'"):
        record_entry(folder, "bridgetower-vqa")


# ---- bad input -------------------------------------------------------------------------------------------------------
def _results(tmp_path: Path, source: Path, name: str = "results.json", **changes) -> Path:
    results = {**json.loads(source.read_text()), **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del results[key]
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CardError, match=r"empty has no config.json: not a model folder"):
        write_card(tmp_path / "empty")
    with pytest.raises(CardError, match=r"missing is not a folder"):
        write_card(tmp_path / "missing")


def test_results_for_another_model(zoo, tmp_path):
    other = _results(tmp_path, zoo["vqa_results"], model=str(zoo["retrieval"]))
    message = rf"holds results for '{zoo['retrieval']}', not for {zoo['vqa'].resolve()}: evaluate this folder"
    with pytest.raises(CardError, match=message):
        write_card(zoo["vqa"], [other])
    # the same folder named relative to the results file, or by this entry's Hub repo id, is this model
    relative = _results(zoo["root"], zoo["vqa_results"], name="relative.json", model="vqa")
    write_card(zoo["vqa"], [relative], entry=VQA_ENTRY)
    hub = _results(tmp_path, zoo["vqa_results"], name="hub.json", model=f"someone/{VQA_ENTRY}")
    write_card(zoo["vqa"], [hub], entry=VQA_ENTRY)
    stranger = _results(tmp_path, zoo["vqa_results"], name="stranger.json", model="someone/other-model")
    with pytest.raises(CardError, match=r"holds results for 'someone/other-model'"):
        write_card(zoo["vqa"], [stranger], entry=VQA_ENTRY)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"is not valid JSON"),
        ("[1, 2]", r"holds a list, not a towerzoo eval results object"),
        ('{"model": "x"}', r"is not a towerzoo eval results file: no task field"),
    ],
)
def test_malformed_results(zoo, tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(CardError, match=message):
        write_card(zoo["vqa"], [path])


def test_results_without_metrics_or_of_an_unknown_task(zoo, tmp_path):
    submission = _results(tmp_path, zoo["vqa_results"], metrics=None, submission="answers.json")
    with pytest.raises(CardError, match=r"holds no metrics \(a test split without annotations: score its submission"):
        write_card(zoo["vqa"], [submission])
    gqa = _results(tmp_path, zoo["vqa_results"], name="gqa.json", task="gqa")
    with pytest.raises(
        CardError, match=r"task 'gqa' is not a towerzoo eval task \(vqav2, retrieval, video-retrieval, classification"
    ):
        write_card(zoo["vqa"], [gqa])


def test_results_of_a_task_the_entry_does_not_have(zoo):
    with pytest.raises(
        CardError,
        match=rf"holds vqav2 results on vqav2, a task zoo entry '{RETRIEVAL_ENTRY}' does not have \(its tasks: "
        r"retrieval on flickr30k\)",
    ):
        write_card(zoo["vqa"], [zoo["vqa_results"]], entry=RETRIEVAL_ENTRY)


def test_same_results_twice_and_wrong_architecture(zoo, tmp_path):
    copy = _results(tmp_path, zoo["vqa_results"])
    with pytest.raises(CardError, match=r"both hold vqav2 results on vqav2 \(val2014\); pass one"):
        write_card(zoo["vqa"], [zoo["vqa_results"], copy])
    with pytest.raises(CardError, match=r"zoo entry 'managertower-base-vqav2' is a managertower model, but"):
        write_card(zoo["vqa"], entry="managertower-base-vqav2")


def test_cli(zoo, tmp_path, capsys):
    assert main(["card", str(zoo["vqa"]), "--results", str(zoo["vqa_results"]), "--entry", VQA_ENTRY]) == 0
    assert capsys.readouterr().out == f"wrote {zoo['vqa'] / 'README.md'} (1 results file)\n"
    assert main(["card", str(tmp_path), "--entry", "no-such-entry"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("towerzoo card: error: ") and err.count("\n") == 1
    assert main(["card", str(zoo["vqa"]), "--entry", "no-such-entry"]) == 2
    assert "no zoo entry named 'no-such-entry'" in capsys.readouterr().err
