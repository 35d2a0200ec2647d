"""VQAv2 accuracy: the per-question score, the summaries and their rounding, the `vqa_accuracy` evaluate metric
loaded by path (offline), and the scorer for official results/questions/annotations files. Expected values are
worked out by hand from the official rules."""

import json
import os
import subprocess
import sys

import evaluate
import pytest

from towerzoo.evaluation.metrics import metric_path
from towerzoo.evaluation.metrics.vqa_accuracy.vqa_official import python2_round, question_accuracy, summarize
from towerzoo.evaluation.vqa import VQAResultsError, format_report, score

OTHERS = ["dog", "cow", "hen", "pig", "rat", "owl", "elk", "ant", "bee", "yak"]


def answers_with(matches: int) -> list[str]:
    """Ten ground-truth answers: `matches` times "cat", the rest all different."""
    return ["cat"] * matches + OTHERS[: 10 - matches]


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        (0, 0.0),
        # Each of the 9 non-matching answers sees 1 match among the other nine (1/3); the matching one sees 0.
        (1, 9 * (1 / 3) / 10),
        # The 2 matching answers see 1 other match (1/3), the 8 others see 2 (2/3).
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        # The 3 matching answers see 2 (2/3), the 7 others see 3 (1).
        (3, (3 * (2 / 3) + 7 * 1) / 10),
        # Everyone sees at least 3.
        (4, 1.0),
        (7, 1.0),
    ],
)
def test_ten_choose_nine_averaging(matches, expected):
    assert question_accuracy("cat", answers_with(matches)) == pytest.approx(expected)


