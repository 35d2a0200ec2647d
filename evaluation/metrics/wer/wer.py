"""Word and character error rates after Whisper's English normalisation, an `evaluate` metric following the
open_asr_leaderboard protocol.

Load it by path, offline: `evaluate.load(str(Path(towerzoo.evaluation.metrics.__file__).parent / "wer"))`. The
rules live in the sibling `error_rates.py` (evaluate copies it along with this script).
"""

import datasets
import evaluate

from .error_rates import error_rates

_DESCRIPTION = """
Corpus word error rate (WER) and character error rate (CER), computed with jiwer after both references and
predictions go through Whisper's English text normaliser (lower case, brackets and fillers removed, contractions and
titles expanded, numbers written as digits, British spellings made American, punctuation removed). Utterances whose
normalised reference is empty are dropped and counted. Rates are round(100 * rate, 2), as open_asr_leaderboard
reports them. Options change the protocol and are returned with the result: the mean of per-utterance rates instead
of the corpus rate (F5-TTS), apostrophes kept inside words (seed-tts-eval), no normalisation at all.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one transcript per utterance (an ASR model's output).
    references (`list` of `str`): the reference transcripts.
    normalize (`bool`, default True): apply Whisper's English normaliser to both sides.
    average (`str`, default "corpus"): "corpus" (total errors / total reference words or characters) or
        "utterance" (the mean of per-utterance rates).
    keep_apostrophes (`bool`, default False): keep apostrophes inside words ("don't") instead of Whisper's
        contraction expansion and apostrophe removal; needs normalize=True.
    spelling_mapping (`str` or `bool`, optional): the British -> American spelling table; None finds the one the
        installed whisper-normalizer or openai-whisper package ships, a path reads that JSON file, False skips it.
Returns:
    wer (`float`): word error rate in percent, rounded to two decimals.
    cer (`float`): character error rate in percent (spaces count as characters), rounded to two decimals.
    num_scored (`int`): utterances scored.
    num_dropped_empty_references (`int`): utterances dropped because their (normalised) reference is empty.
    normalize, average, keep_apostrophes: the options used.
    spelling_mapping (`dict` or None): entries and content hash of the spelling table used (None without
        normalisation).
Examples:
    >>> metric = evaluate.load("/path/to/evaluation/metrics/wer")
    >>> metric.compute(predictions=["mister smith has two cats"], references=["Mr. Smith has 2 cats."])["wer"]
    0.0
"""

_CITATION = """
@misc{open-asr-leaderboard,
  title={Open Automatic Speech Recognition Leaderboard},
  author={Srivastav, Vaibhav and Majumdar, Somshubra and Koluguri, Nithin and Moumen, Adel and Gandhi, Sanchit and others},
  year={2023},
  publisher={Hugging Face},
  howpublished={\\url{https://huggingface.co/spaces/hf-audio/open_asr_leaderboard}}
}
@inproceedings{radford2023robust,
  title={Robust Speech Recognition via Large-Scale Weak Supervision},
  author={Radford, Alec and Kim, Jong Wook and Xu, Tao and Brockman, Greg and McLeavey, Christine and Sutskever, Ilya},
  booktitle={ICML},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/huggingface/open_asr_leaderboard", "https://github.com/jitsi/jiwer"],
        )

    def _compute(
        self, predictions, references, normalize=True, average="corpus", keep_apostrophes=False, spelling_mapping=None
    ):
        return error_rates(
            predictions,
            references,
            normalize=normalize,
            average=average,
            keep_apostrophes=keep_apostrophes,
            spelling_mapping=spelling_mapping,
        )
