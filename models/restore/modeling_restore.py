# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
r"""RESTORE (Yang et al., "RESTORE: Towards Feature Shift for Vision-Language Prompt Learning", ECCV 2024, arXiv
2403.06136) as a Hub-native model: CLIP with coupled prompts in both towers, a surgery block on each tower's output
and the feature-shift consistency loss.

Sources. The stored copy of arXiv 2403.06136v1 read here holds the abstract and the introduction; the paper's method
(its "feature shift", "feature shift consistency" and "surgery" parts) is therefore implemented from the official
code (Yaphabates/RESTORE_, `trainers/maple_fsa.py`, `clip/model.py`, `scripts/maple_fsa/`, the `MaPLe_FSA` trainer,
itself built on MaPLe) and from the definition the abstract gives: feature shift is "the variation of embeddings after
introducing the learned prompts". Where the two differ, both are options (`feature_shift_loss`).

Notation: CLIP text tower T with width d_t (512), vision tower V with width d_v (768), L layers each, n context
tokens, prompt depth J, projections W_t, W_v into the joint space, logit scale s = exp(logit_scale).

1. Coupled prompts (MaPLe's design, which RESTORE trains):
   * text, layer 0: the class prompt "a photo of a {class}." is tokenised as [SOS] w_1 … w_m [EOS]; the embeddings
     of w_1 … w_n are replaced by the learned context P_t^0 (n × d_t), initialised from those words' embeddings
     (`prompt_init="template"`: the prompted text starts as the template) or N(0, 0.02²); positions are added after.
   * text, layers 1 … J-1: before layer i, the hidden states at positions 1 … n are replaced by P_t^i (n × d_t,
     N(0, 0.02²)), without positions. Causal attention lets them reach the class-name tokens and [EOS].
   * vision, layer 0: P_v^0 = F_0(P_t^0) with F_i a Linear(d_t → d_v) per layer, appended after the patches, after
     the position embeddings and before CLIP's pre-LayerNorm: [CLS, patches, P_v^0].
   * vision, layers 1 … J-1: before layer i, the last n hidden states are replaced by P_v^i = F_i(P_t^i).
   * outputs as CLIP: f_t = W_t LN_final(h_[EOS]), f_v = W_v LN_post(h_[CLS]).
2. Surgery (both towers, on the projected embeddings before normalisation):
        A(f) = f + FFN(LN(f)),  FFN = Linear(d → 4d) → QuickGELU → Linear(4d → d)
        f' = r·A(f) + (1 − r)·f = f + r·FFN(LN(f))
   with ratios r_t, r_v (`surgery_ratio_*`, 0.01-0.15 per dataset in the official scripts). The official trainer
   raises them once, after epoch max_epoch // 3, by bump × (1/(J-1)) Σ_i ‖P^iᵀP^i‖_F of the same tower
   (`bump_surgery_ratios`). The ratios are buffers: the official code never trains them (it reads `.data`).
   The official FFN starts from PyTorch's default init; here its output projection starts at zero
   (`surgery_zero_init=True`), so an untrained model is exactly CLIP with prompts.
3. Classification: logits = s · norm(f'_v) · norm(f'_t(c))ᵀ over the class prompts c of `config.classnames`.
4. Feature shift and consistency, λ = `feature_shift_loss_weight` (1; 0.5 for DTD in the official scripts):
   * `"prompt_gram"`, the official code: for each deep layer i = 1 … J-1,
        s_t^i = ‖P_t^iᵀ P_t^i‖_F / ‖P_t^iᵀ P_t^i‖_F at initialisation,  s_v^i likewise on P_v^i = F_i(P_t^i),
        L_fs = Σ_i (s_t^i − s_v^i)²
     (the reference norms are buffers, computed when the prompts are initialised).
   * `"embedding"`, the abstract's definition: the shift of a tower is the relative change of its output embeddings
     against frozen CLIP (no prompts, no surgery) on the same inputs,
        δ_v = mean_x ‖f_v(x) − f_v⁰(x)‖ / ‖f_v⁰(x)‖,  δ_t = mean_c ‖f_t(c) − f_t⁰(c)‖ / ‖f_t⁰(c)‖,
        L_fs = (δ_t − δ_v)²
     (f before surgery, which corrects shifts rather than measuring them). `feature_shift` reports δ per layer
     (hidden state at [CLS] / [EOS]) for diagnosis.
   loss = CE(logits, labels) + λ·L_fs.
5. Training: only P_t^{0…J-1}, F_{0…J-1} and the surgery blocks train (`freeze_clip`); the official recipe is SGD,
   lr 0.0035, batch 4, cosine schedule, 16 shots (see towerzoo's `training/restore.py`).

With `num_prompt_tokens=0` (or `prompt_depth=0`) and the surgery at its zero initialisation the model is CLIP's
zero-shot classifier with the template prompts, to the last bit of fp32 arithmetic order; `zero_shot=True` runs that
path on any model.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, cached_file

from .clip_weights import rename_clip_weights
from .configuration_restore import RestoreConfig, RestoreTextConfig, RestoreVisionConfig
from .tower_attention import AttentionBackendHints
from .tower_blocks import ClipTextTower, ClipVisionEmbeddings, ClipVisionLayer, init_clip_module

# An adapters-only folder holds this file instead of the full weights; the rest comes from the base CLIP.
ADAPTERS_FILE = "restore_adapters.safetensors"
# What RESTORE adds to CLIP: the parameters and buffers an adapters-only folder stores.
RESTORE_OWN_PREFIXES = (
    "prompt_learner.",
    "text_surgery.",
    "vision_surgery.",
    "surgery_ratios",
    "feature_shift_reference",
    "class_input_ids",
    "class_attention_mask",
)


@dataclass
class RestoreOutput(ModelOutput):
    """
    Args:
        loss: cross-entropy + λ × feature-shift consistency (with `labels`).
        logits (`(batch, num_classes)`): scaled cosine similarities of the images to the class prompts.
        classification_loss, feature_shift_loss: the two terms of `loss` (unweighted).
        image_embeds (`(batch, projection_dim)`), text_embeds (`(num_classes, projection_dim)`): L2-normalised.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    classification_loss: torch.FloatTensor | None = None
    feature_shift_loss: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