def test_averaging_values_are_the_familiar_ones():
    assert [round(question_accuracy("cat", answers_with(m)), 12) for m in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_all_identical_answers_are_compared_raw():
    # Ten identical answers: no normalisation at all, for the answers or the prediction.
    assert question_accuracy("Two", ["2"] * 10) == 0.0
    assert question_accuracy("two", ["2"] * 10) == 0.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0
    assert question_accuracy("yes", ["yes."] * 10) == 0.0
    assert question_accuracy("2", ["2"] * 10) == 1.0
    # ... but tabs, newlines and outer spaces are still cleaned.
    assert question_accuracy(" 2\n", ["2"] * 10) == 1.0
    assert question_accuracy("2", ["2\t"] * 10) == 1.0


def test_differing_answers_normalise_answers_and_prediction():
    # Nine "2" and one "3": now "Two" becomes "2" and matches nine answers.
    assert question_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0
    # Answers that differ only before normalisation ("yes." vs "yes") trigger it, and then all read "yes".
    assert question_accuracy("YES", ["yes."] * 9 + ["yes"]) == 1.0
    # The ground-truth answers are normalised too: three "The cat" become "cat".
    assert question_accuracy("cat", ["The cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert question_accuracy("the red one", ["red 1"] * 3 + ["blue"] * 7) == pytest.approx(0.9)


def test_keys_reproduce_whole_dict_comparison():
    # Answers 0 and 1 are the same dict (same text and same key): when one is left out, so is the other.
    answers = ["x", "x", "x"] + ["y"] * 7
    keys = [1, 1, 3, 4, 5, 6, 7, 8, 9, 10]
    # Answers 0 and 1 see one other "x" (1/3), answer 2 sees two (2/3), the seven "y" see three (1).
    assert question_accuracy("x", answers, keys=keys) == pytest.approx((2 * (1 / 3) + 2 / 3 + 7) / 10)
    # With distinct keys (the default) answers 0-2 each see two (2/3).
    assert question_accuracy("x", answers) == pytest.approx((3 * (2 / 3) + 7) / 10)


def test_bad_inputs():
    with pytest.raises(TypeError, match="prediction must be a string"):
        question_accuracy(None, ["a"] * 10)
    with pytest.raises(TypeError, match="must be strings"):
        question_accuracy("a", [2] * 10)
    with pytest.raises(ValueError, match="at least one"):
        question_accuracy("a", [])
    with pytest.raises(ValueError, match="no questions"):
        summarize([])
    with pytest.raises(ValueError, match="2 types for 3 questions"):
        summarize([1.0, 0.0, 0.0], answer_types=["number", "other"])


def test_summary_per_type_and_rounding():
    result = summarize([1.0, 0.3, 0.6], answer_types=["yes/no", "number", "other"], question_types=["is", "how", "is"])
    # 100 * 1.9 / 3 = 63.333...
    assert result["accuracy"] == 63.33
    assert result["per_answer_type"] == {"yes/no": 100.0, "number": 30.0, "other": 60.0}
    # "is": (1.0 + 0.6) / 2
    assert result["per_question_type"] == {"is": 80.0, "how": 30.0}


def test_rounding_is_python_2s():
    # One right answer out of 32 questions: 100 / 32 = 3.125 exactly; Python 2 rounds the tie away from zero
    # (3.13), Python 3's round() would give 3.12.
    assert summarize([1.0] + [0.0] * 31)["accuracy"] == 3.13
    # 100 / 160 = 0.625 exactly.
    assert summarize([1.0] + [0.0] * 159)["accuracy"] == 0.63
    assert python2_round(0.125) == 0.13
    # 2.675 is stored as 2.67499999...: not a tie, rounds down in both Pythons.
    assert python2_round(2.675) == 2.67
    assert python2_round(63.3333333) == 63.33


# --- the evaluate metric -------------------------------------------------------------------------------------------

# Three questions, by hand: "Two" against ten raw "2" scores 0; "yes" matches 2 of 10 (0.6); "the red one" becomes
# "red 1" and matches 3 of 10 (0.9). Overall 100 * 1.5 / 3 = 50.
PREDICTIONS = ["Two", "yes", "the red one"]
REFERENCES = [["2"] * 10, ["yes"] * 2 + ["no"] * 8, ["red 1"] * 3 + ["blue"] * 7]
ANSWER_TYPES = ["number", "yes/no", "other"]


@pytest.fixture(scope="module")
def vqa_metric():
    return evaluate.load(metric_path("vqa_accuracy"))


def test_metric_compute(vqa_metric):
    result = vqa_metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, answer_types=ANSWER_TYPES, return_per_question=True
    )
    assert result == {
        "accuracy": 50.0,
        "per_answer_type": {"number": 0.0, "yes/no": 60.0, "other": 90.0},
        "per_question": [0.0, 60.0, 90.0],
    }


def test_metric_add_batch(vqa_metric):
    for prediction, answers in zip(PREDICTIONS, REFERENCES, strict=True):
        vqa_metric.add_batch(predictions=[prediction], references=[answers])
    assert vqa_metric.compute() == {"accuracy": 50.0}


def test_metric_loads_offline_in_a_fresh_process(tmp_path):
    """`evaluate.load(<folder>)` with every Hugging Face offline switch on, an empty module cache and any HTTP
    request sent to a dead proxy."""
    script = (
        "import json, sys, evaluate\n"
        "vqa = evaluate.load(sys.argv[1])\n"
        "recall = evaluate.load(sys.argv[2])\n"
        "print(json.dumps([\n"
        "    vqa.compute(predictions=['two'], references=[['2'] * 9 + ['3']]),\n"
        "    recall.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[0, 1]),\n"
        "]))\n"
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, metric_path("vqa_accuracy"), metric_path("retrieval_recall")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    vqa, recall = json.loads(completed.stdout.strip().splitlines()[-1])
    assert vqa == {"accuracy": 100.0}
    # Both texts rank the wrong image first, both images rank the wrong text first: every R@1 is 0, every R@5/R@10
    # is 100 (two candidates), r_mean = 4 * 100 / 6.
    assert recall["text_to_image_r1"] == 0.0
    assert recall["image_to_text_r1"] == 0.0
    assert recall["text_to_image_r10"] == 100.0
    assert recall["r_mean"] == pytest.approx(400 / 6)
    # The metric's code was copied into the fresh cache, the rules file along with the script.
    copied = {path.name for path in (tmp_path / "modules").rglob("*.py")}
    assert {"vqa_accuracy.py", "vqa_official.py", "retrieval_recall.py", "recall.py"} <= copied


# --- official files ------------------------------------------------------------------------------------------------


def _answers(*texts):
    return [{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i, text in enumerate(texts)]


QUESTIONS = {
    "info": {},
    "task_type": "Open-Ended",
    "data_type": "mscoco",
    "data_subtype": "val2014",
    "license": {},
    "questions": [
        {"image_id": 1, "question": "How many dogs?", "question_id": 10},
        {"image_id": 1, "question": "Is it sunny?", "question_id": 11},
        {"image_id": 2, "question": "What color is the car?", "question_id": 12},
        {"image_id": 2, "question": "How many cars?", "question_id": 13},
    ],
}
ANNOTATIONS = {
    "annotations": [
        {
            "question_id": 10,
            "image_id": 1,
            "question_type": "how many",
            "answer_type": "number",
            "answers": _answers(*["2"] * 9, "3"),
            "multiple_choice_answer": "2",
        },
        {
            "question_id": 11,
            "image_id": 1,
            "question_type": "is it",
            "answer_type": "yes/no",
            "answers": _answers(*["yes"] * 10),
            "multiple_choice_answer": "yes",
        },
        {
            "question_id": 12,
            "image_id": 2,
            "question_type": "what color is the",
            "answer_type": "other",
            "answers": _answers("red", "red", *["blue"] * 8),
            "multiple_choice_answer": "blue",
        },
        {
            "question_id": 13,
            "image_id": 2,
            "question_type": "how many",
            "answer_type": "number",
            "answers": _answers("1", *["2"] * 9),
            "multiple_choice_answer": "2",
        },
    ]
}
# By hand: q10 "two" -> "2" matches nine answers: 1.0; q11 "Yes" against ten raw "yes": 0.0; q12 "Red!" -> "red"
# matches two: 0.6; q13 "1" matches one: 0.3. Overall 100 * 1.9 / 4 = 47.5; number (1.0 + 0.3) / 2 = 65%.
RESULTS = [
    {"question_id": 12, "answer": "Red!"},
    {"question_id": 10, "answer": "two"},
    {"question_id": 11, "answer": "Yes"},
    {"question_id": 13, "answer": "1"},
]


@pytest.fixture
def official_files(tmp_path):
    def write(results=RESULTS, questions=QUESTIONS, annotations=ANNOTATIONS):
        paths = []
        for name, content in (("results", results), ("questions", questions), ("annotations", annotations)):
            path = tmp_path / f"{name}.json"
            path.write_text(content if isinstance(content, str) else json.dumps(content))
            paths.append(path)
        return paths

    return write


def test_score_official_files(official_files):
    result = score(*official_files())
    assert result["accuracy"] == 47.5
    assert result["per_answer_type"] == {"number": 65.0, "yes/no": 0.0, "other": 60.0}
    assert result["per_question_type"] == {"how many": 65.0, "is it": 0.0, "what color is the": 60.0}
    assert result["per_question"] == {10: 100.0, 11: 0.0, 12: 60.0, 13: 30.0}
    assert result["num_questions"] == 4
    assert format_report(result) == (
        "Overall accuracy: 47.50\nPer answer type:\n  yes/no: 0.00\n  number: 65.00\n  other: 60.00"
    )


def test_score_accepts_parsed_json():
    assert score(RESULTS, QUESTIONS, ANNOTATIONS)["accuracy"] == 47.5


def test_missing_predictions_are_named(official_files):
    with pytest.raises(VQAResultsError, match=r"2 annotated question\(s\) without a prediction: 11, 13"):
        score(*official_files(results=RESULTS[:2]))


def test_unknown_question_ids_are_named(official_files):
    with pytest.raises(VQAResultsError, match=r"not in the annotations: 99") as error:
        score(*official_files(results=[*RESULTS, {"question_id": 99, "answer": "2"}]))
    assert "without a prediction" not in str(error.value)


def test_string_question_ids_get_a_hint(official_files):
    results = [{"question_id": str(entry["question_id"]), "answer": entry["answer"]} for entry in RESULTS]
    with pytest.raises(VQAResultsError, match="compared as JSON values"):
        score(*official_files(results=results))


def test_repeated_question_last_answer_counts(official_files):
    # As in the official loader: "3" first (alone it would score 0.3), then "two" (1.0), which wins.
    results = [{"question_id": 10, "answer": "3"}, *RESULTS]
    with pytest.warns(UserWarning, match="more than once"):
        result = score(*official_files(results=results))
    assert result["per_question"][10] == 100.0


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("results", "[{", "results file .* is not valid JSON"),
        ("annotations", "{]", "annotations file .* is not valid JSON"),
        ("results", {"question_id": 10, "answer": "2"}, "must be an array"),
        ("results", [{"question_id": 10, "answer": 2}], "no string 'answer'"),
        ("results", [{"answer": "2"}], "no integer or string 'question_id'"),
        ("annotations", {"questions": []}, 'object with an "annotations" array'),
        ("questions", {"annotations": []}, 'object with a "questions" array'),
    ],
)
def test_malformed_files(official_files, which, content, message):
    with pytest.raises(VQAResultsError, match=message):
        score(*official_files(**{which: content}))


def test_missing_file(tmp_path):
    with pytest.raises(VQAResultsError, match="does not exist"):
        score(tmp_path / "nope.json", QUESTIONS, ANNOTATIONS)


def test_questions_from_another_split(official_files):
    questions = {**QUESTIONS, "questions": QUESTIONS["questions"][:3]}
    with pytest.raises(VQAResultsError, match=r"not in the questions file \(13\)"):
        score(*official_files(questions=questions))


def test_multiple_choice_answers_must_be_a_choice(official_files):
    questions = {
        **QUESTIONS,
        "task_type": "Multiple Choice",
        "questions": [{**q, "multiple_choices": ["2", "yes", "red", "1"]} for q in QUESTIONS["questions"]],
    }
    with pytest.raises(VQAResultsError, match=r"not among the question's 'multiple_choices' \(12, 10, 11\)"):
        score(*official_files(questions=questions))
