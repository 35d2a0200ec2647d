"""`towerzoo eval mllm-vqa`: the answers are the model's own greedy generations for LLaVA-OneVision's prompts, the
scores are the official VQAv2 scorer's and the letter match's, LLaVA-OV-Manager with its managers off answers as
transformers' LLaVA-OneVision, killed and sharded runs give the single run's result, and bad input fails in one line."""

import json
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from evaluation_fixtures import run_eval_in_processes, tiny_model_folder, write_vqav2
from llava_fixtures import (
    tiny_llava_onevision_folder,
    tiny_llava_ov_manager_folder,
    tiny_llava_processor,
    write_multiple_choice,
)
from PIL import Image
from transformers import AutoModelForImageTextToText
from transformers.utils import is_torchvision_available

from towerzoo.cli import main as towerzoo_main
from towerzoo.evaluation import mllm_vqa
from towerzoo.evaluation.metrics.vqa_accuracy.vqa_official import normalize_answer
from towerzoo.evaluation.mllm_vqa import (
    MLLMVQAOptions,
    evaluate_mllm_vqa,
    extract_letter,
    load_processor,
    score_multiple_choice,
)
from towerzoo.evaluation.vqa import score

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm-vqa")
    return {
        "model": tiny_llava_ov_manager_folder(root / "model"),
        "vqav2": write_vqav2(root / "vqav2", num_questions=10),
        "mc": write_multiple_choice(root / "mc", num_questions=8),
    }


def _options(setup, tmp_path, data: str = "vqav2", **overrides) -> MLLMVQAOptions:
    values = {
        "model": str(setup["model"]),
        **setup[data],
        "format": "vqav2" if data == "vqav2" else "multiple-choice",
        "output": tmp_path / "results.json",
        "batch_size": 3,
        "num_workers": 0,
        "max_new_tokens": 6,
        **overrides,
    }
    return MLLMVQAOptions(**values)


