"""The image-text retrieval fine-tuning objective of the BridgeTower original (`irtr_itm_itc`,
`src/modules/objectives.py` `compute_itm_itc` with `pretrain=False`), around a `…ForPreTraining` model with ITM and
ITC heads.

1. ITC: the uni-modal text and image embeddings of the batch's pairs, scaled cosine similarities, cross-entropy both
   ways against soft targets — every caption of the same image is a positive (1 / number of positives each).
2. Hard negatives: for each text one image, and for each image one text, drawn from the softmax of the ITC
   similarities with the positives masked out (an all-positive row draws from the whole row, as the original's
   fallback does).
3. ITM: the cross-modal encoder over the positive pairs (label 1) and the 2 × batch negative pairs (label 0); the
   towers run once, the negatives reuse their layer outputs. Loss = ITC + ITM.

It is a module around the model, not a `compute_loss` override, so that everything runs inside one forward call of the
module the Trainer wraps (DDP, FSDP and DeepSpeed see one forward and one backward).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# the original clamps its ITC temperature to [0.001, 0.5]; towerzoo's `logit_scale` is log(1 / temperature)
LOGIT_SCALE_RANGE = (math.log(2.0), math.log(1000.0))


def positive_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(batch, batch) True where two examples show the same image."""
    return image_ids[:, None] == image_ids[None, :]


def sample_hard_negatives(
    logits_per_text: torch.Tensor, image_ids: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text the index of a negative image, and for each image the index of a negative text, drawn with
    probability softmax(ITC logits) over the batch, positives excluded."""
    with torch.no_grad():
        positives = positive_mask(image_ids)

        def draw(logits: torch.Tensor) -> torch.Tensor:
            weights = logits.float().softmax(dim=1).masked_fill(positives, 0)
            # a row whose every candidate is a positive: the original retries with 1e-5 added to every weight
            empty = weights.sum(dim=1, keepdim=True) == 0
            weights = torch.where(empty, weights + 1e-5, weights)
            return torch.multinomial(weights, 1, generator=generator).squeeze(1)

        return draw(logits_per_text), draw(logits_per_text.t())


class RetrievalObjective(nn.Module):
    """ITC + ITM with hard negatives, as the original fine-tunes for retrieval; `model` is a `…ForPreTraining` with
    "itm" and "itc" in `config.pretraining_heads`. `forward` returns `{"loss", "itc_loss", "itm_loss"}`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, input_ids, attention_mask, pixel_values, image_ids, return_loss: bool = True) -> dict:
        """`image_ids` (`(batch,)`): which image each caption belongs to (equal ids are positives). `return_loss` is
        only declared so that `Trainer` evaluates this module by its loss; the loss is always computed."""
        model, base = self.model, self.model.base_model
        with torch.no_grad():
            model.logit_scale.clamp_(*LOGIT_SCALE_RANGE)
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            output_hidden_states=True,
            return_loss=False,
        )
        logits_per_text = outputs.contrastive.logits_per_text
        positives = positive_mask(image_ids).float()
        targets = positives / positives.sum(dim=1, keepdim=True)
        itc_loss = (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2

        negative_image, negative_text = sample_hard_negatives(logits_per_text, image_ids)
        batch = torch.arange(len(input_ids), device=input_ids.device)
        # the original's order: (text b, its negative image), then (image b's negative text, image b)
        text_rows, image_rows = torch.cat([batch, negative_text]), torch.cat([negative_image, batch])
        text_states, vision_states, _ = outputs.hidden_states
        depth = max(model.config.num_hidden_layers, getattr(model.config, "managed_layers_text", 0))
        width = max(model.config.num_hidden_layers, getattr(model.config, "managed_layers_image", 0))
        text_out, image_out, _ = base.fuse(
            tuple(states[text_rows] for states in text_states[-depth:]),
            tuple(states[image_rows] for states in vision_states[-width:]),
            attention_mask[text_rows],
        )
        itm_logits = torch.cat([outputs.itm_logits, model.itm_score(base.pool(text_out, image_out))])
        itm_labels = torch.cat([torch.ones_like(batch), torch.zeros_like(text_rows)])
        itm_loss = F.cross_entropy(itm_logits, itm_labels)
        return {"loss": itc_loss + itm_loss, "itc_loss": itc_loss.detach(), "itm_loss": itm_loss.detach()}
