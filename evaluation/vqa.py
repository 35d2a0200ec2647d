"""Scoring an official VQAv2 results file against the official question and annotation JSONs, as the official
evaluation (GT-Vision-Lab/VQA master a013f00) does: same checks on the results, same accuracy, same rounding.

    result = score("results.json", "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json")
    print(format_report(result))

The scoring rules are in `metrics/vqa_accuracy/vqa_official.py`, shared with the `vqa_accuracy` evaluate metric.
"""

import json
import os
import warnings
from pathlib import Path

from .metrics.vqa_accuracy.vqa_official import python2_round, question_accuracy, summarize

ANSWER_TYPES = ("yes/no", "number", "other")
_SHOWN = 10  # ids named in an error message


class VQAResultsError(ValueError):
    """A results, questions or annotations file that cannot be scored; the message says what is wrong and where."""


def _load(source, what: str):
    """JSON from a path, or an already parsed object as is."""
    if not isinstance(source, str | os.PathLike):
        return source
    path = Path(source)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VQAResultsError(f"the {what} file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VQAResultsError(f"the {what} file {path} is not valid JSON: {error}") from None


def _some(ids: list) -> str:
    shown = ", ".join(repr(qid) for qid in ids[:_SHOWN])
    return shown + (f", … ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def _question_id(entry: dict, where: str):
    qid = entry.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        raise VQAResultsError(f"{where} has no integer or string 'question_id': {json.dumps(entry)[:200]}")
    return qid


def _annotations_by_id(annotations) -> dict:
    """{question id: annotation} in file order (the order the official script scores and sums in)."""
    entries = annotations.get("annotations") if isinstance(annotations, dict) else None
    if not isinstance(entries, list):
        raise VQAResultsError('the annotations JSON must be an object with an "annotations" array')
    by_id = {}
    for index, entry in enumerate(entries):
        where = f"annotation {index}"
        if not isinstance(entry, dict):
            raise VQAResultsError(f"{where} is not an object")
        qid = _question_id(entry, where)
        if qid in by_id:
            raise VQAResultsError(f"the annotations list question id {qid!r} twice")
        answers = entry.get("answers")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(answer, dict) and isinstance(answer.get("answer"), str) for answer in answers)
        ):
            raise VQAResultsError(f"{where} (question {qid!r}) needs an 'answers' list of objects with an 'answer'")
        for field in ("answer_type", "question_type"):
            if not isinstance(entry.get(field), str):
                raise VQAResultsError(f"{where} (question {qid!r}) has no string '{field}'")
        by_id[qid] = entry
    if not by_id:
        raise VQAResultsError("the annotations JSON has no annotations")
    return by_id


def _questions_by_id(questions) -> dict:
    entries = questions.get("questions") if isinstance(questions, dict) else None
    if not isinstance(entries, list):
        raise VQAResultsError('the questions JSON must be an object with a "questions" array')
    by_id = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise VQAResultsError(f"question {index} is not an object")
        by_id[_question_id(entry, f"question {index}")] = entry
    return by_id


def _predictions_by_id(results) -> dict:
    """{question id: answer}; for a question answered twice the last answer counts, as in the official script."""
    if not isinstance(results, list):
        raise VQAResultsError('the results JSON must be an array of {"question_id": ..., "answer": ...} objects')
    answers, repeated = {}, []
    for index, entry in enumerate(results):
        where = f"result {index}"
        if not isinstance(entry, dict):
            raise VQAResultsError(f"{where} is not an object: {json.dumps(entry)[:200]}")
        qid = _question_id(entry, where)
        if not isinstance(entry.get("answer"), str):
            raise VQAResultsError(f"{where} (question {qid!r}) has no string 'answer': {json.dumps(entry)[:200]}")
        if qid in answers:
            repeated.append(qid)
        answers[qid] = entry["answer"]
    if repeated:
        warnings.warn(
            f"the results answer {len(repeated)} question(s) more than once ({_some(repeated)}); as in the official "
            "evaluation, the last answer for each is scored",
            stacklevel=3,
        )
    return answers


def score(predictions_json, questions_json, annotations_json) -> dict:
    """Score an official results file (`[{"question_id", "answer"}]`) against the official questions and
    annotations JSONs. Each argument is a path or the already parsed JSON.

    Returns {"accuracy": overall %, "per_answer_type": {type: %}, "per_question_type": {type: %},
    "per_question": {question id: %}, "num_questions": n}; percentages rounded to two decimals as the official
    script rounds them. Raises `VQAResultsError` when the results do not cover exactly the annotated questions (the
    official script asserts that too), and for malformed files.
    """
    annotated = _annotations_by_id(_load(annotations_json, "annotations"))
    questions_file = _load(questions_json, "questions")
    questions = _questions_by_id(questions_file)
    predicted = _predictions_by_id(_load(predictions_json, "results"))

    not_asked = [qid for qid in annotated if qid not in questions]
    if not_asked:
        raise VQAResultsError(
            f"{len(not_asked)} annotated question(s) are not in the questions file ({_some(not_asked)}): "
            "are the questions and annotations files of the same split?"
        )
    unknown = [qid for qid in predicted if qid not in annotated]
    missing = [qid for qid in annotated if qid not in predicted]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} prediction(s) for question ids not in the annotations: {_some(unknown)}")
        if missing:
            problems.append(f"{len(missing)} annotated question(s) without a prediction: {_some(missing)}")
        if {type(qid) for qid in predicted} != {type(qid) for qid in annotated}:
            problems.append('question ids are compared as JSON values: "42" (a string) is not 42')
        raise VQAResultsError(
            "the results must answer exactly the annotated questions, as the official evaluation requires; "
            + "; ".join(problems)
        )
    if questions_file.get("task_type") == "Multiple Choice":
        invalid = [
            qid for qid, answer in predicted.items() if answer not in questions[qid].get("multiple_choices", ())
        ]
        if invalid:
            raise VQAResultsError(
                f"multiple-choice task: {len(invalid)} predicted answer(s) are not among the question's "
                f"'multiple_choices' ({_some(invalid)})"
            )

    accuracies, per_question = [], {}
    for qid, annotation in annotated.items():
        answers = annotation["answers"]
        # The official leaves "this" answer out by comparing whole answer dicts: the other fields are part of it.
        keys = [tuple(sorted((k, v) for k, v in answer.items() if k != "answer")) for answer in answers]
        accuracy = question_accuracy(predicted[qid], [answer["answer"] for answer in answers], keys=keys)
        accuracies.append(accuracy)
        per_question[qid] = python2_round(100 * accuracy)
    result = summarize(
        accuracies,
        answer_types=[annotation["answer_type"] for annotation in annotated.values()],
        question_types=[annotation["question_type"] for annotation in annotated.values()],
    )
    return {**result, "per_question": per_question, "num_questions": len(accuracies)}


def format_report(result: dict) -> str:
    """Overall and per-answer-type accuracy in percent with two decimals, the numbers the official script prints."""
    lines = [f"Overall accuracy: {result['accuracy']:.2f}", "Per answer type:"]
    per_type = result.get("per_answer_type", {})
    ordered = [kind for kind in ANSWER_TYPES if kind in per_type] + sorted(set(per_type) - set(ANSWER_TYPES))
    lines += [f"  {kind}: {per_type[kind]:.2f}" for kind in ordered]
    return "\n".join(lines)
