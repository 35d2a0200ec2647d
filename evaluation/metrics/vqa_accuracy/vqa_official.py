"""VQAv2 accuracy as the official evaluation computes it (GT-Vision-Lab/VQA, master a013f00, 2021-03-11,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py`), quirks included.

Standard library only: this file sits next to the `vqa_accuracy` evaluate script, which imports it as a sibling
(`evaluate.load` copies it along), and `towerzoo.evaluation.vqa` imports it for the JSON-file scorer.

What the official script does, and so what this file does:
- Every answer (the ten ground-truth ones and the prediction) gets `\\n` and `\\t` replaced by spaces, then `strip()`.
- Only if the ground-truth answers are not all identical (after that cleaning) do the ground-truth answers AND the
  prediction go through the punctuation rule and then the digit/article/contraction rule; if they are all identical,
  raw strings are compared (ten "2" against the prediction "Two" scores 0).
- Punctuation: each character of `PUNCTUATION` is deleted everywhere if, anywhere in the (unmodified) text, it touches
  a space or the text contains a comma between two digits; otherwise it is replaced by a space everywhere.
  Periods are handled by a regex meant as "a period not between digits" whose look-behind is mistyped (`(?!<=\\d)` is
  a look-ahead for "<=" and a digit), so it deletes every period that is not followed by a digit; and `re.sub`
  receives `re.UNICODE` (= 32) as its `count`, so at most 32 periods are deleted.
- Digits/articles/contractions: lower-case, split on whitespace, number words "none"/"zero".."ten" become digits,
  "a"/"an"/"the" are dropped, then whole words found in `CONTRACTIONS` are replaced, joined with single spaces.
- Per question: for each ground-truth answer, min(1, (number of the OTHER answers equal to the prediction) / 3);
  the question's accuracy is the mean of these. The official drops "the other answers" by comparing whole answer
  dicts (text after processing, confidence, id); `question_accuracy(..., keys=...)` reproduces that, and by default
  every answer is distinct (the case for the official files, whose answer ids are 1..10).
- Overall / per answer type / per question type: `round(100 * mean, 2)` under Python 2 (the official script is
  Python 2): ties round away from zero, so 3.125 becomes 3.13, where Python 3's `round` gives 3.12.
  Python 2 regexes without flags match ASCII digits only for `\\d`, and Python 2's `lower()` maps one character to
  one character; both are reproduced. Differences between Python 2's Unicode database (5.2) and Python 3's
  (e.g. which rare characters count as whitespace) are not.
"""

import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")

# The official table, entry for entry ("word>replacement"; apostrophes are ASCII). Its capitalised keys ("Im",
# "Ive", "Id've", "I'dve") can never match (words are lower-cased first), and "somebody'd" maps to "somebodyd":
# both are the official behaviour.
CONTRACTIONS = dict(
    entry.split(">")
    for entry in """
    aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've
    couldnt've>couldn't've didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've
    hadn'tve>hadn't've hasnt>hasn't havent>haven't hed>he'd hed've>he'd've he'dve>he'd've hes>he's howd>how'd
    howll>how'll hows>how's Id've>I'd've I'dve>I'd've Im>I'm Ive>I've isnt>isn't itd>it'd itd've>it'd've
    it'dve>it'd've itll>it'll let's>let's maam>ma'am mightnt>mightn't mightnt've>mightn't've
    mightn'tve>mightn't've mightve>might've mustnt>mustn't mustve>must've neednt>needn't notve>not've
    oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at 'ows'at>'ow's'at 'ow'sat>'ow's'at shant>shan't
    shed've>she'd've she'dve>she'd've she's>she's shouldve>should've shouldnt>shouldn't
    shouldnt've>shouldn't've shouldn'tve>shouldn't've somebody'd>somebodyd somebodyd've>somebody'd've
    somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's someoned>someone'd
    someoned've>someone'd've someone'dve>someone'd've someonell>someone'll someones>someone's
    somethingd>something'd somethingd've>something'd've something'dve>something'd've somethingll>something'll
    thats>that's thered>there'd thered've>there'd've there'dve>there'd've therere>there're theres>there's
    theyd>they'd theyd've>they'd've they'dve>they'd've theyll>they'll theyre>they're theyve>they've twas>'twas
    wasnt>wasn't wed've>we'd've we'dve>we'd've weve>we've werent>weren't whatll>what'll whatre>what're
    whats>what's whatve>what've whens>when's whered>where'd wheres>where's whereve>where've whod>who'd
    whod've>who'd've who'dve>who'd've wholl>who'll whos>who's whove>who've whyll>why'll whyre>why're whys>why's
    wont>won't wouldve>would've wouldnt>wouldn't wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all
    yall'll>y'all'll y'allll>y'all'll yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd
    youd've>you'd've you'dve>you'd've youll>you'll youre>you're youve>you've
    """.split()
)

