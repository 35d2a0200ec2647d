# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower (Xu et al., "BridgeTower: Building Bridges Between Encoders in Vision-Language Representation
Learning", AAAI 2023) as a Hub-native model.

Data flow (the original `BTTransformer.infer`, which transformers' port follows):
1. The text tower (RoBERTa) and vision tower (CLIP ViT) run over their inputs; the top `num_hidden_layers` layer
   outputs of each are kept (ViT outputs pass through the post-LayerNorm).
2. Each kept layer is projected to the cross-modal width and the modality-type embedding is added (0 text, 1 image;
   NLVR2 gives its second image type 2).
3. Cross-modal layer 0 reads LayerNorm(text[0]) and LayerNorm(image[0]); layer i > 0 reads the bridge
   `LinkTower(uni_modal[i], cross_modal_output[i-1])` of each modality. Each layer is self-attention,
   cross-attention to the other modality, feed-forward.
4. Poolers take token 0 of each stream; the heads read `cat(text_pooled, image_pooled)`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .configuration_bridgetower import BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig
from .tower_attention import AttentionBackendHints, padding_mask_for
from .tower_blocks import (
    BertLayer,
    ClassifierHead,
    ClipVisionEmbeddings,
    ClipVisionLayer,
    CrossModalLayer,
    LinkTower,
    MaskedLMHead,
    Pooler,
    RobertaEmbeddings,
)


@dataclass
class BridgeTowerModelOutput(ModelOutput):
    """
    Args:
        text_features (`(batch, text_len, hidden_size)`): last cross-modal layer, text stream.
        image_features (`(batch, image_len, hidden_size)`): last cross-modal layer, image stream.
        pooler_output (`(batch, 2 * hidden_size)`): `cat(text_pooled, image_pooled)`, what the heads read.
        text_last_hidden_state (`(batch, text_len, text_hidden)`): last text-tower layer (uni-modal).
        image_last_hidden_state (`(batch, image_len, vision_hidden)`): last ViT block, before any post-LayerNorm.
        hidden_states: with `output_hidden_states=True`, a tuple (text tower states, vision tower states,
            cross-modal `(text, image)` pairs).
    """

    text_features: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple | None = None


@dataclass
class BridgeTowerContrastiveOutput(ModelOutput):
    """
    Args:
        loss: contrastive loss (with `return_loss=True`).
        logits_per_text (`(batch, batch)`): scaled text-to-image similarities.
        logits_per_image (`(batch, batch)`): its transpose.
        text_embeds, image_embeds (`(batch, contrastive_hidden_size)`): L2-normalised uni-modal embeddings.
        cross_embeds: L2-normalised pooled cross-modal embedding (with `contrastive_cross_modal_head`).
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    cross_embeds: torch.FloatTensor | None = None
    hidden_states: tuple | None = None


class BridgeTowerPreTrainedModel(AttentionBackendHints, PreTrainedModel):
    config_class = BridgeTowerConfig
    base_model_prefix = "bridgetower"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the losses are batch means that ignore `num_items_in_batch`: Trainer must divide them for gradient accumulation
    accepts_loss_kwargs = False
    _no_split_modules = [
        "ClipVisionLayer",
        "BertLayer",
        "CrossModalLayer",
        "RobertaEmbeddings",
        "ClipVisionEmbeddings",
    ]

    def _build_encoder(self, config: BridgeTowerConfig) -> None:
        """Attach the encoder a task head reads, under `base_model_prefix` (ManagerTower's heads swap in theirs)."""
        setattr(self, self.base_model_prefix, BridgeTowerModel(config))

    def _init_weights(self, module: nn.Module) -> None:
        """The original init: N(0, 0.02) Linear/Embedding weights, zero biases, unit LayerNorms (BridgeTower's
        `init_weights`); OpenAI CLIP's scaled normal init inside the ViT (see `ClipVisionLayer`)."""
        std = self.config.initializer_range
        if isinstance(module, ClipVisionEmbeddings):
            width = module.class_embedding.shape[0]
            init.normal_(module.class_embedding, std=width**-0.5)
            init.normal_(module.position_embedding.weight, std=width**-0.5)
            init.normal_(module.patch_embedding.weight, std=std)
        elif isinstance(module, nn.Linear):
            # CLIP's ViT layers carry their own scaled stds (`init_std`, set in ClipVisionLayer)
            init.normal_(module.weight, std=getattr(module, "init_std", std))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
            # Slicing drops the "already loaded" flag, so check it here.
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LinkTower):
            if hasattr(module, "scaled_factor"):
                init.constant_(module.scaled_factor, 1.0)
            if hasattr(module, "beta"):
                init.constant_(module.beta, 0.5)
        elif isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, _ContrastiveHeads) and hasattr(module, "logit_scale"):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class BridgeTowerTextModel(BridgeTowerPreTrainedModel):
    """The RoBERTa text tower; returns every layer's output in `hidden_states` (embeddings first)."""

    config_class = BridgeTowerTextConfig
    base_model_prefix = "text_model"
    input_modalities = ("text",)

    def __init__(self, config: BridgeTowerTextConfig):
        super().__init__(config)
        self.embeddings = RobertaEmbeddings(config)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        hidden_states = self.embeddings(input_ids, token_type_ids)
        mask = padding_mask_for(self.config, hidden_states, attention_mask)
        all_states = [hidden_states]
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
            all_states.append(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=tuple(all_states))


