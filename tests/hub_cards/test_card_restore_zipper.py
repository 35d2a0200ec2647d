"""`towerzoo card` for RESTORE and Zipper folders: model-index from real `towerzoo eval classification`, `asr` and
`tts` results on the fixtures (task types, headline metrics only, values equal to the results files), pipeline tags,
the table's extra speed and duration rows, and each card's usage snippet run as a Hub user would."""

import ast
import json
from pathlib import Path

import pytest
import soundfile
import yaml
from classification_fixtures import CLASSNAMES, restore_folder, write_coop_dataset
from testing_utils import run_without_towerzoo
from zipper_fixtures import LIBRISPEECH, tiny_zipper_folder

from towerzoo.conversions.restore_from_clip import run as restore_from_clip
from towerzoo.evaluation.asr import ASROptions, evaluate_asr
from towerzoo.evaluation.classification import ClassificationOptions, evaluate_classification
from towerzoo.evaluation.tts import TTSOptions, evaluate_tts
from towerzoo.hub_cards.card import CardError, metric_name, write_card

BASE_CLASSES = [name.replace("_", " ") for name in CLASSNAMES[:3]]


@pytest.fixture(scope="module")
def restore(tmp_path_factory):
    """A tiny RESTORE folder (the base classes) and its base-to-novel results on a CoOp-layout dataset."""
    root = tmp_path_factory.mktemp("restore-card")
    folder = restore_folder(root, BASE_CLASSES, layers=2)
    options = ClassificationOptions(
        model=str(folder), data=write_coop_dataset(root / "data"), output=root / "results.json", num_workers=0
    )
    evaluate_classification(options)
    return folder, options.output


@pytest.fixture(scope="module")
def zipper(tmp_path_factory):
    """A tiny Zipper folder with its ASR results on the LibriSpeech fixture and its TTS results (it listens too)."""
    root = tmp_path_factory.mktemp("zipper-card")
    folder = tiny_zipper_folder(root / "zipper")
    common = {"model": str(folder), "data": LIBRISPEECH, "batch_size": 4, "num_workers": 0}
    evaluate_asr(ASROptions(**common, output=root / "asr.json", max_new_tokens=8))
    evaluate_tts(
        TTSOptions(**common, output=root / "tts.json", asr_model=str(folder), max_new_tokens=16, asr_max_new_tokens=8)
    )
    return folder, root / "asr.json", root / "tts.json"


def front_matter(card: Path) -> dict:
    """The card's YAML metadata, as the Hub reads it."""
    return yaml.safe_load(card.read_text().split("---\n")[1])


def _index(path: Path) -> dict[str, dict]:
    """The card's model-index results by task type."""
    [model] = front_matter(path)["model-index"]
    return {result["task"]["type"]: result for result in model["results"]}


def _metrics(results_path: Path, keys: tuple[str, ...]) -> list[dict]:
    """The model-index metrics the card should carry for `keys` of a results file, in that order."""
    metrics = json.loads(results_path.read_text())["metrics"]
    return [{"type": key, "value": round(metrics[key], 2), "name": metric_name(key)} for key in keys]


def test_restore_card_model_index_and_tags(restore):
    folder, results = restore
    path = write_card(folder, [results])
    metadata = front_matter(path)
    assert metadata["pipeline_tag"] == "image-classification"
    assert {"towerzoo", "restore", "custom_code", "vision-language"} <= set(metadata["tags"])
    [result] = _index(path).values()
    recorded = json.loads(results.read_text())
    assert result["task"] == {"type": "image-classification", "name": "Image Classification"}
    assert result["dataset"] == {"name": recorded["dataset"], "type": recorded["dataset"], "split": "test"}
    assert result["metrics"] == _metrics(results, ("base_accuracy", "novel_accuracy", "harmonic_mean"))
    assert [m["name"] for m in result["metrics"]] == [
        "base-class accuracy",
        "novel-class accuracy",
        "harmonic mean of base and novel accuracy",
    ]
    text = path.read_text()
    harmonic = recorded["metrics"]["harmonic_mean"]
    assert (
        f"| classification | {recorded['dataset']} | test | harmonic mean of base and novel accuracy | {harmonic:.2f} |"
        in text
    )
    assert "AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)" in text
    assert "model.set_classnames([" in text and "only RESTORE's own weights" not in text