@dataclass
class Prompts:
    """One forward's prompts: per tower, the layer-0 context and the deep prompts of layers 1 … J-1."""

    text_context: torch.Tensor
    text_deep: list[torch.Tensor]
    vision_context: torch.Tensor
    vision_deep: list[torch.Tensor]


# --------------------------------------------------------------------------------------------------------------------
# Prompts and surgery
# --------------------------------------------------------------------------------------------------------------------


class RestorePromptLearner(nn.Module):
    """The learned text context of every prompted layer and the per-layer maps F_i into the vision tower."""

    def __init__(self, config: RestoreConfig):
        super().__init__()
        n, depth = config.num_prompt_tokens, config.prompt_depth
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        self.text_context = nn.Parameter(torch.zeros(n, text_width))
        self.text_deep = nn.Parameter(torch.zeros(depth - 1, n, text_width)) if depth > 1 else None
        self.vision_projections = nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(depth)])
        for projection in self.vision_projections:
            projection.torch_default_init = True

    def forward(self) -> Prompts:
        deep = [] if self.text_deep is None else list(self.text_deep.unbind(0))
        vision = [
            projection(prompt) for projection, prompt in zip(self.vision_projections, [self.text_context, *deep])
        ]
        return Prompts(self.text_context, deep, vision[0], vision[1:])

    def gram_norms(self, prompts: Prompts | None = None) -> torch.Tensor:
        """(J-1, 2): ‖PᵀP‖_F of each deep layer's text and vision prompts (computed as ‖PPᵀ‖_F, the same value), of
        `prompts` (this forward's) or of fresh ones."""
        prompts = self() if prompts is None else prompts
        norms = [
            torch.stack([torch.linalg.matrix_norm(t @ t.T), torch.linalg.matrix_norm(v @ v.T)])
            for t, v in zip(prompts.text_deep, prompts.vision_deep)
        ]
        return torch.stack(norms) if norms else self.text_context.new_zeros(0, 2)