class BridgeTowerVisionModel(BridgeTowerPreTrainedModel):
    """The CLIP ViT vision tower; returns every block's output in `hidden_states` (pre-LayerNorm'd input first)."""

    config_class = BridgeTowerVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: BridgeTowerVisionConfig):
        super().__init__(config)
        self.embeddings = ClipVisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([ClipVisionLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if not config.share_layernorm:
            self.separate_layernorms = nn.ModuleList(
                [nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in range(config.num_hidden_layers)]
            )
        self.post_init()

    def forward(
        self, pixel_values: torch.FloatTensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutput:
        hidden_states = self.pre_layernorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        all_states = [hidden_states]
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            all_states.append(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=tuple(all_states))

    def last_layer_norm(self) -> nn.LayerNorm:
        """The norm the original applies to the last block for its uni-modal (ITC) image features."""
        return self.post_layernorm if self.config.share_layernorm else self.separate_layernorms[-1]


def _per_layer(module_factory, count: int, shared: bool) -> nn.Module:
    return module_factory() if shared else nn.ModuleList([module_factory() for _ in range(count)])


class BridgeTowerModel(BridgeTowerPreTrainedModel):
    """The bare BridgeTower: towers, bridges and cross-modal encoder; outputs `BridgeTowerModelOutput`."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        hidden, layers = config.hidden_size, config.num_hidden_layers
        self.text_model = BridgeTowerTextModel._from_config(text_config)
        self.vision_model = BridgeTowerVisionModel._from_config(vision_config)

        shared = config.share_cross_modal_transformer_layers
        self.cross_modal_text_transform = _per_layer(
            lambda: nn.Linear(text_config.hidden_size, hidden), layers, shared
        )
        self.cross_modal_image_transform = _per_layer(
            lambda: nn.Linear(vision_config.hidden_size, hidden), layers, shared
        )
        self.token_type_embeddings = nn.Embedding(config.num_token_types, hidden)

        self.cross_modal_text_layers = nn.ModuleList([CrossModalLayer(config) for _ in range(layers)])
        self.cross_modal_image_layers = nn.ModuleList([CrossModalLayer(config) for _ in range(layers)])
        self._init_bridges(config)
        self.cross_modal_text_pooler = Pooler(hidden)
        self.cross_modal_image_pooler = Pooler(hidden)
        self.post_init()

    def _init_bridges(self, config: BridgeTowerConfig) -> None:
        """What feeds each cross-modal layer: two LayerNorms before layer 0, then one bridge (link tower) per layer."""
        hidden, eps = config.hidden_size, config.link_tower_layer_norm_eps
        self.cross_modal_text_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.cross_modal_image_layernorm = nn.LayerNorm(hidden, eps=eps)

        def link() -> LinkTower:
            return LinkTower(hidden, config.link_tower_type, eps)

        layers = config.num_hidden_layers
        self.cross_modal_text_link_tower = _per_layer(link, layers - 1, config.share_link_tower_layers)
        self.cross_modal_image_link_tower = _per_layer(link, layers - 1, config.share_link_tower_layers)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    @staticmethod
    def _at(module: nn.Module, index: int) -> nn.Module:
        return module[index] if isinstance(module, nn.ModuleList) else module

    def text_modality_embedding(self, text_states: torch.Tensor, depth: int) -> torch.Tensor:
        """Project a text-tower layer output into the cross-modal width and add the text type embedding."""
        return self._at(self.cross_modal_text_transform, depth)(text_states) + self.token_type_embeddings.weight[0]

    def image_modality_embedding(self, vision_states: torch.Tensor, depth: int, token_type: int = 1) -> torch.Tensor:
        """Post-LayerNorm a ViT block output, project it into the cross-modal width, add the image type embedding."""
        normed = self.vision_model.post_layernorm(vision_states)
        return (
            self._at(self.cross_modal_image_transform, depth)(normed) + self.token_type_embeddings.weight[token_type]
        )

    def cross_modal_masks(
        self, text: torch.Tensor, image: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Text self-attention and image-to-text cross-attention masks (text padding); the image is never padded."""
        return (
            padding_mask_for(self.config, text, attention_mask),
            padding_mask_for(self.config, image, attention_mask, keys=text),
        )

    def fuse(
        self,
        text_states: tuple[torch.Tensor, ...],
        vision_states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor,
        image_token_type_idx: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The cross-modal encoder over the towers' layer outputs; returns the last text and image outputs and every
        layer's `(text, image)` pair."""
        depth = self.config.num_hidden_layers
        text_routed, vision_routed = text_states[-depth:], vision_states[-depth:]
        text = self.cross_modal_text_layernorm(self.text_modality_embedding(text_routed[0], 0))
        image = self.cross_modal_image_layernorm(
            self.image_modality_embedding(vision_routed[0], 0, image_token_type_idx)
        )
        text_self_mask, image_to_text_mask = self.cross_modal_masks(text, image, attention_mask)
        text_out = self.cross_modal_text_layers[0](text, image, text_self_mask, None)
        image_out = self.cross_modal_image_layers[0](image, text, None, image_to_text_mask)
        cross_states = [(text_out, image_out)]
        for i in range(1, depth):
            # bridge: LinkTower(uni-modal layer i, cross-modal output i-1)
            text = self._at(self.cross_modal_text_link_tower, i - 1)(
                self.text_modality_embedding(text_routed[i], i), text_out
            )
            image = self._at(self.cross_modal_image_link_tower, i - 1)(
                self.image_modality_embedding(vision_routed[i], i, image_token_type_idx), image_out
            )
            text_out = self.cross_modal_text_layers[i](text, image, text_self_mask, None)
            image_out = self.cross_modal_image_layers[i](image, text, None, image_to_text_mask)
            cross_states.append((text_out, image_out))
        return text_out, image_out, cross_states

    def pool(self, text_out: torch.Tensor, image_out: torch.Tensor) -> torch.Tensor:
        """`cat(text_pooled, image_pooled)` of the last cross-modal outputs: what the heads read."""
        return torch.cat([self.cross_modal_text_pooler(text_out), self.cross_modal_image_pooler(image_out)], dim=-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        image_token_type_idx: int = 1,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BridgeTowerModelOutput | tuple:
        r"""
        pixel_mask: accepted for processor compatibility and ignored (the image stream is never padded).
        image_token_type_idx (`int`, defaults to 1): modality-type row added to the image stream (NLVR2: 1 or 2).
        """
        if pixel_values is None:
            raise ValueError("BridgeTower needs both `input_ids` and `pixel_values`.")
        if not 1 <= image_token_type_idx < self.config.num_token_types:
            raise ValueError(
                f"image_token_type_idx={image_token_type_idx} is outside the type table of "
                f"{self.config.num_token_types} rows; NLVR2 needs config.num_token_types=3."
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        text_states = self.text_model(input_ids, attention_mask, token_type_ids).hidden_states
        vision_states = self.vision_model(pixel_values, interpolate_pos_encoding).hidden_states
        text_out, image_out, cross_states = self.fuse(text_states, vision_states, attention_mask, image_token_type_idx)
        pooled = self.pool(text_out, image_out)
        output = BridgeTowerModelOutput(
            text_features=text_out,
            image_features=image_out,
            pooler_output=pooled,
            text_last_hidden_state=text_states[-1],
            image_last_hidden_state=vision_states[-1],
            hidden_states=(text_states, vision_states, tuple(cross_states)) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class BridgeTowerForMaskedLM(BridgeTowerPreTrainedModel):
    """Masked language modelling on the cross-modal text stream."""

    _tied_weights_keys = {"mlm_score.decoder.weight": "bridgetower.text_model.embeddings.word_embeddings.weight"}

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        self.mlm_score = MaskedLMHead(
            config.hidden_size, config.text_config.vocab_size, config.hidden_act, config.layer_norm_eps
        )
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_score.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.mlm_score.decoder = value

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs) -> MaskedLMOutput:
        r"""labels (`(batch, text_len)`): token ids to predict, -100 where not masked."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        logits = self.mlm_score(outputs.text_features)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class BridgeTowerForImageAndTextRetrieval(BridgeTowerPreTrainedModel):
    """Image-text matching (ITM): 2-way logits, index 1 = match; used to re-rank retrieval candidates."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        self.itm_score = nn.Linear(config.hidden_size * 2, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs):
        r"""labels (`(batch,)`): 1 for matching pairs, 0 otherwise."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        logits = self.itm_score(outputs.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class _ContrastiveHeads:
    """The ITC heads and their maths, shared by `BridgeTowerForContrastiveLearning` and `BridgeTowerForPreTraining`
    (same parameter names in both, so one checkpoint serves both)."""

    def _init_contrastive_heads(self, config: BridgeTowerConfig) -> None:
        self.itc_text_head = nn.Linear(config.text_config.hidden_size, config.contrastive_hidden_size)
        image_width = (
            config.vision_config.hidden_size
            if config.contrastive_image_features == "uni_modal"
            else config.hidden_size
        )
        self.itc_image_head = nn.Linear(image_width, config.contrastive_hidden_size)
        if config.contrastive_cross_modal_head:
            self.itc_cross_modal_head = nn.Linear(config.hidden_size * 2, config.contrastive_hidden_size)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def _text_embeds(self, text_last_hidden_state: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.itc_text_head(text_last_hidden_state[:, 0]), dim=-1)

    def _image_embeds(self, image_last_hidden_state: torch.Tensor) -> torch.Tensor:
        model = self.base_model
        if self.config.contrastive_image_features == "uni_modal":
            features = model.vision_model.last_layer_norm()(image_last_hidden_state[:, :1])
        else:
            features = model.image_modality_embedding(image_last_hidden_state[:, :1], 0)
        return F.normalize(self.itc_image_head(features[:, 0]), dim=-1)

    def get_text_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Uni-modal text embeddings (no cross-modal pass): what retrieval ranks with before ITM re-ranking."""
        return self._text_embeds(self.base_model.text_model(input_ids, attention_mask).last_hidden_state)

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Uni-modal image embeddings (no cross-modal pass)."""
        vision = self.base_model.vision_model(pixel_values, interpolate_pos_encoding)
        return self._image_embeds(vision.last_hidden_state)

    def _contrastive(self, outputs: BridgeTowerModelOutput, return_loss: bool | None) -> BridgeTowerContrastiveOutput:
        text_embeds = self._text_embeds(outputs.text_last_hidden_state)
        image_embeds = self._image_embeds(outputs.image_last_hidden_state)
        scale = self.logit_scale.exp()
        logits_per_text = scale * text_embeds @ image_embeds.t()
        cross_embeds = None
        if self.config.contrastive_cross_modal_head:
            cross_embeds = F.normalize(self.itc_cross_modal_head(outputs.pooler_output), dim=-1)
        loss = None
        if return_loss:
            targets = torch.arange(len(text_embeds), device=text_embeds.device)
            if cross_embeds is None:
                loss = (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2
            else:
                pairs = ((text_embeds, image_embeds), (text_embeds, cross_embeds), (image_embeds, cross_embeds))
                loss = sum(F.cross_entropy(scale * a @ b.t(), targets) for a, b in pairs) / 3
        return BridgeTowerContrastiveOutput(
            loss=loss,
            logits_per_text=logits_per_text,
            logits_per_image=logits_per_text.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            cross_embeds=cross_embeds,
            hidden_states=outputs.hidden_states,
        )


class BridgeTowerForContrastiveLearning(_ContrastiveHeads, BridgeTowerPreTrainedModel):
    """Image-text contrastive (ITC) heads: L2-normalised uni-modal (and pooled cross-modal) embeddings."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        self._init_contrastive_heads(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, return_loss=None, **kwargs):
        r"""return_loss (`bool`): return the symmetric InfoNCE loss over the batch (pairs on the diagonal); with the
        cross-modal head, the mean of the text-image, text-cross and image-cross losses as transformers computes it."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        return self._contrastive(outputs, return_loss)


@dataclass
class BridgeTowerForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss: sum of the requested losses (MLM with `labels`, ITM with `itm_labels`, ITC with `return_loss`).
        mlm_logits (`(batch, text_len, vocab)`), itm_logits (`(batch, 2)`): the heads' outputs.
        contrastive: the ITC output (with "itc" in `config.pretraining_heads`).
    """

    loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    contrastive: BridgeTowerContrastiveOutput | None = None
    hidden_states: tuple | None = None


class BridgeTowerForPreTraining(_ContrastiveHeads, BridgeTowerPreTrainedModel):
    """The pre-training heads together (`config.pretraining_heads`, any of "mlm", "itm", "itc"), named as in the
    single-head classes so one checkpoint loads into each of them too."""

    _tied_weights_keys = {"mlm_score.decoder.weight": "bridgetower.text_model.embeddings.word_embeddings.weight"}

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        heads = config.pretraining_heads
        if "mlm" in heads:
            self.mlm_score = MaskedLMHead(
                config.hidden_size, config.text_config.vocab_size, config.hidden_act, config.layer_norm_eps
            )
        if "itm" in heads:
            self.itm_score = nn.Linear(config.hidden_size * 2, 2)
        if "itc" in heads:
            self._init_contrastive_heads(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.mlm_score.decoder if "mlm" in self.config.pretraining_heads else None

    def forward(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        labels=None,
        itm_labels=None,
        return_loss=None,
        **kwargs,
    ) -> BridgeTowerForPreTrainingOutput:
        r"""labels: MLM targets (-100 = ignore). itm_labels (`(batch,)`): 1 match / 0 mismatch. return_loss: ITC."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        heads, losses = self.config.pretraining_heads, []
        mlm_logits = itm_logits = contrastive = None
        if "mlm" in heads:
            mlm_logits = self.mlm_score(outputs.text_features)
            if labels is not None:
                losses.append(F.cross_entropy(mlm_logits.flatten(0, 1), labels.to(mlm_logits.device).view(-1)))
        if "itm" in heads:
            itm_logits = self.itm_score(outputs.pooler_output)
            if itm_labels is not None:
                losses.append(F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device).view(-1)))
        if "itc" in heads:
            contrastive = self._contrastive(outputs, return_loss)
            if contrastive.loss is not None:
                losses.append(contrastive.loss)
        return BridgeTowerForPreTrainingOutput(
            loss=sum(losses) if losses else None,
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            contrastive=contrastive,
            hidden_states=outputs.hidden_states,
        )


def _classifier(config: BridgeTowerConfig, in_features: int) -> ClassifierHead:
    hidden = int(config.hidden_size * 2 * config.head_hidden_scale)  # the original's int(): scale 1.5 exists
    return ClassifierHead(in_features, hidden, config.num_labels, config.task_head_layers)


class BridgeTowerForVisualQuestionAnswering(BridgeTowerPreTrainedModel):
    """VQAv2: a classifier over the answer vocabulary (`config.id2label`), trained with BCE on soft VQA scores."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        self.vqa_classifier = _classifier(config, config.hidden_size * 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs):
        r"""labels (`(batch, num_labels)` float): soft VQA scores (min(1, #annotators / 3) per answer). The loss is
        the original's: mean BCE-with-logits times the number of answers."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        logits = self.vqa_classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device, logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, labels) * labels.shape[1]
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class BridgeTowerForVisualEntailment(BridgeTowerPreTrainedModel):
    """SNLI-VE: 3-way classification (entailment / neutral / contradiction) of an image-sentence pair."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self._build_encoder(config)
        self.snli_classifier = _classifier(config, config.hidden_size * 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs):
        r"""labels (`(batch,)`): class indices."""
        outputs = self.base_model(input_ids, attention_mask, pixel_values=pixel_values, return_dict=True, **kwargs)
        logits = self.snli_classifier(outputs.pooler_output)
        loss = F.cross_entropy(logits, labels.to(logits.device).view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class BridgeTowerForNLVR2(BridgeTowerPreTrainedModel):
    """NLVR2: is the sentence true of the image pair? Each image is fused with the text (types 1 and 2); the two
    pooled outputs are concatenated (4·hidden) and classified."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        if config.num_token_types != 3:
            raise ValueError("NLVR2 needs config.num_token_types=3 (text 0, first image 1, second image 2).")
        self._build_encoder(config)
        self.nlvr2_classifier = _classifier(config, config.hidden_size * 4)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kwargs):
        r"""pixel_values (`(batch, 2, channels, height, width)`): the image pair. labels (`(batch,)`): 0/1."""
        if pixel_values is None or pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"NLVR2 takes pixel_values of shape (batch, 2, channels, height, width), got {shape}.")
        pooled = [
            self.base_model(
                input_ids,
                attention_mask,
                pixel_values=pixel_values[:, i],
                image_token_type_idx=i + 1,
                return_dict=True,
                **kwargs,
            ).pooler_output
            for i in range(2)
        ]
        logits = self.nlvr2_classifier(torch.cat(pooled, dim=-1))
        loss = F.cross_entropy(logits, labels.to(logits.device).view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForPreTraining",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "BridgeTowerForNLVR2",
    "BridgeTowerForVisualEntailment",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerModel",
    "BridgeTowerPreTrainedModel",
    "BridgeTowerTextModel",
    "BridgeTowerVisionModel",
]