def test_zipper_card_keeps_headline_metrics_in_model_index(zipper):
    folder, asr, tts = zipper
    path = write_card(folder, [asr, tts])
    metadata = front_matter(path)
    assert metadata["pipeline_tag"] == "automatic-speech-recognition"
    assert {"zipper", "speech-text"} <= set(metadata["tags"])
    index = _index(path)
    assert index.keys() == {"automatic-speech-recognition", "text-to-speech"}
    for results, task_type, name in (
        (asr, "automatic-speech-recognition", "Automatic Speech Recognition"),
        (tts, "text-to-speech", "Text-to-Speech"),
    ):
        result = index[task_type]
        assert result["task"] == {"type": task_type, "name": name}
        assert result["dataset"] == {"name": "librispeech", "type": "librispeech", "split": "librispeech"}
        assert result["metrics"] == _metrics(results, ("wer", "cer"))  # RTFx and durations stay out
    # the table shows the speed and the durations beside the error rates
    text = path.read_text()
    rtfx = json.loads(asr.read_text())["metrics"]["rtfx"]
    assert (
        f"| asr | librispeech | librispeech | RTFx (audio seconds per transcription second; machine-dependent) | {rtfx:.2f} |"
        in text
    )
    durations = json.loads(tts.read_text())["durations"]
    ratio = durations["ratio_to_reference"]["mean"]
    assert (
        f"| tts | librispeech | librispeech | mean duration ratio, synthesised / reference recording | {ratio:.2f} |"
        in text
    )
    assert f"mean synthesised duration (s) | {durations['synthesized_seconds']['mean']:.2f} |" in text
    assert "except speed and duration figures" in text
    assert "AutoModelForSpeechSeq2Seq.from_pretrained(repo, trust_remote_code=True)" in text


def test_results_without_the_headline_metrics_are_refused(zipper, tmp_path):
    folder, asr, _ = zipper
    results = {**json.loads(asr.read_text()), "metrics": {"rtfx": 12.5}}
    path = tmp_path / "speed-only.json"
    path.write_text(json.dumps(results))
    with pytest.raises(CardError, match=r"speed-only.json: `metrics` holds none of the asr scores \(wer, cer\)"):
        write_card(folder, [path])


def test_adapters_only_card_names_its_base_clip(restore, tmp_path):
    """A folder from `restore-from-clip --adapters-only` says it loads the CLIP it was built on."""
    folder, _ = restore
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("\n".join(BASE_CLASSES) + "\n")
    clip = folder.parent / "clip"
    out = restore_from_clip(clip, tmp_path / "adapters", classnames=classnames, adapters_only=True)
    text = write_card(out).read_text()
    assert f"only RESTORE's own weights: loading it also loads its base CLIP (`{clip}`" in text


def _hub_user_code(card: Path, folder: Path) -> str:
    """The card's snippet pointed at the local folder (the repo line replaced)."""
    code = card.read_text().split("```python\n", 1)[1].split("\n```", 1)[0]
    repo_line = next(line for line in code.splitlines() if line.startswith("repo = "))
    return code.replace(repo_line, f"repo = {str(folder)!r}")


def test_restore_usage_snippet_runs_as_a_hub_user(restore, tmp_path):
    folder, _ = restore
    image = "from PIL import Image\nImage.new('RGB', (40, 30), 'orange').save('photo.jpg')\n"
    printed = run_without_towerzoo(image + _hub_user_code(write_card(folder), folder), tmp_path).stdout
    first, second = printed.strip().splitlines()
    assert first in BASE_CLASSES
    probabilities = ast.literal_eval(second)  # the dict the snippet prints
    assert list(probabilities) == ["golden retriever", "tabby cat", "red fox"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_zipper_usage_snippet_runs_as_a_hub_user(zipper, tmp_path):
    folder, _, _ = zipper
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    speech, rate = soundfile.read(sorted(LIBRISPEECH.glob("*/*/*.flac"))[0], dtype="float32")
    soundfile.write(workdir / "speech.wav", speech, rate)
    printed = run_without_towerzoo(_hub_user_code(write_card(folder), folder), tmp_path).stdout
    assert len(printed.splitlines()) == 1  # the transcription (random weights: any text)
    synthesised = soundfile.info(workdir / "synthesised.wav")
    assert synthesised.samplerate == 16000 and synthesised.frames > 0
