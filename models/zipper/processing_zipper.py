"""Zipper processor: a speech tokenizer (single-stream units) and a text tokenizer, turning (audio, text) pairs into
the two token streams Zipper's towers read.

The speech tokenizer is held under the attribute name `feature_extractor`: `ProcessorMixin` picks the Auto class of
an attribute from its name, and an attribute named `speech_tokenizer` would be loaded with `AutoTokenizer`.
`processor.speech_tokenizer` names the same object.

Token layout, per task:

| task | `source_input_ids` (input modality)          | `input_ids` with the output given (training) | without (inference) |
|------|----------------------------------------------|----------------------------------------------|---------------------|
| asr  | [speech_bos] units [speech_eos]              | [bos] text tokens [eos]                      | [bos]               |
| tts  | text with the text tokenizer's own specials, | [speech_bos] units [speech_eos]              | [speech_bos]        |
|      | plus [eos] when it does not end with one     |                                              |                     |

Sequences are right-padded; `labels` are `input_ids` with padding set to -100 (the model shifts them). Speech unit ids
are 0..K-1 and the speech specials default to K, K+1, K+2, so the speech tower's vocabulary is `speech_vocab_size`.
"""

import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .speech_tokenization_zipper import SpeechInputError, SpeechTokenizer

try:
    import soundfile
except ImportError:
    soundfile = None

TASKS = ("asr", "tts")
MODALITIES = ("text", "speech")
IGNORE_INDEX = -100


