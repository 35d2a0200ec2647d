"""`towerzoo finetune zipper`: single-task batches, the processor a run builds (a k-means codebook fitted on the
training audio when the folder has none, vocabulary checks), resuming bit for bit, and, end to end on espeak-ng speech,
a Zipper zipped from two briefly pre-trained tiny Llamas that learns ASR and TTS: held-out word error rates far below
chance.

The end-to-end corpus: sequences of one to three words of the Speech Commands vocabulary ("yes", "no", "up", …),
spoken by espeak-ng with 5 accents × 8 voice variants at a tape speed of 0.85-1.15 (tempo and pitch together), 16 kHz,
in LibriSpeech's layout with upper-cased transcripts. The held-out utterances are word sequences never seen in
training, each with its own voice (accent and variant drawn from the same sets) and speed. Digit words would not do:
Whisper's normaliser turns "one two three" into "123", one word, so the WER would become an utterance error rate.
"""

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch
from safetensors.torch import load_file
from speech_fixtures import ESPEAK_MISSING, espeak_available, speak
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from zipper_fixtures import LIBRISPEECH, build_char_tokenizer

from towerzoo.cli import main as towerzoo_main
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.evaluation.audio_io import load_audio, read_librispeech
from towerzoo.evaluation.metrics.wer.error_rates import error_rates
from towerzoo.models.zipper import AUTO_CLASSES, ZipperConfig, ZipperForConditionalGeneration
from towerzoo.training.zipper import TaskBlockSampler, add_parser, fit_speech_tokenizer

RATE = 16000
WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go", "on", "off")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland")
VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")


def finetune_zipper_cli(*arguments) -> int:
    """`towerzoo finetune zipper ARGUMENTS` through the parser `training.zipper.add_parser` builds."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="task"))
    args = parser.parse_args(["zipper", *map(str, arguments)])
    return args.handler(args)


def llama(vocab_size: int, bos: int, eos: int, pad: int, width: int, layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        max_position_embeddings=512,
    )


# --------------------------------------------------------------------------------------------------------------------
# Single-task batches and the run's processor (fast)
# --------------------------------------------------------------------------------------------------------------------


def test_task_block_sampler_cuts_single_task_batches():
    tasks = ["asr"] * 10 + ["tts"] * 7
    sampler = TaskBlockSampler(tasks, batch_size=4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 12 + 8  # each task's rows filled up to whole blocks
    blocks = [order[start : start + 4] for start in range(0, len(order), 4)]
    assert all(len({tasks[i] for i in block}) == 1 for block in blocks)
    assert set(order) == set(range(len(tasks)))
    assert [tasks[block[0]] for block in blocks].count("tts") == 2
    assert order == list(TaskBlockSampler(tasks, 4, seed=3))  # fixed by the seed
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order each epoch


@pytest.fixture(scope="module")
def bare_zipper(tmp_path_factory) -> tuple[Path, Path]:
    """A Zipper folder without a processor (char-level text tower; speech tower with specials 16, 17, 18) and the char
    tokenizer's folder."""
    root = tmp_path_factory.mktemp("bare-zipper")
    tokenizer = AutoTokenizer.from_pretrained(build_char_tokenizer(root / "char-tokenizer"))
    text = llama(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 32, 2)
    torch.manual_seed(0)
    model = ZipperForConditionalGeneration(ZipperConfig(text_config=text, speech_config=llama(19, 16, 17, 18, 32, 2)))
    return write_hub_folder(model, root / "zipper", exposed=AUTO_CLASSES), root / "char-tokenizer"


def quick_run(folder: Path, tokenizer: Path, output_dir: Path, *extra) -> int:
    """A few steps on the eight committed fixture utterances (ASR and TTS rows, batches of 4, nothing logged)."""
    return finetune_zipper_cli(
        *("--model", folder, "--tokenizer", tokenizer, "--data", LIBRISPEECH, "--lowercase"),
        *("--output-dir", output_dir, "--per-device-train-batch-size", "4", "--learning-rate", "1e-3"),
        *("--dataloader-num-workers", "0", "--save-steps", "1000", "--logging-steps", "1"),
        *extra,
    )


def test_finetune_fits_a_codebook_when_the_folder_has_none(bare_zipper, tmp_path):
    folder, tokenizer = bare_zipper
    assert quick_run(folder, tokenizer, tmp_path, "--max-steps", "3", "--freeze-text-tower", "--seed", "1") == 0
    trained = tmp_path / "model"
    record = json.loads((trained / "training.json").read_text())
    # K = the speech tower's lowest special id, fitted on the eight fixture utterances with the run's seed
    assert record["speech_tokenizer"] == {"fitted": "k-means", "num_units": 16, "utterances": 8, "seed": 1}
    assert record["steps"] == 3 and record["settings"]["speech_task"] == "both"
    assert record["start"]["frozen_towers"] == {"text": True, "speech": False}
    assert record["data"]["train"]["examples"] == 8 and record["data"]["train"]["rows"] == 16
    processor = AutoProcessor.from_pretrained(trained, trust_remote_code=True)
    expected = fit_speech_tokenizer(sorted(LIBRISPEECH.rglob("*.flac")), 16, seed=1)
    assert torch.equal(processor.speech_tokenizer.codebook, expected.codebook)
    assert (processor.speech_bos_token_id, processor.speech_eos_token_id, processor.speech_pad_token_id) == (
        16,
        17,
        18,
    )
    model = AutoModelForSpeechSeq2Seq.from_pretrained(trained, trust_remote_code=True)
    assert model.config.freeze_text_tower and not model.config.freeze_speech_tower