class SurgeryBlock(nn.Module):
    """f + r·FFN(LN(f)), i.e. r·A(f) + (1 − r)·f with A(f) = f + FFN(LN(f))."""

    def __init__(self, width: int, hidden_size: int, eps: float, zero_init: bool):
        super().__init__()
        self.layer_norm = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, hidden_size)
        self.act = ACT2FN["quick_gelu"]
        self.fc2 = nn.Linear(hidden_size, width)
        self.fc1.torch_default_init = self.fc2.torch_default_init = True
        self.fc2.zero_init = zero_init  # read by `_init_weights`: the block starts as the identity

    def forward(self, features: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return features + ratio.to(features.dtype) * self.fc2(self.act(self.fc1(self.layer_norm(features))))


# --------------------------------------------------------------------------------------------------------------------
# Pre-trained base class and towers
# --------------------------------------------------------------------------------------------------------------------


class RestorePreTrainedModel(AttentionBackendHints, PreTrainedModel):
    config_class = RestoreConfig
    base_model_prefix = "restore"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the losses are batch means that ignore `num_items_in_batch`: Trainer must divide them for gradient accumulation
    accepts_loss_kwargs = False
    _no_split_modules = ["ClipTextEmbeddings", "ClipTextLayer", "ClipVisionEmbeddings", "ClipVisionLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI CLIP's initialisation for the towers; prompts N(0, 0.02²); prompt maps and surgery layers as
        nn.Linear's default (the official code's); the surgery's output projection at zero
        (with `surgery_zero_init`); reference norms and ratios from the fresh prompts and the config."""
        if isinstance(module, RestorePromptLearner):
            init.normal_(module.text_context, std=0.02)
            if module.text_deep is not None:
                init.normal_(module.text_deep, std=0.02)
        elif init_clip_module(module, getattr(self.config, "initializer_range", 0.02)):
            pass
        elif isinstance(module, RestoreForImageClassification):  # runs after its children
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.copy_(module.surgery_ratios, module.initial_surgery_ratios())
            if module.prompt_learner is not None and self.config.prompt_depth > 1:
                init.copy_(module.feature_shift_reference, module.prompt_learner.gram_norms())
            init.zeros_(module.class_input_ids)
            init.zeros_(module.class_attention_mask)


class RestoreTextModel(ClipTextTower, RestorePreTrainedModel):
    """CLIP's text transformer taking the text prompts (`context`, `deep_prompts`: see `ClipTextTower.forward`);
    `pooler_output` is the final-LayerNorm'd [EOS] state."""

    config_class = RestoreTextConfig
    base_model_prefix = "text_model"
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: RestoreTextConfig):
        super().__init__(config)
        self.build_text_tower(config)
        self.post_init()


