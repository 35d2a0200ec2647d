"""Training data: the VQA soft targets on a hand-computed case, the answer vocabulary, the SNLI-VE/NLVR2/Karpathy
loaders, label mapping, the collator's batches, and clear errors for bad files."""

import json

import pytest
from testing_utils import tiny_bridgetower_config

from towerzoo.conversions.bridgetower_folder import build_processor
from towerzoo.training import TrainingError
from towerzoo.training.data import (
    NLVR2_LABELS,
    SNLI_VE_LABELS,
    Collator,
    answer_vocabulary,
    class_label2id,
    load_nlvr2_split,
    load_retrieval_split,
    load_snli_ve_split,
    load_vqav2_split,
    vqa_score,
    vqa_targets,
)

ORIGINAL_SNLI = {"contradiction": 0, "neutral": 1, "entailment": 2}


def test_vqa_soft_scores_follow_the_annotator_counts():
    assert [vqa_score(count) for count in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    # ten answers; "Yes"/"yes."/"yes" normalise to "yes" (4 annotators), "two" and "2" to "2" (2), "blue" is unknown
    answers = ["yes", "Yes", "yes.", "yes", "no", "no", "two", "2", "red", "blue"]
    label2id = {"yes": 0, "no": 1, "2": 2, "red": 3, "cat": 4}
    assert vqa_targets(answers, label2id) == ([0, 1, 2, 3], [1.0, 0.6, 0.6, 0.3])
    assert vqa_targets(["a cat"] * 3, label2id) == ([4], [0.9])  # the article goes


def test_answer_vocabulary_keeps_frequent_majority_answers_in_order():
    majority = ["yes", "no", "Yes", "2", "two", "no", "red"]
    assert answer_vocabulary(majority, min_count=2) == ["yes", "no", "2"]
    assert answer_vocabulary(majority, min_count=1) == ["yes", "no", "2", "red"]


def test_vqav2_split_targets_and_vocabulary(training_data):
    data = training_data["vqav2"]
    dataset, label2id, fingerprint = load_vqav2_split(
        [data["questions"]], [data["annotations"]], [data["images"]], min_answer_count=1
    )
    annotations = sorted(json.loads(data["annotations"].read_text())["annotations"], key=lambda a: a["question_id"])
    assert list(label2id) == list(dict.fromkeys(a["multiple_choice_answer"] for a in annotations))
    first = annotations[0]
    expected = vqa_targets([a["answer"] for a in first["answers"]], label2id)
    assert (dataset[0]["label_ids"], dataset[0]["label_scores"]) == (expected[0], pytest.approx(expected[1]))
    assert fingerprint["examples"] == len(dataset) == 16 and len(fingerprint["files"][0]["sha256"]) == 64

    # a given vocabulary: questions with none of its answers are left out and counted
    dataset, _, fingerprint = load_vqav2_split(
        [data["questions"]], [data["annotations"]], [data["images"]], label2id={"yes": 0}
    )
    assert fingerprint["questions_without_known_answer"] == 16 - len(dataset)
    assert all(ids == [0] for ids in dataset["label_ids"])
    with pytest.raises(TrainingError, match="none of the 16 questions has an annotator answer"):
        load_vqav2_split([data["questions"]], [data["annotations"]], [data["images"]], label2id={"zebra": 0})
    with pytest.raises(TrainingError, match="lower --min-answer-count"):
        load_vqav2_split([data["questions"]], [data["annotations"]], [data["images"]], min_answer_count=100)
    with pytest.raises(TrainingError, match="as many --annotations and --images as --questions"):
        load_vqav2_split([data["questions"]] * 2, [data["annotations"]], [data["images"]])


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from testing_utils import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return build_processor(tokenizer, tiny_bridgetower_config(), max_text_length=30)


def test_collator_batches_each_task(training_data, processor):
    data = training_data["vqav2"]
    dataset, label2id, _ = load_vqav2_split([data["questions"]], [data["annotations"]], [data["images"]], None, 1)
    batch = Collator(processor, "vqav2", num_labels=len(label2id))([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 30)  # padded to max_text_length, as the original pads
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["labels"].shape == (2, len(label2id))
    assert batch["labels"][0, dataset[0]["label_ids"]].tolist() == pytest.approx(dataset[0]["label_scores"])
    assert batch["labels"][0].count_nonzero() == len(dataset[0]["label_ids"])
    longest = Collator(processor, "vqav2", len(label2id), text_padding="longest")([dataset[0]])
    assert longest["input_ids"].shape[1] < 30

    nlvr2 = training_data["nlvr2"]
    pairs, _ = load_nlvr2_split(nlvr2["annotations"], nlvr2["images"], {"False": 0, "True": 1})
    batch = Collator(processor, "nlvr2")([pairs[0], pairs[1], pairs[2]])
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32) and batch["input_ids"].shape[0] == 3
    assert batch["labels"].tolist() == pairs["label"][:3]

    retrieval = training_data["retrieval"]
    captions, _ = load_retrieval_split(retrieval["karpathy"], retrieval["images"], ["test"])
    batch = Collator(processor, "retrieval")([captions[i] for i in range(4)])
    assert batch["image_ids"].tolist() == [0, 0, 0, 1] and "labels" not in batch


def test_snli_ve_examples_and_labels(training_data):
    data = training_data["snli-ve"]
    dataset, fingerprint = load_snli_ve_split(data["annotations"], data["images"], ORIGINAL_SNLI)
    lines = [json.loads(line) for line in data["annotations"].read_text().splitlines()]
    assert dataset["text"] == [line["sentence2"] for line in lines]
    assert dataset["label"] == [ORIGINAL_SNLI[line["gold_label"]] for line in lines]
    assert dataset["image"][0].endswith(f"{lines[0]['Flickr30K_ID']}.jpg") and fingerprint["examples"] == 16


def test_classifier_labels_come_from_the_head_or_the_original_order():
    assert class_label2id(None, SNLI_VE_LABELS, {"neutral"}) == ORIGINAL_SNLI
    assert class_label2id({0: "LABEL_0", 1: "LABEL_1"}, NLVR2_LABELS, {"True"}) == {"False": 0, "True": 1}
    named = {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert class_label2id(named, SNLI_VE_LABELS, {"entailment"})["entailment"] == 0
    with pytest.raises(TrainingError, match=r"labels \['maybe'\] that the classifier's labels"):
        class_label2id(named, SNLI_VE_LABELS, {"neutral", "maybe"})


def test_nlvr2_pairs_are_found_in_subfolders(training_data):
    data = training_data["nlvr2"]
    dataset, _ = load_nlvr2_split(data["annotations"], data["images"], {"False": 0, "True": 1})
    first = json.loads(data["annotations"].read_text().splitlines()[0])
    prefix = first["identifier"].rsplit("-", 1)[0]
    assert [p.rsplit("/", 1)[1] for p in dataset["images"][0]] == [f"{prefix}-img0.png", f"{prefix}-img1.png"]
    assert f"/train/{first['directory']}/" in dataset["images"][0][0]
    assert dataset["label"][0] == int(first["label"] == "True")


def test_bad_files_fail_clearly(tmp_path, training_data):
    snli = training_data["snli-ve"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"Flickr30K_ID": "1", "sentence2": "a cat"}) + "\n")
    with pytest.raises(TrainingError, match=r"line 1 has no gold_label .*needs Flickr30K_ID, sentence2, gold_label"):
        load_snli_ve_split(broken, snli["images"], ORIGINAL_SNLI)
    broken.write_text("{not json\n")
    with pytest.raises(TrainingError, match="line 1 is not JSON"):
        load_snli_ve_split(broken, snli["images"], ORIGINAL_SNLI)
    with pytest.raises(TrainingError, match="does not exist"):
        load_snli_ve_split(tmp_path / "absent.jsonl", snli["images"], ORIGINAL_SNLI)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"Flickr30K_ID": "1", "sentence2": "a", "gold_label": "-"}) + "\n")
    with pytest.raises(TrainingError, match=r"labels \['-'\]"):
        load_snli_ve_split(unknown, snli["images"], ORIGINAL_SNLI)

    missing = tmp_path / "missing.jsonl"
    lines = snli["annotations"].read_text().splitlines()
    missing.write_text("\n".join([*lines[:3], lines[3].replace('"Flickr30K_ID": "', '"Flickr30K_ID": "9')]))
    with pytest.raises(TrainingError, match="1 sentences refer to images missing from .*--skip-missing-images"):
        load_snli_ve_split(missing, snli["images"], ORIGINAL_SNLI)
    dataset, fingerprint = load_snli_ve_split(missing, snli["images"], ORIGINAL_SNLI, skip_missing_images=True)
    assert len(dataset) == 3 and fingerprint["missing_image_examples"] == 1

    nlvr2 = training_data["nlvr2"]
    with pytest.raises(TrainingError, match="16 sentences refer to images missing from"):
        load_nlvr2_split(nlvr2["annotations"], tmp_path, {"False": 0, "True": 1})
