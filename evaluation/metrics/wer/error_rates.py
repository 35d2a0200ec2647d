"""Word and character error rates after Whisper's English text normalisation: the rules of the `wer` metric, which
the speech harnesses also call directly.

The protocol is open_asr_leaderboard's: references and predictions both go through Whisper's
`EnglishTextNormalizer` (transformers' copy of OpenAI's), utterances whose normalised reference is empty are dropped
and counted, corpus-level rates are reported as round(100 * rate, 2). Two choices that TTS evaluations make
differently are options recorded with the result: `average="utterance"` (the mean of per-utterance rates, as F5-TTS
reports) and `keep_apostrophes=True` (seed-tts-eval keeps them; Whisper's normaliser expands common contractions
and turns every other apostrophe into a space).

Whisper's normaliser also maps British to American spellings with a table (`english.json` in openai-whisper,
`normalizer.json` in Whisper tokenizer folders) that transformers does not ship. It is read from the installed
`whisper-normalizer` (or `openai-whisper`) package, or from a path given as `spelling_mapping`.
"""

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import jiwer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

AVERAGES = ("corpus", "utterance")
# (package, file inside it) holding OpenAI's British -> American spelling table, in order of preference.
SPELLING_TABLES = (("whisper_normalizer", "normalizers/english.json"), ("whisper", "normalizers/english.json"))
# An apostrophe between two word characters ("don't", "smith's"); with keep_apostrophes it stands in for a
# private-use code point during normalisation, which no step of Whisper's normaliser changes or removes.
_INNER_APOSTROPHE = re.compile(r"(?<=\w)['\u2019](?=\w)")
_KEPT_APOSTROPHE = "\ue000"


def find_spelling_table() -> Path | None:
    """The spelling table of an installed `whisper-normalizer` or `openai-whisper` package (without importing
    either), or None."""
    for package, relative in SPELLING_TABLES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            candidate = Path(location) / relative
            if candidate.is_file():
                return candidate
    return None


def load_spelling_mapping(path: str | Path | None = None) -> dict[str, str]:
    """Whisper's British -> American spelling table from `path`, or from the installed package when None."""
    table = Path(path) if path is not None else find_spelling_table()
    if table is None:
        raise FileNotFoundError(
            "Whisper's English spelling table was not found: install whisper-normalizer (pip install "
            "whisper-normalizer), pass spelling_mapping=<path of a Whisper tokenizer's normalizer.json or "
            "openai-whisper's normalizers/english.json>, or spelling_mapping=False to normalise without it"
        )
    mapping = json.loads(table.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{table}: expected a JSON object mapping British to American spellings")
    return mapping


def mapping_fingerprint(mapping: dict[str, str]) -> str:
    """A short hash of the spelling table's content, recorded with results so that runs are comparable."""
    canonical = json.dumps(mapping, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()[:16]


class WhisperEnglishNormalizer:
    """Whisper's English normaliser; with `keep_apostrophes`, apostrophes inside words survive (and the
    contractions they belong to are not expanded)."""

    def __init__(self, spelling_mapping: dict[str, str], keep_apostrophes: bool = False):
        self.normalizer = EnglishTextNormalizer(spelling_mapping)
        self.keep_apostrophes = keep_apostrophes

    def __call__(self, text: str) -> str:
        if self.keep_apostrophes:
            text = _INNER_APOSTROPHE.sub(_KEPT_APOSTROPHE, text)
        return self.normalizer(text).replace(_KEPT_APOSTROPHE, "'").strip()


def error_rates(
    predictions: list[str],
    references: list[str],
    *,
    normalize: bool = True,
    average: str = "corpus",
    keep_apostrophes: bool = False,
    spelling_mapping: str | Path | bool | None = None,
) -> dict:
    """WER and CER in percent, rounded to two decimals, with the number of utterances scored and dropped.

    `spelling_mapping`: None finds the installed table, a path reads that file, False normalises without it.
    With `normalize=False` the texts are compared as given (jiwer splits words on whitespace)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if keep_apostrophes and not normalize:
        raise ValueError("keep_apostrophes is a normalisation option; with normalize=False texts are used as given")
    spelling = None
    if normalize:
        mapping = {} if spelling_mapping is False else load_spelling_mapping(spelling_mapping or None)
        spelling = {"entries": len(mapping), "sha256": mapping_fingerprint(mapping)}
        normalizer = WhisperEnglishNormalizer(mapping, keep_apostrophes)
        predictions = [normalizer(text) for text in predictions]
        references = [normalizer(text) for text in references]
    pairs = [(prediction, reference) for prediction, reference in zip(predictions, references) if reference.strip()]
    if not pairs:
        raise ValueError("every reference is empty after normalisation: there is nothing to score")
    kept_predictions = [prediction for prediction, _ in pairs]
    kept_references = [reference for _, reference in pairs]
    if average == "corpus":
        wer = jiwer.process_words(kept_references, kept_predictions).wer
        cer = jiwer.process_characters(kept_references, kept_predictions).cer
    else:
        wer = sum(jiwer.process_words(ref, hyp).wer for hyp, ref in pairs) / len(pairs)
        cer = sum(jiwer.process_characters(ref, hyp).cer for hyp, ref in pairs) / len(pairs)
    return {
        "wer": round(100 * wer, 2),
        "cer": round(100 * cer, 2),
        "num_scored": len(pairs),
        "num_dropped_empty_references": len(references) - len(pairs),
        "normalize": normalize,
        "average": average,
        "keep_apostrophes": keep_apostrophes,
        "spelling_mapping": spelling,
    }
