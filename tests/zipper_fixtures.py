"""A tiny Zipper Hub folder and the committed speech fixtures, for the speech harnesses, their notebooks and training
tests.

The speech in tests/data/speech/ was spoken by espeak-ng (`scripts/make_speech_fixtures.py` regenerates it): eight
utterances of two speakers in LibriSpeech's layout, and two of them again as an audiofolder split (`test`) with
punctuated, mixed-case transcripts.
"""

import glob
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.evaluation.audio_io import load_audio
from towerzoo.models.zipper import AUTO_CLASSES, ZipperConfig, ZipperForConditionalGeneration
from towerzoo.models.zipper.processing_zipper import ZipperProcessor
from towerzoo.models.zipper.speech_tokenization_zipper import KMeansSpeechTokenizer
from towerzoo.tiny import build_tiny_tokenizer

SPEECH_DATA = Path(__file__).resolve().parent / "data" / "speech"
LIBRISPEECH = SPEECH_DATA / "librispeech"
AUDIOFOLDER = SPEECH_DATA / "audiofolder"
SAMPLING_RATE = 16000


def fixture_waveforms(rate: int = SAMPLING_RATE) -> list[np.ndarray]:
    """The LibriSpeech fixture's audio (float32 mono at `rate`), in utterance-id order."""
    return [load_audio(path, rate) for path in sorted(glob.glob(str(LIBRISPEECH / "*" / "*" / "*.flac")))]


def _tower(vocab_size: int, bos: int, eos: int, pad: int, width: int, layers: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "initializer_range": 0.2,
    }


def tiny_zipper_processor(folder: Path, num_units: int = 16) -> ZipperProcessor:
    """The tiny byte-level BPE text tokenizer (`towerzoo.tiny`) and a k-means speech tokenizer of `num_units` units
    fitted on the fixture speech (seed 0; 4 Griffin-Lim iterations to keep decoding quick)."""
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(Path(folder) / "text-tokenizer"))
    speech = KMeansSpeechTokenizer.fit(fixture_waveforms(), SAMPLING_RATE, num_units, seed=0, griffin_lim_iterations=4)
    return ZipperProcessor(speech, tokenizer)


def tiny_zipper_folder(folder: Path, num_units: int = 16, gate: float = 0.8, seed: int = 0) -> Path:
    """A Zipper Hub folder (random weights, seed `seed`) with its processor: a 2-layer text tower 32 wide and a
    3-layer speech tower 48 wide (tiny Llamas), weights drawn with std 0.2 and every gate set to `gate`, so that what
    it generates depends on its input."""
    folder = Path(folder)
    processor = tiny_zipper_processor(folder.parent / f"{folder.name}-tokenizers", num_units)
    tokenizer = processor.tokenizer
    text = _tower(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 32, 2)
    speech = _tower(
        processor.speech_vocab_size,
        processor.speech_bos_token_id,
        processor.speech_eos_token_id,
        processor.speech_pad_token_id,
        48,
        3,
    )
    torch.manual_seed(seed)
    model = ZipperForConditionalGeneration(
        ZipperConfig(text_config=text, speech_config=speech, initializer_range=0.2)
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 0:  # the cross-attention and input-projection gates
                parameter.fill_(gate)
    return write_hub_folder(model, folder, exposed=AUTO_CLASSES, processor=processor, overwrite=True)


# The char tokenizer's ids: <s> 0, </s> 1, <pad> 2, <unk> 3, space 4, a..z 5..30, apostrophe 31.
CHARS = " abcdefghijklmnopqrstuvwxyz'"


def build_char_tokenizer(folder, add_eos: bool = False) -> str:
    """A character-level tokenizer that adds <s> (Llama's behaviour) or <s> … </s> (`add_eos`); returns the folder."""
    vocab = {token: index for index, token in enumerate(["<s>", "</s>", "<pad>", "<unk>", *CHARS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>" if add_eos else "<s> $A", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    return str(folder)