def _prompt(question: str, post_prompt: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n<image>\n{question}{post_prompt}<|im_end|>\n<|im_start|>assistant\n"


def _generate_one_by_one(model_path, questions: list[tuple[Path, str]], max_new_tokens: int = 6) -> list[str]:
    """Each (image, prompt) answered on its own (no padding) by the folder's model and the fixture's processor."""
    model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=True).eval()
    processor = tiny_llava_processor()
    generations = []
    for image, prompt in questions:
        inputs = processor(images=Image.open(image).convert("RGB"), text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        generations.append(processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return generations


def test_the_processor_is_transformers_llava_onevision_padding_left(setup):
    processor = load_processor(str(setup["model"]))
    assert type(processor) is transformers.LlavaOnevisionProcessor and processor.tokenizer.padding_side == "left"
    config = json.loads((setup["model"] / "config.json").read_text())
    assert processor.image_token == "<image>" and processor.image_token_id == config["image_token_index"]
    saved = json.loads((setup["model"] / "processor_config.json").read_text())
    assert saved["video_processor"]["video_processor_type"] == "LlavaOnevisionVideoProcessor"  # a complete folder
    if not is_torchvision_available():  # why the harness builds it without the video processor here
        with pytest.raises(ImportError, match="Torchvision"):
            transformers.AutoProcessor.from_pretrained(setup["model"])


def test_vqav2_answers_are_greedy_generations_scored_by_the_official_scorer(setup, tmp_path):
    results = evaluate_mllm_vqa(_options(setup, tmp_path, submission=tmp_path / "answers.json"))
    questions = sorted(
        json.loads(setup["vqav2"]["questions"].read_text())["questions"], key=lambda q: q["question_id"]
    )
    images = setup["vqav2"]["images"]
    expected = _generate_one_by_one(
        setup["model"],
        [(images / f"COCO_val2014_{q['image_id']:012d}.jpg", _prompt(q["question"], SHORT)) for q in questions],
    )
    predictions = results["predictions"]
    assert [p["question_id"] for p in predictions] == [q["question_id"] for q in questions]
    assert [p["generation"] for p in predictions] == expected
    assert len(set(expected)) > 3  # the answers depend on the image and question
    assert [p["answer"] for p in predictions] == [normalize_answer(g) for g in expected]

    official = score(tmp_path / "answers.json", setup["vqav2"]["questions"], setup["vqav2"]["annotations"])
    assert results["metrics"]["accuracy"] == official["accuracy"] > 0
    assert results["metrics"]["per_answer_type"] == official["per_answer_type"]
    assert {p["question_id"]: p["accuracy"] for p in predictions} == official["per_question"]

    written = json.loads((tmp_path / "results.json").read_text())
    assert (written["task"], written["dataset"], written["split"]) == ("mllm-vqa", "vqav2", "val2014")
    assert written["num_examples"] == 10
    assert written["protocol"]["example_prompt"] == _prompt(questions[0]["question"], SHORT)
    assert written["protocol"]["post_prompt"] == SHORT and "normalisation" in written["protocol"]["answer_processing"]
    assert written["protocol"]["decoding"] == {"do_sample": False, "num_beams": 1, "max_new_tokens": 6}
    assert written["counts"]["truncated"] == sum(p["truncated"] for p in predictions) > 0
    assert not (tmp_path / "results.json.work").exists()


def test_vqav2_without_annotations_writes_the_submission_file(setup, tmp_path):
    results = evaluate_mllm_vqa(_options(setup, tmp_path, annotations=None, limit=4, answer_processing="none"))
    assert "metrics" not in results
    submission = json.loads(Path(results["submission"]).read_text())
    assert submission == [{"question_id": p["question_id"], "answer": p["generation"]} for p in results["predictions"]]


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_multiple_choice_letters_are_extracted_and_matched(setup, tmp_path, layout):
    data = write_multiple_choice(tmp_path / "data", num_questions=8, layout=layout)
    results = evaluate_mllm_vqa(_options({**setup, "mc": data}, tmp_path, data="mc"))
    items = [json.loads(line) for line in data["questions"].read_text().splitlines()] if layout == "jsonl" else None
    items = items or json.loads(data["questions"].read_text())
    prompts = [
        _prompt("\n".join([i["question"], *(f"{'ABCD'[k]}. {c}" for k, c in enumerate(i["choices"]))]), LETTER)
        for i in items
    ]
    expected = _generate_one_by_one(setup["model"], [(data["images"] / i["image"], p) for i, p in zip(items, prompts)])
    predictions = results["predictions"]
    assert [p["generation"] for p in predictions] == expected
    assert results["protocol"]["example_prompt"] == prompts[0]
    truth = [i["answer"] if isinstance(i["answer"], int) else "ABCD".index(i["answer"].upper()) for i in items]
    assert [p["answer"] for p in predictions] == ["ABCD"[t] for t in truth]
    letters = [extract_letter(g, len(i["choices"])) for g, i in zip(expected, items)]
    assert [p["letter"] for p in predictions] == letters and any(letters)
    correct = [letter == "ABCD"[t] for letter, t in zip(letters, truth)]
    assert [p["correct"] for p in predictions] == correct
    assert results["metrics"] == {
        "accuracy": round(100 * sum(correct) / len(correct), 2),
        "no_letter": letters.count(None),
    }
    assert results["protocol"]["letter_extraction"] == mllm_vqa.LETTER_EXTRACTION
    assert results["dataset"] == "questions" and results["split"] is None


@pytest.mark.parametrize(
    ("generation", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("The answer is C", "C"),
        ("(d)", "D"),
        ("b", "B"),
        ("C. cat", "C"),
        ("I think it is (b)", "B"),  # I is not among four choices
        ("E", None),  # not among the choices
        ("garbage", None),
        ("", None),
    ],
)
def test_extract_letter(generation, letter):
    assert extract_letter(generation, 4) == letter


def test_no_letter_counts_wrong():
    dataset = datasets.Dataset.from_list(
        [
            {"question_id": k, "question": "q", "image": "i.jpg", "choices": ["x", "y", "z", "w"], "answer": answer}
            for k, answer in enumerate("BDA")
        ]
    )
    records = [{"generation": g, "truncated": False} for g in ("B.", "garbage", "(a)")]
    metrics, predictions = score_multiple_choice(dataset, records)
    assert [p["letter"] for p in predictions] == ["B", None, "A"]
    assert metrics == {"accuracy": 66.67, "no_letter": 1}


def test_managers_off_answer_as_transformers_llava_onevision(tmp_path):
    """The same weights as a LLaVA-OV-Manager folder with manager_type="none" and as a plain transformers
    LLaVA-OneVision folder (no remote code) give the same predictions."""
    data = write_multiple_choice(tmp_path / "data", num_questions=6)
    runs = {}
    for name, folder in (
        ("manager", tiny_llava_ov_manager_folder(tmp_path / "manager", seed=1, manager_type="none")),
        ("llava", tiny_llava_onevision_folder(tmp_path / "llava", seed=1)),
    ):
        options = MLLMVQAOptions(
            model=str(folder), **data, format="multiple-choice", output=tmp_path / name / "r.json", num_workers=0
        )
        runs[name] = evaluate_mllm_vqa(options)
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["model_type"] == "llava_onevision"
    assert runs["manager"]["predictions"] == runs["llava"]["predictions"]


def test_killed_run_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    reference = evaluate_mllm_vqa(_options(setup, tmp_path / "reference"))
    loaded = {"batches": 0}
    load_batch = mllm_vqa.prompt_inputs

    def killed_at_the_third_batch(*args):
        loaded["batches"] += 1
        if loaded["batches"] == 3:
            raise KeyboardInterrupt("killed")
        return load_batch(*args)

    options = _options(setup, tmp_path / "resumed")
    monkeypatch.setattr(mllm_vqa, "prompt_inputs", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_mllm_vqa(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_mllm_vqa(options)
    assert resumed["resumed_batches"] == 2
    assert resumed["metrics"] == reference["metrics"] and resumed["predictions"] == reference["predictions"]


def test_two_processes_give_the_single_process_result(setup, tmp_path):
    single = evaluate_mllm_vqa(_options(setup, tmp_path / "single", data="mc"))
    run_eval_in_processes(
        [
            *("mllm-vqa", "--model", str(setup["model"]), "--format", "multiple-choice"),
            *("--questions", str(setup["mc"]["questions"]), "--images", str(setup["mc"]["images"])),
            *("--batch-size", "3", "--num-workers", "0", "--max-new-tokens", "6"),
            *("--output", str(tmp_path / "sharded" / "results.json")),
        ]
    )
    sharded = json.loads((tmp_path / "sharded" / "results.json").read_text())
    assert sharded["config"]["num_processes"] == 2
    assert sharded["metrics"] == single["metrics"] and sharded["predictions"] == single["predictions"]


def _cli_error(capsys, *arguments) -> str:
    """Run `towerzoo eval mllm-vqa …`, expect exit status 2 with one line on stderr, and return that line."""
    code = towerzoo_main(["eval", "mllm-vqa", "--num-workers", "0", *map(str, arguments)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert error.startswith("towerzoo eval mllm-vqa: error: ")
    return error


def test_bad_input_fails_in_one_line(setup, tmp_path, capsys):
    data = write_vqav2(tmp_path / "data", num_questions=6)
    common = ("--model", setup["model"], "--output", tmp_path / "results.json", "--max-new-tokens", "2")
    vqav2 = (*common, "--questions", data["questions"], "--annotations", data["annotations"], "--images")

    missing = sorted(data["images"].iterdir())[0]
    missing.unlink()
    error = _cli_error(capsys, *vqav2, data["images"])
    assert "missing from" in error and missing.name in error and "--skip-missing-images" in error
    assert towerzoo_main(["eval", "mllm-vqa", *map(str, vqav2), str(data["images"]), "--skip-missing-images"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["skipped"] == {"missing_image_questions": 2}
    capsys.readouterr()

    questions = json.loads(data["questions"].read_text())
    del questions["questions"][3]["image_id"]
    (tmp_path / "no-image-id.json").write_text(json.dumps(questions))
    no_image_id = (*common, "--questions", tmp_path / "no-image-id.json", "--images", data["images"])
    assert "question 3 of" in (error := _cli_error(capsys, *no_image_id)) and "has no image_id" in error

    vqa_head = tiny_model_folder(tmp_path / "bridgetower")
    capsys.readouterr()
    error = _cli_error(capsys, *vqav2, data["images"], "--skip-missing-images", "--model", vqa_head)
    assert "towerzoo_bridgetower model without an image-text-to-text class" in error

    items = [{"question": "which animal ?", "choices": ["cat", "dog"], "answer": "A"}]
    (tmp_path / "mc.jsonl").write_text(json.dumps(items[0]) + "\n")
    multiple_choice = (*common, "--format", "multiple-choice", "--questions", tmp_path / "mc.jsonl")
    assert "item 0 of" in (error := _cli_error(capsys, *multiple_choice, "--images", tmp_path)) and "image" in error
    (tmp_path / "mc.jsonl").write_text(json.dumps({**items[0], "image": "a.jpg", "answer": "C"}) + "\n")
    assert "'answer' must be one of the letters A, B" in _cli_error(capsys, *multiple_choice, "--images", tmp_path)
    error = _cli_error(capsys, *vqav2, data["images"], "--prompt-template", "{question}")
    assert "one {image} and one {question}" in error


def test_converted_folder_keeps_the_processor_is_scored_and_carded(setup, tmp_path):
    """`towerzoo convert llava-ov-manager-from-llava-ov` on a LLaVA-OneVision folder that carries its processor (the
    files are copied: loading it here would need torchvision), then `eval mllm-vqa` on the result, then its card."""
    from towerzoo.hub_cards.card import write_card

    source = tiny_llava_onevision_folder(tmp_path / "llava_ov")
    out = tmp_path / "manager"
    assert towerzoo_main(["convert", "llava-ov-manager-from-llava-ov", str(source), str(out)]) == 0
    for name in ("processor_config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    results = evaluate_mllm_vqa(_options({**setup, "model": out}, tmp_path, limit=4))
    assert results["task"] == "mllm-vqa" and "accuracy" in results["metrics"]
    card = write_card(out, [tmp_path / "results.json"]).read_text()
    assert "Visual Question Answering (generative)" in card and "model-index" in card