class RestoreVisionModel(RestorePreTrainedModel):
    """CLIP's ViT taking the vision prompts (appended after the patches); `pooler_output` is LN_post([CLS])."""

    config_class = RestoreVisionConfig
    base_model_prefix = "vision_model"
    input_modalities = ("image",)

    def __init__(self, config: RestoreVisionConfig):
        super().__init__(config)
        self.embeddings = ClipVisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([ClipVisionLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        context: torch.Tensor | None = None,
        deep_prompts: list[torch.Tensor] = (),
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        context (`(n, hidden_size)`, optional): appended after the patches before the pre-LayerNorm (layer 0's prompt).
        deep_prompts (list of `(n, hidden_size)`): prompt i replaces the last n tokens before layer i + 1.
        """
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding)
        n = 0 if context is None else context.shape[0]
        if n:
            context = context.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            hidden_states = torch.cat([hidden_states, context], dim=1)
        hidden_states = self.pre_layernorm(hidden_states)
        all_states = [hidden_states]
        for index, layer in enumerate(self.layers):
            if 0 < index <= len(deep_prompts):
                prompt = deep_prompts[index - 1].to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
                hidden_states = torch.cat([hidden_states[:, : hidden_states.shape[1] - n], prompt], dim=1)
            hidden_states = layer(hidden_states)
            all_states.append(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.post_layernorm(hidden_states[:, 0]),
            hidden_states=tuple(all_states) if output_hidden_states else None,
        )


# --------------------------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------------------------


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


def relative_shift(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """mean over rows of ‖features − reference‖ / ‖reference‖ (the feature shift of a batch)."""
    return ((features - reference).norm(dim=-1) / reference.norm(dim=-1)).mean()


class RestoreForImageClassification(RestorePreTrainedModel):
    """CLIP's towers with RESTORE's prompts and surgery, classifying images among `config.classnames`."""

    def __init__(self, config: RestoreConfig):
        super().__init__(config)
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        self.text_model = RestoreTextModel._from_config(config.text_config)
        self.vision_model = RestoreVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.visual_projection.init_std = vision_width**-0.5
        self.text_projection.init_std = text_width**-0.5
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.prompt_learner = RestorePromptLearner(config) if config.prompted else None
        if config.surgery:
            sizes = (config.projection_dim, config.surgery_hidden_size, config.text_config.layer_norm_eps)
            self.text_surgery = SurgeryBlock(*sizes, zero_init=config.surgery_zero_init)
            self.vision_surgery = SurgeryBlock(*sizes, zero_init=config.surgery_zero_init)
        # current surgery ratios (r_t, r_v) and the prompts' reference Gram norms ((J-1) × (text, vision))
        self.register_buffer("surgery_ratios", torch.zeros(2))
        self.register_buffer("feature_shift_reference", torch.ones(max(config.prompt_depth - 1, 0), 2))
        # the tokenised class prompts: one row per class, padded to the text tower's context length
        shape = (len(config.classnames), config.text_config.max_position_embeddings)
        self.register_buffer("class_input_ids", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("class_attention_mask", torch.zeros(shape, dtype=torch.long))
        self.post_init()
        self.freeze_clip_weights()

    def freeze_clip_weights(self) -> None:
        """With `config.freeze_clip`, CLIP's towers, projections and logit scale get `requires_grad=False` (only
        prompts and surgery train). Called at construction and after loading, which hands back fresh parameters."""
        if self.config.freeze_clip:
            for module in (self.text_model, self.vision_model, self.visual_projection, self.text_projection):
                module.requires_grad_(False)
            self.logit_scale.requires_grad_(False)

    # ---- state the training loop and the harnesses change -----------------------------------------------------
    def initial_surgery_ratios(self) -> torch.Tensor:
        return torch.tensor([self.config.surgery_ratio_text, self.config.surgery_ratio_vision])

    @torch.no_grad()
    def reset_feature_shift_reference(self) -> None:
        """Take the current prompts' Gram norms as the reference of the `"prompt_gram"` consistency (s = 1)."""
        if self.prompt_learner is not None and self.config.prompt_depth > 1:
            self.feature_shift_reference.copy_(self.prompt_learner.gram_norms())

    @torch.no_grad()
    def bump_surgery_ratios(self) -> torch.Tensor:
        """The official trainer's one-off raise of the surgery ratios (after epoch max_epoch // 3):
        r_t += bump_t · mean_i ‖P_t^iᵀP_t^i‖_F, r_v += bump_v · mean_i ‖P_v^iᵀP_v^i‖_F. Returns the new ratios."""
        if self.prompt_learner is not None and self.config.prompt_depth > 1:
            shift = self.prompt_learner.gram_norms().mean(dim=0)
            bump = torch.tensor([self.config.surgery_bump_text, self.config.surgery_bump_vision], device=shift.device)
            self.surgery_ratios.add_(bump * shift)
        return self.surgery_ratios.clone()

    @torch.no_grad()
    def set_classnames(self, classnames: list[str], processor) -> None:
        """Classify among `classnames` from now on (labels index this list): tokenises their prompts with
        `processor` (a `RestoreProcessor` or a CLIP tokenizer) and updates `config.classnames`/`id2label`."""
        classnames = list(classnames)
        if not classnames:
            raise ValueError("set_classnames needs at least one class name.")
        tokenizer = getattr(processor, "tokenizer", processor)
        template, n = self.config.prompt_template, self.config.num_prompt_tokens
        room = len(tokenizer(template.split("{}")[0].strip(), add_special_tokens=False)["input_ids"])
        if self.config.prompted and self.config.prompt_init == "template" and n > room:
            raise ValueError(
                f"{n} context tokens take the template's first {n} tokens, but {template!r} has {room} before the "
                "class name; use a longer template or fewer num_prompt_tokens."
            )
        length = self.config.text_config.max_position_embeddings
        encoded = tokenizer(
            [template.format(name) for name in classnames],
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        self.class_input_ids = encoded["input_ids"].to(self.logit_scale.device)
        self.class_attention_mask = encoded["attention_mask"].to(self.logit_scale.device)
        self.config.classnames = classnames
        self.config.id2label = dict(enumerate(classnames))
        self.config.label2id = {name: index for index, name in enumerate(classnames)}

    def class_prompts(self) -> tuple[torch.LongTensor, torch.Tensor]:
        """The class prompts' `input_ids` and `attention_mask`."""
        if self.class_input_ids.numel() == 0 or not bool(self.class_attention_mask.any()):
            raise ValueError(
                "the model holds no class prompts; call model.set_classnames(classnames, processor) first."
            )
        return self.class_input_ids, self.class_attention_mask

    # ---- CLIP weights and adapters-only folders ------------------------------------------------------------------
    @torch.no_grad()
    def load_clip_weights(self, clip_state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
        """Fill the towers, projections and logit scale from a transformers `CLIPModel` state dict (every CLIP key
        used or dropped, every non-RESTORE key filled). Returns {dropped key: reason}."""
        renamed, dropped, unknown = rename_clip_weights(clip_state_dict, vision_prefix="vision_model")
        if unknown:
            raise ValueError(
                f"{len(unknown)} key(s) are not transformers CLIPModel weights: {', '.join(unknown[:6])}; the base "
                "checkpoint must be a CLIPModel (not CLIPVisionModel/CLIPTextModel)."
            )
        result = self.load_state_dict(renamed, strict=False)
        missing = [key for key in result.missing_keys if not key.startswith(RESTORE_OWN_PREFIXES)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"the CLIP weights do not fit this config: missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}; the config's towers must match the CLIP checkpoint."
            )
        return dropped

    @torch.no_grad()
    def start_context_from_template(self) -> None:
        """`prompt_init="template"`: the layer-0 text context becomes the token embeddings of the template's first n
        tokens (so the prompted text starts as the template), and the consistency reference is retaken."""
        if self.prompt_learner is None or self.config.prompt_init != "template":
            return
        input_ids, _ = self.class_prompts()
        n = self.config.num_prompt_tokens
        self.prompt_learner.text_context.copy_(self.text_model.embeddings.token_embedding(input_ids[0, 1 : 1 + n]))
        self.reset_feature_shift_reference()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What RESTORE adds to CLIP: prompts, surgery blocks, their ratios and references, the class prompts."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(RESTORE_OWN_PREFIXES)}

    def save_pretrained(self, save_directory, *args, adapters_only: bool = False, **kwargs):
        """`save_pretrained`; with `adapters_only=True` only `adapter_state_dict()` is written (as `ADAPTERS_FILE`)
        and `config.base_model_name_or_path` must name the base CLIP, which loading fetches."""
        if not adapters_only:
            return super().save_pretrained(save_directory, *args, **kwargs)
        if not self.config.base_model_name_or_path:
            raise ValueError(
                "an adapters-only folder needs config.base_model_name_or_path (the CLIPModel folder or Hub id the "
                "model was built from); set it, or save the full model."
            )
        super().save_pretrained(save_directory, *args, state_dict=self.adapter_state_dict(), **kwargs)
        folder = Path(save_directory)
        weights = sorted(folder.glob("model*.safetensors"))
        if len(weights) != 1:
            raise ValueError(f"expected one weights file for the adapters, found {[w.name for w in weights]}.")
        os.replace(weights[0], folder / ADAPTERS_FILE)
        (folder / "model.safetensors.index.json").unlink(missing_ok=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`from_pretrained`, which also reads adapters-only folders: CLIP from `config.base_model_name_or_path`
        (a folder or Hub id of a transformers `CLIPModel`), then the stored prompts, surgery blocks and class
        prompts on top."""
        hub = {
            k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs
        }
        adapters = cached_file(
            pretrained_model_name_or_path,
            ADAPTERS_FILE,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub,
        )
        if adapters is None:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        else:
            model = cls._from_adapters(pretrained_model_name_or_path, adapters, kwargs, hub)
        if isinstance(model, RestoreForImageClassification):
            model.freeze_clip_weights()
        return model

    @classmethod
    def _from_adapters(cls, path, adapters_file: str, kwargs: dict, hub: dict):
        from safetensors.torch import load_file
        from transformers import CLIPModel

        config = kwargs.get("config") or cls.config_class.from_pretrained(path, **hub)
        base = config.base_model_name_or_path
        if not base:
            raise ValueError(f"{path} is an adapters-only folder without base_model_name_or_path in its config.")
        try:
            clip = CLIPModel.from_pretrained(base, **{k: v for k, v in hub.items() if k != "subfolder"})
        except (OSError, ValueError) as error:
            raise OSError(
                f"{path} holds RESTORE's adapters only; its base CLIP {base!r} could not be loaded ({error}). Make "
                "it available (download it, or point config.base_model_name_or_path at a local CLIPModel folder)."
            ) from error
        if kwargs.get("attn_implementation") is not None:
            config._attn_implementation = kwargs["attn_implementation"]
        model = cls(config)
        model.load_clip_weights(clip.state_dict())
        adapters = load_file(adapters_file)
        result = model.load_state_dict(adapters, strict=False)
        missing = [key for key in result.missing_keys if key.startswith(RESTORE_OWN_PREFIXES)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{adapters_file} does not fit the config: missing {missing}, unexpected {result.unexpected_keys}."
            )
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        return model.eval()

    # ---- features ----------------------------------------------------------------------------------------------
    def prompts(self) -> Prompts | None:
        return None if self.prompt_learner is None else self.prompt_learner()

    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompts: Prompts | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Projected (not normalised, before surgery) text embeddings as `pooler_output`; the class prompts by
        default; no prompts when `prompts` is None."""
        if input_ids is None:
            input_ids, attention_mask = self.class_prompts()
        outputs = self.text_model(
            input_ids,
            attention_mask,
            context=None if prompts is None else prompts.text_context,
            deep_prompts=() if prompts is None else prompts.text_deep,
            output_hidden_states=output_hidden_states,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        prompts: Prompts | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Projected (not normalised, before surgery) image embeddings as `pooler_output`; no prompts when `prompts`
        is None."""
        outputs = self.vision_model(
            pixel_values,
            context=None if prompts is None else prompts.vision_context,
            deep_prompts=() if prompts is None else prompts.vision_deep,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
        )
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    def _feature_shift_loss(self, prompts, text_features, image_features, input_ids, attention_mask, pixel_values):
        if self.config.feature_shift_loss == "prompt_gram" and self.config.prompt_depth > 1:
            shifts = self.prompt_learner.gram_norms(prompts) / self.feature_shift_reference
            return ((shifts[:, 0] - shifts[:, 1]) ** 2).sum()
        if self.config.feature_shift_loss == "embedding":
            with torch.no_grad():
                text_reference = self.get_text_features(input_ids, attention_mask).pooler_output
                image_reference = self.get_image_features(pixel_values).pooler_output
            shift_text = relative_shift(text_features, text_reference)
            return (shift_text - relative_shift(image_features, image_reference)) ** 2
        return text_features.new_zeros(())

    def _class_text_side(self, input_ids, attention_mask, prompts, surgery: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(text features, after surgery) of the class prompts. Without gradients they are computed once and reused
        until a weight, a buffer, the prompts or the autocast state changes (evaluation scores every batch against
        the same classes; for ImageNet's 500 base classes the text side is most of the work)."""
        key = None
        if not torch.is_grad_enabled():
            versions = tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))
            autocast = torch.is_autocast_enabled(input_ids.device.type)
            key = (
                prompts is None,
                surgery,
                input_ids.data_ptr(),
                input_ids._version,
                input_ids.shape,
                versions,
                autocast,
            )
            cached = getattr(self, "_text_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        features = self.get_text_features(input_ids, attention_mask, prompts).pooler_output
        out = self.text_surgery(features, self.surgery_ratios[0]) if surgery else features
        if key is not None:
            self._text_cache = (key, (features, out))
        return features, out

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        zero_shot: bool = False,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RestoreOutput | tuple:
        r"""
        labels (`(batch,)`, optional): class indices into `config.classnames`; the loss is CE + λ·L_fs.
        input_ids, attention_mask (optional): class prompts to score instead of the stored ones.
        zero_shot (`bool`): plain CLIP (no prompts, no surgery) on the template prompts.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None:
            input_ids, attention_mask = self.class_prompts()
        prompts = None if zero_shot else self.prompts()
        surgery = self.config.surgery and not zero_shot
        text_features, text_out = self._class_text_side(input_ids, attention_mask, prompts, surgery)
        image_features = self.get_image_features(pixel_values, prompts, interpolate_pos_encoding).pooler_output
        image_out = self.vision_surgery(image_features, self.surgery_ratios[1]) if surgery else image_features
        text_embeds, image_embeds = _normalize(text_out), _normalize(image_out)
        logits = self.logit_scale.exp() * image_embeds @ text_embeds.t()
        loss = classification_loss = shift_loss = None
        if labels is not None:
            if prompts is not None:
                shift_loss = self._feature_shift_loss(
                    prompts, text_features, image_features, input_ids, attention_mask, pixel_values
                )
            else:
                shift_loss = logits.new_zeros(())
            classification_loss = F.cross_entropy(logits, labels.to(logits.device))
            loss = classification_loss + self.config.feature_shift_loss_weight * shift_loss
        output = RestoreOutput(
            loss=loss,
            logits=logits,
            classification_loss=classification_loss,
            feature_shift_loss=shift_loss,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
        )
        return output if return_dict else output.to_tuple()


@dataclass
class FeatureShift:
    """Each tower's feature shift on a batch and their discrepancy (see the module docstring, item 4).

    `text[l]`, `vision[l]`: mean relative change ‖h − h⁰‖/‖h⁰‖ against frozen CLIP of the pooled hidden state
    ([EOS] / [CLS]) after layer l (0 = embeddings; L = the last layer), and last, of the projected embedding.
    """

    text: torch.Tensor
    vision: torch.Tensor

    @property
    def discrepancy(self) -> torch.Tensor:
        return (self.text - self.vision).abs()


@torch.no_grad()
def feature_shift(
    model: RestoreForImageClassification,
    pixel_values: torch.FloatTensor,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> FeatureShift:
    """Each modality's feature shift (per layer and of the output embedding) caused by the learned prompts on this
    batch of images and the class prompts (or `input_ids`), against the same model without prompts."""
    if input_ids is None:
        input_ids, attention_mask = model.class_prompts()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    eos = model.text_model.end_of_text_positions(input_ids)

    def text_states(prompts):
        outputs = model.get_text_features(input_ids, attention_mask, prompts, output_hidden_states=True)
        return [state[rows, eos] for state in outputs.hidden_states] + [outputs.pooler_output]

    def vision_states(prompts):
        outputs = model.get_image_features(pixel_values, prompts, output_hidden_states=True)
        return [state[:, 0] for state in outputs.hidden_states] + [outputs.pooler_output]

    prompts = model.prompts()
    shifts = {}
    for name, states in (("text", text_states), ("vision", vision_states)):
        shifts[name] = torch.stack([relative_shift(a, b) for a, b in zip(states(prompts), states(None))])
    return FeatureShift(**shifts)


__all__ = [
    "FeatureShift",
    "RestoreForImageClassification",
    "RestorePreTrainedModel",
    "RestoreTextModel",
    "RestoreVisionModel",
    "feature_shift",
]