# re.ASCII: Python 2 patterns without flags match only 0-9 for \d.
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)", re.ASCII)
# Kept as the official wrote it: "(?!<=\d)" is a look-ahead, not the intended look-behind "(?<!\d)".
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
# The official calls `periodStrip.sub("", text, re.UNICODE)`: the flag lands in `count`.
PERIOD_DELETION_LIMIT = int(re.UNICODE)


def clean_whitespace(text: str) -> str:
    """Tabs and newlines to spaces, then strip: applied to every answer before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation rule (see the module docstring), periods included."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The condition looks at the text as it came in, not at `out`.
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=PERIOD_DELETION_LIMIT)


def _python2_lower(text: str) -> str:
    """`unicode.lower()` of Python 2: one character to one character (Python 3 maps "İ" to two characters and
    lower-cases a word-final "Σ" to "ς")."""
    if text.isascii():
        return text.lower()
    return "".join("i" if char == "\u0130" else char.lower() for char in text)


def process_digit_article(text: str) -> str:
    """Lower-case, number words to digits, drop articles, expand contractions, single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in _python2_lower(text).split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The full official normalisation of one (whitespace-cleaned) answer: punctuation, then digits/articles."""
    return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, answers: Sequence[str], keys: Sequence | None = None) -> float:
    """Accuracy in [0, 1] of one prediction against a question's ground-truth answers (ten in VQAv2).

    `keys` (one per answer) are what else the official compares when it leaves "this" answer out (it compares whole
    answer dicts: an answer whose processed text and key both equal this one's is left out too); by default every
    answer is distinct.
    """
    if isinstance(prediction, bytes) or not isinstance(prediction, str):
        raise TypeError(f"a prediction must be a string, got {prediction!r}")
    if len(answers) == 0:
        raise ValueError("a question needs at least one ground-truth answer")
    if not all(isinstance(answer, str) for answer in answers):
        raise TypeError(f"ground-truth answers must be strings, got {list(answers)!r}")
    answers = [clean_whitespace(answer) for answer in answers]
    prediction = clean_whitespace(prediction)
    if len(set(answers)) > 1:
        answers = [normalize_answer(answer) for answer in answers]
        prediction = normalize_answer(prediction)
    records = list(zip(answers, range(len(answers)) if keys is None else keys, strict=True))
    per_answer = []
    for record in records:
        matches = sum(1 for other in records if other != record and other[0] == prediction)
        per_answer.append(min(1, float(matches) / 3))
    return float(sum(per_answer)) / len(per_answer)


def python2_round(value: float, digits: int = 2) -> float:
    """`round(value, digits)` as Python 2.7 computes it: correctly rounded, ties away from zero."""
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))


def percent(accuracies: Sequence[float]) -> float:
    """The official summary of per-question accuracies: round(100 * mean, 2), summed in the order given."""
    return python2_round(100 * float(sum(accuracies)) / len(accuracies))


def summarize(
    accuracies: Sequence[float], answer_types: Sequence[str] | None = None, question_types: Sequence[str] | None = None
) -> dict:
    """Overall accuracy in percent and, when types are given, the same per answer type and per question type."""
    if len(accuracies) == 0:
        raise ValueError("no questions to score")
    result = {"accuracy": percent(accuracies)}
    for name, types in (("per_answer_type", answer_types), ("per_question_type", question_types)):
        if types is None:
            continue
        if len(types) != len(accuracies):
            raise ValueError(f"{name}: {len(types)} types for {len(accuracies)} questions")
        groups: dict[str, list[float]] = {}
        for kind, accuracy in zip(types, accuracies, strict=True):
            groups.setdefault(kind, []).append(accuracy)
        result[name] = {kind: percent(group) for kind, group in groups.items()}
    return result
