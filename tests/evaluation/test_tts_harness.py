"""`towerzoo eval tts` with a tiny Zipper as both the synthesiser and the ASR model (and a tiny wav2vec 2.0 through
transformers' ASR pipeline): the results' fields, duration statistics checked by hand from the saved WAVs, WER equal
to `error_rates` on the ASR model's own transcription of those WAVs, the protocol choices recorded, empty and failed
syntheses counted and scored as empty transcripts, killed runs resuming to the same results, and bad input failing
clearly."""

import json
import statistics
from pathlib import Path

import pytest
import soundfile
import torch
import transformers
from zipper_fixtures import LIBRISPEECH, tiny_zipper_folder

from towerzoo.evaluation import tts
from towerzoo.evaluation.audio_io import read_librispeech
from towerzoo.evaluation.metrics.wer.error_rates import error_rates
from towerzoo.evaluation.runner import EvaluationError
from towerzoo.evaluation.tts import TTSOptions, evaluate_tts

ASR_MAX_NEW_TOKENS = 6
CORPUS = read_librispeech(LIBRISPEECH).utterances


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_zipper_folder(tmp_path_factory.mktemp("zipper") / "model")


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory) -> Path:
    """A tiny random wav2vec 2.0 CTC model with a character vocabulary and its processor, saved as a folder."""
    folder = tmp_path_factory.mktemp("wav2vec2")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({char: 5 + i for i, char in enumerate("abcdefghijklmnopqrstuvwxyz'")})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    processor = transformers.Wav2Vec2Processor(
        feature_extractor=transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False),
        tokenizer=transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json")),
    )
    config = transformers.Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _options(model_dir, tmp_path, **overrides) -> TTSOptions:
    values = {
        "model": str(model_dir),
        "asr_model": str(model_dir),
        "data": LIBRISPEECH,
        "output": tmp_path / "results.json",
        "batch_size": 3,
        "max_new_tokens": 16,
        "asr_max_new_tokens": ASR_MAX_NEW_TOKENS,
        **overrides,
    }
    return TTSOptions(**values)


def _zipper_transcriptions(model_dir, paths: list[Path]) -> list[str]:
    """Each WAV transcribed on its own by the Zipper, outside the harness."""
    model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    texts = []
    for path in paths:
        waveform, rate = soundfile.read(path, dtype="float32")
        inputs = processor(audio=[waveform], sampling_rate=rate, task="asr")
        with torch.no_grad():
            ids = model.generate(**inputs, output_modality="text", max_new_tokens=ASR_MAX_NEW_TOKENS, do_sample=False)
        texts += processor.batch_decode(ids, modality="text")
    return texts


