"""The `wer` metric: WER/CER counted by hand, Whisper's English normalisation (contractions, titles, numbers,
British spellings, fillers), the apostrophe option, empty references dropped and counted, corpus vs per-utterance
averaging, the evaluate module loaded by path (offline), and bad input."""

import evaluate
import pytest

import towerzoo.evaluation.metrics as metrics
from towerzoo.evaluation.metrics.wer.error_rates import (
    WhisperEnglishNormalizer,
    error_rates,
    find_spelling_table,
    load_spelling_mapping,
)

WER_FOLDER = metrics.metric_path("wer")
needs_spelling_table = pytest.mark.skipif(
    find_spelling_table() is None, reason="Whisper's spelling table needs whisper-normalizer (pip install it)"
)


@pytest.fixture(scope="module")
def wer_metric():
    return evaluate.load(WER_FOLDER)


@pytest.fixture(scope="module")
def normalizer():
    return WhisperEnglishNormalizer({})


def raw(predictions, references, **options):
    return error_rates(predictions, references, normalize=False, **options)


def test_hand_counted_word_and_character_errors():
    # "the cat sat on the mat" vs "the cat sit on mat": 1 substitution (sat->sit), 1 deletion (the) = 2 / 6 words.
    # Characters (22 in the reference, spaces included): "sat"->"sit" 1 substitution, "the " deleted 4 = 5 / 22.
    result = raw(["the cat sit on mat"], ["the cat sat on the mat"])
    assert result["wer"] == round(100 * 2 / 6, 2) == 33.33
    assert result["cer"] == round(100 * 5 / 22, 2) == 22.73
    # Insertions count too, so WER can pass 100 %: 3 inserted words over 1 reference word, plus 1 substitution.
    assert raw(["a b c d"], ["x"])["wer"] == 400.0
    assert raw(["hello"], ["hello"]) | {"spelling_mapping": None} == {
        "wer": 0.0,
        "cer": 0.0,
        "num_scored": 1,
        "num_dropped_empty_references": 0,
        "normalize": False,
        "average": "corpus",
        "keep_apostrophes": False,
        "spelling_mapping": None,
    }


def test_corpus_and_utterance_averages_differ():
    predictions = ["a b c d", "f"]
    references = ["a b c d", "e"]
    # Corpus: 1 error over 5 reference words. Utterance: mean of 0/4 and 1/1.
    assert raw(predictions, references)["wer"] == 20.0
    assert raw(predictions, references, average="utterance")["wer"] == 50.0
    # Characters: 1 error over 7 + 1 characters; per utterance mean of 0 and 1.
    assert raw(predictions, references)["cer"] == 12.5
    assert raw(predictions, references, average="utterance")["cer"] == 50.0
    assert raw(predictions, references, average="utterance")["average"] == "utterance"


def test_an_empty_prediction_deletes_every_word():
    assert raw(["", "x y"], ["a b c", "x y"])["wer"] == 60.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith's 2 cats", "mister smith is 2 cats"),
        ("Dr. Who won't go, can't he?", "doctor who will not go can not he"),
        ("I have twenty-five dollars.", "i have $25"),
        ("one hundred and one", "101"),
        ("It's 3.5% of £1,000", "it is 3.5% of £1000"),
        ("Um, hmm [noise] the (inaudible) end", "the end"),
        ("Café NAÏVE   façade", "cafe naive facade"),
        ("rock ’n’ roll", "rock n roll"),
    ],
)
def test_whisper_normalisation(normalizer, text, expected):
    assert normalizer(text) == expected


@needs_spelling_table
def test_british_spellings_become_american():
    mapping = load_spelling_mapping()
    assert len(mapping) > 1700 and mapping["colour"] == "color"
    normalizer = WhisperEnglishNormalizer(mapping)
    assert normalizer("The colourful centre analysed the catalogue.") == "the colorful center analyzed the catalog"
    assert WhisperEnglishNormalizer({})("The colourful centre") == "the colourful centre"


