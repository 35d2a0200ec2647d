"""`towerzoo convert bridgetower-transformers`: transformers' built-in BridgeTower (as on the Hub under
BridgeTower/…) → a towerzoo Hub folder.

Input: a folder with `config.json` and `model.safetensors` (or sharded safetensors / `pytorch_model.bin`), or a
state-dict file next to a `config.json`. The conversion's own check runs transformers' class and towerzoo's on the
same random inputs and records the largest difference in `verification.json`.
"""

from pathlib import Path

import torch
import transformers
from transformers.initialization import no_init_weights

from towerzoo.conversions.bridgetower_folder import (
    build_model,
    check_tolerance,
    heads_in,
    random_inputs,
    save_bridgetower,
    verification_record,
)
from towerzoo.conversions.bridgetower_keys import HEAD_PREFIXES, to_towerzoo
from towerzoo.conversions.common import ConversionError, load_state_dict_file, read_json
from towerzoo.models.bridgetower import BridgeTowerConfig, BridgeTowerModel


def config_from_transformers(hf_config: dict) -> BridgeTowerConfig:
    """Translate a transformers `BridgeTowerConfig` dict into towerzoo's, refusing what towerzoo cannot express."""
    if hf_config.get("model_type") != "bridgetower":
        raise ConversionError(
            f"config.json has model_type={hf_config.get('model_type')!r}, not 'bridgetower': this is not a "
            "transformers BridgeTower checkpoint (for original Lightning .ckpt files use `bridgetower-original`)."
        )
    text = dict(hf_config.get("text_config") or {})
    vision = dict(hf_config.get("vision_config") or {})
    eps = hf_config.get("layer_norm_eps", 1e-5)
    if text.get("layer_norm_eps", 1e-5) != eps:
        raise ConversionError(
            "text_config.layer_norm_eps differs from layer_norm_eps; transformers applies the first to the "
            "cross-modal layers and the second to the MLM head, which towerzoo's config cannot express."
        )
    if vision.get("remove_last_layer") or vision.get("stop_gradient"):
        raise ConversionError("vision_config.remove_last_layer/stop_gradient are not supported by towerzoo.")
    vision_width = vision.get("hidden_size", 768)
    text_keys = (
        "vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
        "hidden_dropout_prob attention_probs_dropout_prob max_position_embeddings type_vocab_size layer_norm_eps "
        "pad_token_id bos_token_id eos_token_id"
    ).split()
    vision_keys = (
        "hidden_size num_hidden_layers num_channels patch_size image_size layer_norm_eps share_layernorm".split()
    )
    return BridgeTowerConfig(
        text_config={k: text[k] for k in text_keys if k in text},
        vision_config={
            **{k: vision[k] for k in vision_keys if k in vision},
            "num_attention_heads": vision_width // 64,
            "intermediate_size": vision_width * 4,
        },
        hidden_size=hf_config.get("hidden_size", 768),
        num_hidden_layers=hf_config.get("num_hidden_layers", 6),
        num_attention_heads=hf_config.get("num_attention_heads", 12),
        # transformers builds the cross-modal layers from the text config
        intermediate_size=text.get("intermediate_size", 3072),
        hidden_act=hf_config.get("hidden_act", "gelu"),
        hidden_dropout_prob=text.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=text.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=eps,
        link_tower_layer_norm_eps=eps,
        link_tower_type=hf_config.get("link_tower_type", "add"),
        share_link_tower_layers=hf_config.get("share_link_tower_layers", False),
        share_cross_modal_transformer_layers=hf_config.get("share_cross_modal_transformer_layers", True),
        contrastive_hidden_size=hf_config.get("contrastive_hidden_size", 512),
        contrastive_image_features="cross_modal_transform",
        contrastive_cross_modal_head=True,
        logit_scale_init_value=hf_config.get("logit_scale_init_value", 2.6592),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
    )