def test_results_durations_and_intelligibility(model_dir, tmp_path):
    results = evaluate_tts(_options(model_dir, tmp_path, save_audio=tmp_path / "wavs"))
    rows = results["utterances"]
    assert [row["utterance_id"] for row in rows] == [u.utterance_id for u in CORPUS]  # corpus order
    assert [row["text"] for row in rows] == [u.transcript for u in CORPUS]
    assert all(row["status"] == "ok" and row["error"] is None for row in rows)

    # durations, by hand from the saved WAVs and the reference FLACs
    wavs = [tmp_path / "wavs" / f"{u.utterance_id}.wav" for u in CORPUS]
    assert [row["audio"] for row in rows] == [str(path) for path in wavs]
    seconds = [soundfile.info(path).frames / 16000 for path in wavs]
    assert [row["duration"] for row in rows] == seconds
    assert len(set(seconds)) > 1  # some syntheses stop at their eos before --max-new-tokens
    references = [soundfile.info(u.audio_path).duration for u in CORPUS]
    assert [row["reference_duration"] for row in rows] == references
    assert [row["reference_audio"] for row in rows] == [str(u.audio_path) for u in CORPUS]
    for row in rows:
        hop = 400  # one unit per 25 ms frame; T frames decode to (T - 1) hops
        assert 0 < row["duration"] <= (row["num_units"] - 1) * hop / 16000
        assert row["truncated"] == (row["num_units"] == 16)
    durations = results["durations"]
    assert durations["synthesized_seconds"] == pytest.approx(
        {
            "mean": sum(seconds) / 8,
            "median": statistics.median(seconds),
            "min": min(seconds),
            "max": max(seconds),
            "total": sum(seconds),
        }
    )
    ratios = [s / r for s, r in zip(seconds, references)]
    assert durations["ratio_to_reference"] == pytest.approx(
        {
            "mean": sum(ratios) / 8,
            "median": statistics.median(ratios),
            "total": sum(seconds) / sum(references),
            "num_utterances": 8,
        }
    )
    assert durations["reference_seconds"]["total"] == pytest.approx(sum(references))
    assert (durations["num_synthesized"], durations["num_empty"], durations["num_failed"]) == (8, 0, 0)
    assert durations["num_truncated"] == sum(row["truncated"] for row in rows)

    # intelligibility: the ASR model's own transcription of each saved WAV, scored against the input text
    transcripts = _zipper_transcriptions(model_dir, wavs)
    assert [row["transcript"] for row in rows] == transcripts
    texts = [u.transcript for u in CORPUS]
    corpus, utterance = error_rates(transcripts, texts), error_rates(transcripts, texts, average="utterance")
    assert results["metrics"] == {"wer": corpus["wer"], "cer": corpus["cer"]}
    assert results["by_average"] == {
        "corpus": {"wer": corpus["wer"], "cer": corpus["cer"]},
        "utterance": {"wer": utterance["wer"], "cer": utterance["cer"]},
    }

    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {"schema_version": 1, **json.loads(json.dumps(results))}
    assert (written["task"], written["dataset"], written["num_examples"]) == ("tts", "librispeech", 8)
    protocol = written["protocol"]
    assert protocol["asr_model"] == str(model_dir) and protocol["asr_kind"] == "zipper"
    assert protocol["average"] == "corpus" and protocol["keep_apostrophes"] is False
    assert protocol["normalizer"] == "whisper-english" and protocol["spelling_mapping"]["entries"] > 1000
    assert protocol["empty_or_failed_syntheses"] == "scored with an empty transcript"
    assert protocol["decoding"] == {"num_beams": 1, "max_new_tokens": 16, "do_sample": False}
    assert not (tmp_path / "results.json.work").exists()


def test_protocol_choices_change_the_number_and_are_recorded(model_dir, tmp_path):
    results = evaluate_tts(_options(model_dir, tmp_path, limit=4, average="utterance", keep_apostrophes=True))
    rows = results["utterances"]
    assert rows[3]["text"] == "DON'T OPEN THE RED DOOR"
    expected = error_rates(
        [row["transcript"] for row in rows], [row["text"] for row in rows], average="utterance", keep_apostrophes=True
    )
    assert results["metrics"] == {"wer": expected["wer"], "cer": expected["cer"]}
    assert results["protocol"]["average"] == "utterance" and results["protocol"]["keep_apostrophes"] is True
    assert all(row["audio"] is None for row in rows)  # no --save-audio