def load_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Samples (float32, channels averaged) and sampling rate of an audio file, read with soundfile."""
    if soundfile is None:
        raise ImportError(
            "reading audio files needs the soundfile package (pip install soundfile); or pass the samples as "
            "arrays together with sampling_rate"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as error:
        raise SpeechInputError(f"{path}: cannot decode audio ({error})") from error
    return samples.mean(axis=1), rate


class ZipperProcessor(ProcessorMixin):
    r"""Pairs a single-stream speech tokenizer with a text tokenizer for Zipper's ASR and TTS.

    Args:
        feature_extractor (`SpeechTokenizer`): the speech tokenizer; it must give one unit per frame
            (`num_codebooks` None, e.g. `KMeansSpeechTokenizer`). Also reachable as `speech_tokenizer`.
        tokenizer: any transformers tokenizer with a bos and an eos token; its pad token pads text (the eos token
            when it has none).
        speech_bos_token_id, speech_eos_token_id, speech_pad_token_id (`int`, defaults to K, K+1, K+2): the speech
            specials; distinct, and not unit ids (>= K).
        sampling_rate (`int`, defaults to the speech tokenizer's): the rate of `batch_decode`'s waveforms.
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        speech_bos_token_id: int | None = None,
        speech_eos_token_id: int | None = None,
        speech_pad_token_id: int | None = None,
        sampling_rate: int | None = None,
        **kwargs,
    ):
        super().__init__(feature_extractor, tokenizer, **kwargs)
        # Checked by behaviour, not class: remote code may load the class twice (AutoFeatureExtractor and this module).
        if not hasattr(feature_extractor, "num_codebooks") or not hasattr(feature_extractor, "encode"):
            raise TypeError(f"feature_extractor must be a SpeechTokenizer, got {type(feature_extractor).__name__}")
        if feature_extractor.num_codebooks is not None:
            raise ValueError(
                f"a Zipper speech tower reads one token stream, but {type(feature_extractor).__name__} gives "
                f"{feature_extractor.num_codebooks} tokens per frame; use a single-stream tokenizer such as "
                "KMeansSpeechTokenizer"
            )
        for name in ("bos", "eos"):
            if getattr(tokenizer, f"{name}_token_id") is None:
                raise ValueError(f"the text tokenizer needs a {name} token (its {name}_token_id is None)")
        units = feature_extractor.vocab_size
        self.speech_bos_token_id = units if speech_bos_token_id is None else int(speech_bos_token_id)
        self.speech_eos_token_id = units + 1 if speech_eos_token_id is None else int(speech_eos_token_id)
        self.speech_pad_token_id = units + 2 if speech_pad_token_id is None else int(speech_pad_token_id)
        specials = (self.speech_bos_token_id, self.speech_eos_token_id, self.speech_pad_token_id)
        if len(set(specials)) != 3 or min(specials) < units:
            raise ValueError(
                f"speech bos/eos/pad ids must be distinct and >= {units} (unit ids are 0..{units - 1}), got {specials}"
            )
        if sampling_rate is not None and sampling_rate != feature_extractor.sampling_rate:
            raise ValueError(
                f"sampling_rate {sampling_rate} differs from the speech tokenizer's {feature_extractor.sampling_rate}"
            )
        self.sampling_rate = feature_extractor.sampling_rate

    @property
    def speech_tokenizer(self) -> SpeechTokenizer:
        return self.feature_extractor

    @property
    def speech_vocab_size(self) -> int:
        """Token ids the speech tower must embed: the units and the speech specials."""
        return max(self.speech_bos_token_id, self.speech_eos_token_id, self.speech_pad_token_id) + 1

    @property
    def text_pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    @property
    def model_input_names(self) -> list[str]:
        return ["source_input_ids", "source_attention_mask", "input_ids", "attention_mask"]

    def __call__(
        self,
        audio=None,
        text: str | Sequence[str] | None = None,
        task: str = "asr",
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        padding: bool = True,
    ) -> BatchFeature:
        """Token streams for a batch (a single example is a batch of one).

        Args:
            audio: a 1-D float waveform (array or tensor), an audio file path, or a list of those. Arrays need
                `sampling_rate` and are resampled to the speech tokenizer's rate; files carry their own rate
                (multi-channel files are averaged; arrays must already be mono).
            text: a string or a list of strings.
            task: `"asr"` (audio in, text out) or `"tts"` (text in, audio out). The input modality is required;
                with the output given the batch also holds `labels`, without it `input_ids` is the output's bos.
            sampling_rate: the rate of array audio in Hz.
            return_tensors: `"pt"`, `"np"` or None (lists).
            padding: right-pad each stream to its longest sequence; without it, tensors need equal lengths.

        Returns a `BatchFeature` with `source_input_ids`, `source_attention_mask`, `input_ids`, `attention_mask` and,
        with the output given, `labels`.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        texts = None if text is None else self._text_batch(text)
        speech = None if audio is None else self._speech_units(audio, sampling_rate)
        if texts is not None and speech is not None and len(texts) != len(speech):
            raise ValueError(f"got {len(speech)} audio inputs and {len(texts)} texts; they must pair up")
        if task == "asr":
            if speech is None:
                raise ValueError("task 'asr' needs audio")
            source, source_pad = [self._wrap_speech(units) for units in speech], self.speech_pad_token_id
            target_bos, target_pad = self.tokenizer.bos_token_id, self.text_pad_token_id
            target = None if texts is None else [self._wrap_text(line) for line in texts]
        else:
            if texts is None:
                raise ValueError("task 'tts' needs text")
            source, source_pad = [self._source_text(line) for line in texts], self.text_pad_token_id
            target_bos, target_pad = self.speech_bos_token_id, self.speech_pad_token_id
            target = None if speech is None else [self._wrap_speech(units) for units in speech]
        data = {}
        data["source_input_ids"], data["source_attention_mask"] = self._pad(
            source, source_pad, padding, return_tensors
        )
        if target is None:
            data["input_ids"] = [[target_bos] for _ in source]
            data["attention_mask"] = [[1] for _ in source]
        else:
            data["input_ids"], data["attention_mask"] = self._pad(target, target_pad, padding, return_tensors)
            data["labels"] = [
                [token if keep else IGNORE_INDEX for token, keep in zip(row, mask)]
                for row, mask in zip(data["input_ids"], data["attention_mask"])
            ]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _text_batch(self, text: str | Sequence[str]) -> list[str]:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text is an empty list")
        for index, line in enumerate(texts):
            if not isinstance(line, str):
                raise TypeError(f"text[{index}] must be a string, got {type(line).__name__}")
            if not line.strip():
                raise ValueError(f"text[{index}] is empty")
        return texts

    def _speech_units(self, audio, sampling_rate: int | None) -> list[list[int]]:
        """Unit ids of each audio input (a batch, or one input)."""
        single = isinstance(audio, (str, os.PathLike, np.ndarray, torch.Tensor))
        batch = [audio] if single else list(audio)
        if not batch:
            raise ValueError("audio is an empty list")
        units = []
        for index, item in enumerate(batch):
            if isinstance(item, (str, os.PathLike)):
                waveform, rate = load_audio_file(item)
            elif sampling_rate is None:
                raise SpeechInputError(
                    "sampling_rate is required with audio arrays (the rate of the samples, in Hz); the speech "
                    f"tokenizer works at {self.feature_extractor.sampling_rate} Hz and resamples"
                )
            else:
                waveform, rate = item, sampling_rate
            try:
                ids = self.feature_extractor.encode(waveform, rate)
            except SpeechInputError as error:
                raise type(error)(f"audio[{index}]: {error}") from error
            units.append(ids.tolist())
        return units

    def _wrap_speech(self, units: list[int]) -> list[int]:
        return [self.speech_bos_token_id, *units, self.speech_eos_token_id]

    def _wrap_text(self, line: str) -> list[int]:
        ids = self.tokenizer(line, add_special_tokens=False)["input_ids"]
        return [self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id]

    def _source_text(self, line: str) -> list[int]:
        """The text tokenizer's own encoding (its special tokens included), ending with eos."""
        ids = list(self.tokenizer(line)["input_ids"])
        return ids if ids and ids[-1] == self.tokenizer.eos_token_id else [*ids, self.tokenizer.eos_token_id]

    @staticmethod
    def _pad(
        rows: list[list[int]], pad_id: int, padding: bool, return_tensors: str | None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Right-padded ids and their attention mask."""
        longest = max(len(row) for row in rows)
        if not padding:
            if return_tensors is not None and any(len(row) != longest for row in rows):
                raise ValueError(
                    f"sequences have different lengths ({sorted({len(row) for row in rows})}); use padding=True "
                    "or return_tensors=None"
                )
            return rows, [[1] * len(row) for row in rows]
        ids = [row + [pad_id] * (longest - len(row)) for row in rows]
        mask = [[1] * len(row) + [0] * (longest - len(row)) for row in rows]
        return ids, mask

    def batch_decode(
        self, ids, modality: str = "text", skip_special_tokens: bool = True, **kwargs
    ) -> list[str] | list[np.ndarray]:
        """Decode a batch of token ids (a 2-D tensor/array or a list of sequences) of one modality.

        `"text"`: strings from the text tokenizer; with `skip_special_tokens` a leading bos is dropped and each row
        ends before its first eos (`kwargs` go to the tokenizer). `"speech"`: float32 waveforms at `sampling_rate`,
        from the units before the first speech eos, speech bos and pad ids dropped (a row without units gives an
        empty waveform); `skip_special_tokens` does not apply, specials cannot be heard.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        rows = [torch.as_tensor(row).tolist() for row in ids]
        if not all(isinstance(row, list) for row in rows):
            raise ValueError("ids must be a batch of sequences (2-D); decode one sequence with `decode`")
        if modality == "text":
            if skip_special_tokens:
                rows = [self._strip(row, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) for row in rows]
            return self.tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens, **kwargs)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} for speech")
        waveforms = []
        for index, row in enumerate(rows):
            units = self._strip(row, self.speech_bos_token_id, self.speech_eos_token_id)
            units = [unit for unit in units if unit not in (self.speech_bos_token_id, self.speech_pad_token_id)]
            if not units:
                waveforms.append(np.zeros(0, dtype=np.float32))
                continue
            try:
                waveform = self.feature_extractor.decode(torch.tensor(units))
            except ValueError as error:
                raise ValueError(f"speech row {index}: {error}") from error
            waveforms.append(waveform.detach().cpu().numpy().astype(np.float32))
        return waveforms

    def decode(self, ids, modality: str = "text", skip_special_tokens: bool = True, **kwargs) -> str | np.ndarray:
        """`batch_decode` of one sequence."""
        return self.batch_decode([ids], modality, skip_special_tokens, **kwargs)[0]

    @staticmethod
    def _strip(row: list[int], bos: int, eos: int) -> list[int]:
        """The row without a leading bos, up to (not including) its first eos."""
        if row and row[0] == bos:
            row = row[1:]
        return row[: row.index(eos)] if eos in row else row