def read_transformers_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read (config dict, un-prefixed state dict) from a transformers BridgeTower folder or state-dict file."""
    folder = path if path.is_dir() else path.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"no config.json next to {path}; a transformers BridgeTower checkpoint needs one.")
    hf_config = read_json(config_path)
    state_dict = load_state_dict_file(path)
    state_dict = {k.removeprefix("bridgetower."): v for k, v in state_dict.items()}
    return hf_config, state_dict


def convert(path: Path) -> tuple[BridgeTowerConfig, dict[str, torch.Tensor], dict[str, str], dict, dict]:
    """Return (towerzoo config, towerzoo state dict, dropped keys with reasons, transformers config dict, source
    state dict)."""
    hf_config, state_dict = read_transformers_checkpoint(Path(path))
    config = config_from_transformers(hf_config)
    new_state_dict, dropped = to_towerzoo(state_dict, config.task_head_layers)
    if config.tie_word_embeddings:
        new_state_dict.pop("mlm_score.decoder.weight", None)
    return config, new_state_dict, dropped, hf_config, state_dict


# head → transformers' class that carries it
REFERENCE_CLASSES = {
    "mlm": "BridgeTowerForMaskedLM",
    "itm": "BridgeTowerForImageAndTextRetrieval",
    "itc": "BridgeTowerForContrastiveLearning",
}


def reference_model(hf_config: dict, state_dict: dict[str, torch.Tensor], class_name: str) -> torch.nn.Module:
    """transformers' own class with the source weights: the conversion's reference (built without random init, then
    filled completely from the checkpoint)."""
    config = transformers.BridgeTowerConfig(**{k: v for k, v in hf_config.items() if k not in ("architectures",)})
    config.contrastive_hidden_size = hf_config.get("contrastive_hidden_size", 512)
    config.logit_scale_init_value = hf_config.get("logit_scale_init_value", 2.6592)
    with no_init_weights():
        model = getattr(transformers, class_name)(config)
    bare = class_name == "BridgeTowerModel"
    prefixed = {(k if bare or k.startswith(HEAD_PREFIXES) else f"bridgetower.{k}"): v for k, v in state_dict.items()}
    missing = [k for k in model.load_state_dict(prefixed, strict=False).missing_keys if k in model.state_dict()]
    if missing:
        raise ConversionError(
            f"the checkpoint lacks {len(missing)} tensor(s) transformers' {class_name} needs: {', '.join(missing[:5])}."
        )
    return model.eval()


@torch.no_grad()
def verify_against_transformers(model, hf_config: dict, source_state_dict: dict[str, torch.Tensor]) -> dict:
    """Run transformers' classes on the source weights and towerzoo's model on the converted ones; return the largest
    absolute difference per compared output (one transformers model per head; the base outputs from the first)."""
    inputs = random_inputs(model.config)
    ours = model.eval()
    got = (ours if isinstance(ours, BridgeTowerModel) else ours.bridgetower)(**inputs)
    heads = [head for head in heads_in(model.state_dict()) if head in REFERENCE_CLASSES]
    diffs = {}
    for head in heads or [None]:
        reference = reference_model(hf_config, source_state_dict, REFERENCE_CLASSES.get(head, "BridgeTowerModel"))
        if not diffs:
            base = reference if head is None else reference.bridgetower
            expected = base(**inputs)
            for name in ("text_features", "image_features", "pooler_output"):
                diffs[name] = float((getattr(expected, name) - getattr(got, name)).abs().max())
        if head == "mlm":
            diffs["mlm_logits"] = float((reference(**inputs).logits - ours.mlm_score(got.text_features)).abs().max())
        elif head == "itm":
            diffs["itm_logits"] = float((reference(**inputs).logits - ours.itm_score(got.pooler_output)).abs().max())
        elif head == "itc":
            expected, contrastive = reference(**inputs), ours._contrastive(got, return_loss=False)
            for name in ("text_embeds", "image_embeds", "cross_embeds"):
                diffs[f"itc_{name}"] = float((getattr(expected, name) - getattr(contrastive, name)).abs().max())
    return diffs


def run(
    input_path: Path,
    output_dir: Path,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-4,
    max_shard_size: str = "5GB",
    labels: Path | None = None,
) -> Path:
    """Convert, verify against transformers' own classes, and write the Hub folder."""
    config, state_dict, dropped, hf_config, source_state_dict = convert(input_path)
    model = build_model(config, state_dict, source=str(input_path))
    diffs = verify_against_transformers(model, hf_config, source_state_dict)
    check_tolerance(diffs, tolerance, reference="transformers' built-in BridgeTower")
    verification = verification_record("bridgetower-transformers", input_path, diffs, dropped, "transformers")
    return save_bridgetower(
        model,
        output_dir,
        tokenizer=tokenizer,
        verification=verification,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        labels=labels,
    )