def test_empty_and_failed_syntheses_are_counted_and_scored_empty(model_dir, tmp_path, monkeypatch):
    # one unit is one frame, which spans no hop: no audio
    results = evaluate_tts(_options(model_dir, tmp_path, limit=3, max_new_tokens=1, save_audio=tmp_path / "wavs"))
    assert [row["status"] for row in results["utterances"]] == ["empty"] * 3
    assert all(row["transcript"] == "" and row["audio"] is None for row in results["utterances"])
    assert results["metrics"] == {"wer": 100.0, "cer": 100.0}
    durations = results["durations"]
    assert (durations["num_synthesized"], durations["num_empty"], durations["num_failed"]) == (0, 3, 0)
    assert durations["synthesized_seconds"]["mean"] is None and durations["ratio_to_reference"]["num_utterances"] == 0
    assert not (tmp_path / "wavs").exists()

    load_zipper, events = tts.load_zipper, []

    def vocoder_failing_once(*args):
        model, processor = load_zipper(*args)
        if not events:  # the synthesiser's processor, not the ASR model's
            decode = processor.decode

            def decode_or_fail(row, modality="text"):
                if "failed" not in events:
                    events.append("failed")
                    raise ValueError("the vocoder broke")
                return decode(row, modality)

            processor.decode = decode_or_fail
        events.append("loaded")
        return model, processor

    monkeypatch.setattr(tts, "load_zipper", vocoder_failing_once)
    results = evaluate_tts(_options(model_dir, tmp_path, limit=3, batch_size=3))
    failed = [row for row in results["utterances"] if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "the vocoder broke" and failed[0]["transcript"] == ""
    assert results["durations"]["num_failed"] == 1 and results["durations"]["num_synthesized"] == 2


def test_killed_run_resumes_to_the_same_result(model_dir, tmp_path, monkeypatch):
    reference = evaluate_tts(_options(model_dir, tmp_path / "reference", limit=6, batch_size=2))
    calls = {"batches": 0}
    count_tokens = tts.new_tokens

    def killed_at_the_second_batch(*args):
        calls["batches"] += 1
        if calls["batches"] == 2:
            raise KeyboardInterrupt("killed")
        return count_tokens(*args)

    options = _options(model_dir, tmp_path / "resumed", limit=6, batch_size=2)
    monkeypatch.setattr(tts, "new_tokens", killed_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_tts(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_tts(options)
    assert resumed["resumed_batches"] == 1
    for key in ("utterances", "metrics", "by_average", "durations"):
        assert resumed[key] == reference[key]


def test_a_transformers_asr_pipeline_listens(model_dir, wav2vec2_dir, tmp_path):
    pipeline = {"asr_model": str(wav2vec2_dir), "asr_kind": "pipeline"}
    results = evaluate_tts(
        _options(model_dir, tmp_path, **pipeline, limit=3, batch_size=1, save_audio=tmp_path / "wavs")
    )
    assert results["protocol"]["asr_kind"] == "pipeline" and results["config"]["asr_max_new_tokens"] is None
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(wav2vec2_dir))
    pipe.model.eval()
    rows = results["utterances"]
    heard = []
    for row in rows:
        waveform, rate = soundfile.read(row["audio"], dtype="float32")
        heard.append(pipe({"raw": waveform, "sampling_rate": rate})["text"])
    assert [row["transcript"] for row in rows] == heard
    texts = [row["text"] for row in rows]
    assert results["metrics"]["wer"] == error_rates([row["transcript"] for row in rows], texts)["wer"]


def test_bad_input_fails_clearly(model_dir, wav2vec2_dir, tmp_path):
    with pytest.raises(EvaluationError, match="unknown --asr-kind 'whisper'"):
        evaluate_tts(_options(model_dir, tmp_path, asr_kind="whisper"))
    with pytest.raises(EvaluationError, match="has no model for AutoModelForSpeechSeq2Seq"):
        evaluate_tts(_options(model_dir, tmp_path, asr_model=str(wav2vec2_dir)))
    with pytest.raises(EvaluationError, match="cannot load .* as a transformers ASR pipeline .*--asr-kind zipper"):
        evaluate_tts(_options(model_dir, tmp_path, asr_kind="pipeline"))
    with pytest.raises(EvaluationError, match="unknown --average 'median'"):
        evaluate_tts(_options(model_dir, tmp_path, average="median"))
    with pytest.raises(EvaluationError, match="holds no utterance with a transcript"):
        evaluate_tts(_options(model_dir, tmp_path, limit=0))


def test_cli_reports_bad_input_in_one_line(model_dir, tmp_path, capsys):
    from towerzoo.cli import main

    argv = ["eval", "tts", "--model", str(model_dir), "--data", str(LIBRISPEECH)]
    argv += ["--output", str(tmp_path / "results.json")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "towerzoo eval tts: error: towerzoo eval tts needs --asr-model."
    argv += ["--asr-model", str(model_dir), "--limit", "2", "--max-new-tokens", "8", "--asr-max-new-tokens", "4"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--layout", "kaldi"])
    assert exited.value.code == 2 and "invalid choice: 'kaldi'" in capsys.readouterr().err
    assert main([*argv, "--keep-apostrophes", "--average", "utterance", "--do-sample", "--seed", "3"]) == 0
    assert "wer" in capsys.readouterr().out
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["protocol"]["keep_apostrophes"] is True and written["protocol"]["average"] == "utterance"
    assert written["config"]["do_sample"] is True and written["config"]["seed"] == 3
