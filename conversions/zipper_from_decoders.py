"""`towerzoo convert zipper-from-decoders TEXT_LM_DIR SPEECH_LM_DIR OUT`: two transformers causal LMs (e.g. Llama
checkpoints) → a Zipper Hub folder with them as its text and speech towers (Zipper Sec. 3: the towers are pre-trained
unimodal decoders; only the new cross-attention and input projections start fresh).

Each tower's weights keep their own names under `text_model.` / `speech_model.`; every source key must land and every
tower key must be filled. New weights: cross-attention and projections N(0, initializer_range²), gates at 0, so the
check holds: with a random input of the other modality, each tower's logits equal its source LM's (recorded in
`verification.json`). A processor is written when the text LM folder holds a tokenizer and the speech LM folder a
speech tokenizer (`preprocessor_config.json`).
"""

from pathlib import Path

import torch
import transformers

from towerzoo.conversions.common import ConversionError, load_state_dict_file, read_json
from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.models.zipper import AUTO_CLASSES, ZipperConfig, ZipperForConditionalGeneration

INPUTS = ("TEXT_LM_DIR", "SPEECH_LM_DIR")
NEW_PARAMETERS = {
    r"^(text|speech)_cross_attention\.\d+\.gate$": "0 (tanh(0) = 0: the towers start as their sources)",
    r"^(text|speech)_input_projection\.gate$": "0",
    r"\.weight$": "N(0, initializer_range^2) (LayerNorm weights: 1)",
    r"\.bias$": "0",
}


def read_causal_lm_config(folder: Path, role: str) -> transformers.PretrainedConfig:
    """The config of a transformers causal LM folder; `role` ("text"/"speech") names it in errors."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(
            f"the {role} LM folder {folder} has no config.json; pass a transformers causal LM folder."
        )
    config_dict = read_json(folder / "config.json")
    model_type = config_dict.get("model_type")
    if model_type not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        raise ConversionError(f"the {role} LM has model_type={model_type!r}, which transformers does not know.")
    config = transformers.AutoConfig.for_model(**config_dict)
    if type(config) not in transformers.AutoModelForCausalLM._model_mapping:
        raise ConversionError(f"the {role} LM ({model_type}) has no causal-LM class in transformers.")
    return config


def reference_lm(config, state_dict: dict[str, torch.Tensor]) -> transformers.PreTrainedModel:
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state_dict, strict=False)
    model.tie_weights()
    return model.eval()


def build_from_decoders(text_dir: Path, speech_dir: Path, seed: int = 0, **config_overrides):
    """(model, dropped keys) with the two LMs as towers; `config_overrides` go to `ZipperConfig`."""
    text_config, speech_config = read_causal_lm_config(text_dir, "text"), read_causal_lm_config(speech_dir, "speech")
    try:
        config = ZipperConfig(text_config=text_config, speech_config=speech_config, **config_overrides)
        torch.manual_seed(seed)
        model = ZipperForConditionalGeneration(config)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    text_state, speech_state = load_state_dict_file(Path(text_dir)), load_state_dict_file(Path(speech_dir))
    for name, tower, state in (("text", model.text_model, text_state), ("speech", model.speech_model, speech_state)):
        result = tower.load_state_dict(state, strict=False)
        tied = set(getattr(tower, "_tied_weights_keys", None) or {}) if tower.config.tie_word_embeddings else set()
        missing = [key for key in result.missing_keys if key not in tied]
        if missing or result.unexpected_keys:
            raise ConversionError(
                f"the {name} LM's weights do not fit its own config: missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}; the checkpoint is truncated or from another architecture."
            )
        tower.tie_weights()
    return model.eval(), {
        "text": reference_lm(text_config, text_state),
        "speech": reference_lm(speech_config, speech_state),
    }


@torch.no_grad()
def verify_against_sources(model, references: dict, seed: int = 0) -> dict[str, float]:
    """Largest logit difference of each tower (zipped, attending to a random input of the other modality) from its
    source LM."""
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for modality, other in (("text", "speech"), ("speech", "text")):
        vocab, other_vocab = (model.tower(m).config.vocab_size for m in (modality, other))
        input_ids = torch.randint(0, vocab, (2, 9), generator=generator)
        source = torch.randint(0, other_vocab, (2, 11), generator=generator)
        source_mask = torch.ones_like(source)
        source_mask[1, 7:] = 0
        logits = model(
            input_ids=input_ids, source_input_ids=source, source_attention_mask=source_mask, output_modality=modality
        ).logits
        diffs[f"{modality}_logits"] = float((logits - references[modality](input_ids).logits).abs().max())
    return diffs


def build_processor(text_dir: Path, speech_dir: Path):
    """The Zipper processor when both folders carry their tokenizers, else None."""
    if not (Path(speech_dir) / "preprocessor_config.json").is_file():
        return None
    from towerzoo.models.zipper.processing_zipper import ZipperProcessor
    from towerzoo.models.zipper.speech_tokenization_zipper import SpeechTokenizer

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(text_dir))
    except (OSError, ValueError):
        return None
    try:
        return ZipperProcessor(SpeechTokenizer.from_pretrained(str(speech_dir)), tokenizer)
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"the speech tokenizer in {speech_dir} cannot serve a Zipper processor: {error}"
        ) from None


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
    speech_lm: Path | None = None,
    tolerance: float = 1e-5,
) -> Path:
    """Build, verify each tower against its source LM, and write the Hub folder."""
    if labels is not None or tokenizer is not None:
        raise ConversionError(
            "zipper-from-decoders reads the tokenizers from the two LM folders; drop --labels/--tokenizer."
        )
    if speech_lm is None:
        raise ConversionError("zipper-from-decoders needs two inputs: TEXT_LM_DIR SPEECH_LM_DIR OUT.")
    model, references = build_from_decoders(Path(input_path), Path(speech_lm))
    diffs = verify_against_sources(model, references)
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ConversionError(f"a zipped tower differs from its source LM by {worst:.3g} (> {tolerance:g}): {diffs}.")
    verification = {
        "source_format": "zipper-from-decoders",
        "source": {"text": str(input_path), "speech": str(speech_lm)},
        "reference": "each tower's source causal LM (gates at 0, a random input of the other modality attended to)",
        "max_abs_diff": worst,
        "diffs": diffs,
        "new_parameters": NEW_PARAMETERS,
    }
    return write_hub_folder(
        model,
        output_dir,
        exposed=AUTO_CLASSES,
        processor=build_processor(Path(input_path), Path(speech_lm)),
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