@needs_spelling_table
def test_matches_openais_normaliser_as_whisper_normalizer_ships_it():
    """transformers' copy with the table found here equals OpenAI's code (as packaged by whisper-normalizer)."""
    from whisper_normalizer.english import EnglishTextNormalizer as OpenAINormalizer

    ours, theirs = WhisperEnglishNormalizer(load_spelling_mapping()), OpenAINormalizer()
    sentences = [
        "Mr. and Mrs. O'Neil's 3rd anniversary cost $1.5 million, didn't it?",
        "We'd been analysing the programme's behaviour since nineteen ninety-nine.",
        "Hmm, the twenty first of May — that's 21/5 — or the 1st? It's 10:30 a.m.",
        "Gen. Lt. Col. St. James, Jr., ain't gonna wanna say y'all.",
    ]
    assert [ours(s) for s in sentences] == [theirs(s).strip() for s in sentences]


def test_keep_apostrophes(normalizer):
    keeping = WhisperEnglishNormalizer({}, keep_apostrophes=True)
    assert keeping("Don't you like Mr. Smith’s cat?") == "don't you like mister smith's cat"
    assert normalizer("Don't you like Mr. Smith’s cat?") == "do not you like mister smith s cat"
    # quotes around words are not apostrophes
    assert keeping("'quoted' words") == "quoted words"
    references, predictions = ["I don't know"], ["I do not know"]
    assert error_rates(predictions, references, spelling_mapping=False)["wer"] == 0.0
    kept = error_rates(predictions, references, spelling_mapping=False, keep_apostrophes=True)
    assert kept["wer"] == round(100 * 2 / 3, 2) and kept["keep_apostrophes"] is True


def test_empty_references_are_dropped_and_counted():
    result = error_rates(
        ["hello there", "uh", "anything", ""], ["Hello there!", "Um.", "[noise]", ""], spelling_mapping=False
    )
    assert result["wer"] == 0.0
    assert (result["num_scored"], result["num_dropped_empty_references"]) == (1, 3)
    with pytest.raises(ValueError, match="every reference is empty after normalisation"):
        error_rates(["a"], ["(inaudible)"], spelling_mapping=False)


def test_bad_options():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        raw(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="average must be one of"):
        raw(["a"], ["a"], average="macro")
    with pytest.raises(ValueError, match="keep_apostrophes is a normalisation option"):
        raw(["a"], ["a"], keep_apostrophes=True)


def test_spelling_table_from_a_path(tmp_path):
    table = tmp_path / "normalizer.json"
    table.write_text('{"colour": "color"}')
    result = error_rates(["the color"], ["The colour."], spelling_mapping=str(table))
    assert result["wer"] == 0.0
    assert result["spelling_mapping"]["entries"] == 1
    table.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        error_rates(["a"], ["a"], spelling_mapping=table)


def test_without_a_spelling_table_the_error_says_how_to_get_one(monkeypatch):
    import towerzoo.evaluation.metrics.wer.error_rates as rules

    monkeypatch.setattr(rules, "find_spelling_table", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install whisper-normalizer"):
        error_rates(["a"], ["a"])
    assert error_rates(["a"], ["a"], spelling_mapping=False)["spelling_mapping"]["entries"] == 0


@needs_spelling_table
def test_evaluate_module_loaded_by_path(wer_metric):
    references = ["Mr. Smith has 2 cats.", "The colour is grey", "[silence]", "I don't know"]
    predictions = ["mister smith has two cats", "the color is gray", "oops", "i do not no"]
    result = wer_metric.compute(predictions=predictions, references=references)
    # After normalisation ("grey" becomes "gray" through the table): 0 + 0 + 1 (no/know) errors over 5 + 4 + 4 words.
    assert result["wer"] == round(100 * 1 / 13, 2)
    assert result["num_dropped_empty_references"] == 1
    assert result["spelling_mapping"]["entries"] > 1700
    per_utterance = wer_metric.compute(predictions=predictions, references=references, average="utterance")
    assert per_utterance["wer"] == round(100 * (0 + 0 + 1 / 4) / 3, 2)
    assert error_rates(predictions, references) == result