def test_resuming_ends_with_the_uninterrupted_weights(bare_zipper, tmp_path):
    """16 rows in batches of 4: six steps cross an epoch; the run is resumed after step 3, mid-epoch."""
    folder, tokenizer = bare_zipper
    steps = ["--max-steps", "6", "--save-steps", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert quick_run(folder, tokenizer, whole, *steps) == 0
    shutil.copytree(whole / "checkpoints" / "checkpoint-3", killed / "checkpoints" / "checkpoint-3")
    assert quick_run(folder, tokenizer, killed, *steps, "--resume-from-checkpoint", "last") == 0
    expected, got = (load_file(run / "model" / "model.safetensors") for run in (whole, killed))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert json.loads((killed / "model" / "training.json").read_text())["epochs"] == 1.5


def test_finetune_refuses_a_processor_that_does_not_fit(bare_zipper, tmp_path, capsys):
    folder, tokenizer = bare_zipper
    base = ["--model", folder, "--data", LIBRISPEECH, "--output-dir", tmp_path]
    assert finetune_zipper_cli(*base) == 2
    assert "has no processor: pass --tokenizer DIR" in capsys.readouterr().err
    assert finetune_zipper_cli(*base, "--tokenizer", tokenizer, "--num-units", "20") == 2
    assert "special ids (16, 17, 18) must lie above the unit ids; use at most 16 units" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        finetune_zipper_cli(*base, "--tokenizer", tokenizer, "--task", "s2s")
    assert "argument --task: invalid choice: 's2s'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# End to end on espeak-ng speech
# --------------------------------------------------------------------------------------------------------------------


def write_corpus(root: Path, items: list[tuple[str, str, float]]) -> None:
    """(text, espeak voice, tape speed) items as a LibriSpeech-style folder: one speaker per accent, 16 kHz FLAC."""
    transcripts: dict[Path, list[str]] = {}
    for index, (text, voice, speed) in enumerate(items):
        speaker = str(100 + ACCENTS.index(voice.split("+")[0]))
        folder = root / speaker / "1"
        utterance_id = f"{speaker}-1-{index:04d}"
        spoken = speak(text, folder / f"{utterance_id}.wav", voice=voice)
        samples, rate = soundfile.read(spoken, dtype="float32")
        spoken.unlink()
        # read at speed × the rate it was written at: faster and higher (or slower and lower)
        samples = soxr.resample(samples, rate * speed, RATE)
        soundfile.write(folder / f"{utterance_id}.flac", np.clip(samples, -1, 1), RATE, subtype="PCM_16")
        transcripts.setdefault(folder / f"{speaker}-1.trans.txt", []).append(f"{utterance_id} {text.upper()}\n")
    for path, lines in transcripts.items():
        path.write_text("".join(lines))


def draw_items(num_train: int, num_held_out: int, seed: int = 0) -> tuple[list, list]:
    """Training and held-out (text, voice, speed) items; the held-out word sequences never occur in training."""
    generator = random.Random(seed)
    sequences = sorted({" ".join(generator.choices(WORDS, k=generator.randint(1, 3))) for _ in range(3000)})
    generator.shuffle(sequences)
    held_out, seen = sequences[:num_held_out], sequences[num_held_out:]

    def voiced(text: str) -> tuple[str, str, float]:
        return text, f"{generator.choice(ACCENTS)}+{generator.choice(VARIANTS)}", generator.uniform(0.85, 1.15)

    return [voiced(generator.choice(seen)) for _ in range(num_train)], [voiced(text) for text in held_out]


def pretrain_lm(config: LlamaConfig, sequences: list[list[int]], steps: int, seed: int = 0) -> LlamaForCausalLM:
    """A causal LM trained on next-token prediction over `sequences` (random batches of 32, AdamW 3e-3)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = random.Random(seed)
    for _ in range(steps):
        batch = generator.choices(sequences, k=32)
        longest = max(map(len, batch))
        input_ids = torch.tensor([row + [config.pad_token_id] * (longest - len(row)) for row in batch])
        attention_mask = (torch.arange(longest)[None] < torch.tensor([len(row) for row in batch])[:, None]).long()
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def transcribe(model, processor, waveforms: list[np.ndarray]) -> list[str]:
    """Greedy ASR of 16 kHz waveforms (an empty waveform transcribes as "")."""
    texts = [""] * len(waveforms)
    spoken = [i for i, waveform in enumerate(waveforms) if len(waveform)]
    for start in range(0, len(spoken), 16):
        batch = spoken[start : start + 16]
        inputs = processor(audio=[waveforms[i] for i in batch], sampling_rate=RATE, task="asr")
        ids = model.generate(**inputs, output_modality="text", max_new_tokens=40, do_sample=False)
        for i, text in zip(batch, processor.batch_decode(ids, modality="text")):
            texts[i] = text
    return texts


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason=ESPEAK_MISSING)
def test_zipper_learns_asr_and_tts_from_espeak_speech(tmp_path):
    """Measured here (one torch thread, seed 0; 6.5 minutes on two shared cores, 4.4 CPU minutes): held-out ASR WER
    26.1 %; TTS (greedy units → Griffin-Lim → re-tokenised → the same model's ASR) 57.4 %; chance: audio of random
    units of the same lengths 96.5 %, random word sequences of the reference lengths 88.7 %."""
    started = time.perf_counter()
    train_items, held_out_items = draw_items(1000, 40)
    write_corpus(tmp_path / "train", train_items)
    write_corpus(tmp_path / "held-out", held_out_items)
    train = read_librispeech(tmp_path / "train").utterances
    held_out = read_librispeech(tmp_path / "held-out").utterances

    # the towers, each pre-trained on its own modality (Zipper Sec. 3 starts from unimodal decoders)
    num_units = 64
    speech_tokenizer = fit_speech_tokenizer([u.audio_path for u in train], num_units, seed=0)
    units = [speech_tokenizer.encode(load_audio(u.audio_path, RATE), RATE).tolist() for u in train]
    speech_dir = tmp_path / "speech-lm"
    bos, eos, pad = num_units, num_units + 1, num_units + 2
    speech_config = llama(num_units + 3, bos, eos, pad, 96, 3)
    pretrain_lm(speech_config, [[bos, *row, eos] for row in units], 300).save_pretrained(speech_dir)
    speech_tokenizer.save_pretrained(speech_dir)
    text_dir = tmp_path / "text-lm"
    tokenizer = AutoTokenizer.from_pretrained(build_char_tokenizer(text_dir))
    generator = random.Random(1)
    texts = [" ".join(generator.choices(WORDS, k=generator.randint(1, 3))) for _ in range(2000)]
    text_rows = [[*tokenizer(text)["input_ids"], tokenizer.eos_token_id] for text in texts]
    text_config = llama(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 64, 2)
    pretrain_lm(text_config, text_rows, 200).save_pretrained(text_dir)
    zipped = tmp_path / "zipper"
    assert towerzoo_main(["convert", "zipper-from-decoders", str(text_dir), str(speech_dir), str(zipped)]) == 0

    # ASR + TTS fine-tuning
    status = finetune_zipper_cli(
        *("--model", zipped, "--data", tmp_path / "train", "--task", "both", "--lowercase"),
        *("--output-dir", tmp_path / "run", "--max-steps", "3000", "--learning-rate", "1e-3"),
        *("--per-device-train-batch-size", "16", "--warmup-ratio", "0.05", "--seed", "0"),
        *("--logging-steps", "500", "--save-steps", "100000", "--dataloader-num-workers", "0"),
    )
    assert status == 0
    trained = tmp_path / "run" / "model"
    model = AutoModelForSpeechSeq2Seq.from_pretrained(trained, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(trained, trust_remote_code=True)
    processor.speech_tokenizer.on_silence = "ignore"  # synthesised or random audio may be all silence
    references = [u.transcript for u in held_out]

    # ASR on held-out speech
    asr = error_rates(transcribe(model, processor, [load_audio(u.audio_path, RATE) for u in held_out]), references)
    # TTS of the held-out texts, heard by the trained ASR
    inputs = processor(text=[text.lower() for text in references], task="tts")
    with torch.no_grad():
        ids = model.generate(**inputs, output_modality="speech", max_new_tokens=150, do_sample=False)
    synthesised = processor.batch_decode(ids, modality="speech")
    tts = error_rates(transcribe(model, processor, synthesised), references)
    # chance 1: audio of uniformly random units, as many frames as each synthesis, heard by the same ASR
    noise = torch.Generator().manual_seed(0)
    frames = [max(2, len(waveform) // processor.speech_tokenizer.hop_length + 1) for waveform in synthesised]
    random_audio = [
        processor.speech_tokenizer.decode(torch.randint(0, num_units, (count,), generator=noise)).numpy()
        for count in frames
    ]
    random_units = error_rates(transcribe(model, processor, random_audio), references)
    # chance 2: a random word sequence as long as the reference
    words = random.Random(2)
    guesses = [" ".join(words.choices(WORDS, k=len(text.split()))) for text in references]
    random_words = error_rates(guesses, references)
    chance = min(random_units["wer"], random_words["wer"])
    print(
        f"\nheld-out WER: ASR {asr['wer']:.2f} %, TTS {tts['wer']:.2f} %; chance: random units "
        f"{random_units['wer']:.2f} %, random words {random_words['wer']:.2f} %; {time.perf_counter() - started:.0f} s"
    )
    assert asr["wer"] < 40
    assert chance > 80
    assert tts["wer"] < chance - 15
