"""The official VQAv2 answer normalisation, rule by rule, with expectations worked out by hand from the rules of
GT-Vision-Lab/VQA master a013f00 (`vqaEval.py`)."""

import pytest

from towerzoo.evaluation.metrics.vqa_accuracy.vqa_official import (
    clean_whitespace,
    normalize_answer,
    process_digit_article,
    process_punctuation,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\tyes\n", "yes"),
        ("yes\tno", "yes no"),
        ("red\nblue ", "red blue"),
        ("  2  ", "2"),
    ],
)
def test_whitespace(text, expected):
    assert clean_whitespace(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes/no", "yes no"),  # inside a word: replaced by a space
        ("yes /no", "yes no"),  # touches a space: deleted
        ("a-b - c", "ab  c"),  # one "-" touches a space, so every "-" is deleted, even the one inside "a-b"
        ("hi!", "hi "),  # at the end but not touching a space: replaced by a space
        ("hi! you", "hi you"),
        ("(3)", " 3 "),
        ("x?y", "x y"),
        ("red,blue", "red blue"),
        ("red, blue", "red blue"),
        ("5,", "5 "),  # a comma after a digit but not between two digits
        ("1,000", "1000"),  # a comma between digits: deleted
        ("1,000 (m)", "1000 m"),  # ... and then every mark in the text is deleted, not only commas
        ("it's 10:30", "it's 10:30"),  # the apostrophe and the colon are not in the list
        ("a#b*c&d", "a#b*c&d"),  # nor are #, * and &
    ],
)
def test_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.5", "2.5"),  # followed by a digit: kept
        (".5", ".5"),
        ("1.5.", "1.5"),
        ("end.", "end"),
        ("mr. smith", "mr smith"),
        ("a.b", "ab"),  # deleted, not replaced by a space
        # The mistyped look-behind: a period after a digit but not before one is deleted too (the intended rule,
        # "not between digits", would keep it).
        ("3.x", "3x"),
        ("3.", "3"),
    ],
)
def test_period_rule(text, expected):
    assert process_punctuation(text) == expected


def test_condition_reads_the_incoming_text():
    # "(" comes first in the list and becomes a space, which now touches "-"; the rule for "-" still looks at the
    # incoming "(-x", where "-" touches no space, so "-" becomes a space too (two spaces, not one).
    assert process_punctuation("(-x") == "  x"


def test_digits_are_ascii_digits():
    # Python 2 regexes without flags: \d is 0-9 only. An Arabic-Indic digit after a period does not protect it...
    assert process_punctuation("1.\u0663") == "1\u0663"
    # ... and a comma between two such digits is not a digit,digit comma (so "/" becomes a space, not deleted).
    assert process_punctuation("\u0661,\u0662 a/b") == "\u0661 \u0662 a b"


def test_period_rule_deletes_at_most_32_periods():
    # 40 periods: the first 32 go, 8 stay.
    assert process_punctuation("." * 40) == "." * 8
    # 33 deletable periods: the last one survives.
    assert process_punctuation("a." * 33) == "a" * 33 + "."
    assert process_punctuation("a." * 32) == "a" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two", "2"),
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("zero", "0"),
        ("TEN", "10"),
        ("twenty", "twenty"),  # only none/zero..ten are mapped
        ("one-two", "one-two"),  # whole words only
        ("the cat", "cat"),
        ("An apple", "apple"),
        ("a an the", ""),
        ("the one", "1"),
        ("  two   the  ", "2"),  # split on runs of whitespace, joined with single spaces
        ("dont", "don't"),
        ("Dont", "don't"),  # lower-cased before the table is looked up
        ("whats up", "what's up"),
        ("Im", "im"),  # the table's capitalised keys ("Im") can never match
        ("somebody'd", "somebodyd"),  # the table maps this one backwards
        ("dont's", "dont's"),
    ],
)
def test_digits_articles_contractions(text, expected):
    assert process_digit_article(text) == expected


def test_lower_case_is_python_2s():
    # Python 2's unicode.lower() maps one character to one: "İ" -> "i" (Python 3: "i" + combining dot) and a final
    # capital sigma -> "σ" (Python 3: "ς").
    assert process_digit_article("\u0130") == "i"
    assert process_digit_article("ΟΔΟΣ") == "οδοσ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two Dogs!", "2 dogs"),  # "!" -> space, then articles and number words
        ("dont.", "don't"),  # the period goes first, then the contraction matches
        ("yes/no", "yes no"),
        ("1,000 (m)", "1000 m"),
    ],
)
def test_full_normalization(text, expected):
    assert normalize_answer(text) == expected
