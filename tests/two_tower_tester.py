"""The common battery for architectures that carry BridgeTower's task heads (BridgeTower, ManagerTower): inputs,
labels, outputs and shapes per head."""

import pytest
import torch
from common_model_tester import CommonModelTests
from testing_utils import build_tiny_tokenizer, padded_text_batch, random_pixels

from towerzoo.conversions.bridgetower_folder import build_processor

BATCH = 3
NUM_ANSWERS = 7


class TwoTowerHeadTests(CommonModelTests):
    """The common battery for an architecture with BridgeTower's heads. Subclasses set `model_classes`,
    `auto_classes`, `base_class_name`, `expected_code_files` and `tiny_config` (a tiny-config builder taking
    overrides); the hooks below dispatch on the head, read from the class name (`…ForNLVR2` → "ForNLVR2")."""

    tiny_config = None

    def head(self, model_class) -> str:
        """ "Model", "ForPreTraining", "ForNLVR2", …: the class name after the architecture's base-model prefix."""
        return model_class.__name__[len(self.base_class_name) - len("Model") :]

    def get_config(self):
        return self.tiny_config()

    def get_config_for(self, model_class):
        if self.head(model_class) == "ForNLVR2":
            return self.tiny_config(num_token_types=3, num_labels=2)
        if self.head(model_class) == "ForVisualQuestionAnswering":
            return self.tiny_config(id2label={i: f"answer {i}" for i in range(NUM_ANSWERS)})
        if self.head(model_class) == "ForVisualEntailment":
            return self.tiny_config(id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
        if self.head(model_class) == "ForPreTraining":
            return self.tiny_config(pretraining_heads=["mlm", "itm", "itc"])
        return self.get_config()

    def prepare_inputs(self, model_class, config):
        input_ids, attention_mask = padded_text_batch(config, BATCH)
        pixel_values = random_pixels(config, BATCH)
        if self.head(model_class) == "ForNLVR2":
            pixel_values = torch.stack([pixel_values, random_pixels(config, BATCH, seed=1)], dim=1)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def prepare_labels(self, model_class, config, inputs):
        generator = torch.Generator().manual_seed(1)
        input_ids = inputs["input_ids"]
        mlm_labels = torch.full_like(input_ids, -100)
        mlm_labels[:, 1:3] = input_ids[:, 1:3]
        if self.head(model_class) == "Model":
            pytest.skip("the bare model has no loss")
        if self.head(model_class) == "ForMaskedLM":
            return {"labels": mlm_labels}
        if self.head(model_class) == "ForPreTraining":
            return {"labels": mlm_labels, "itm_labels": torch.tensor([1, 0, 1]), "return_loss": True}
        if self.head(model_class) == "ForContrastiveLearning":
            return {"return_loss": True}
        if self.head(model_class) == "ForVisualQuestionAnswering":
            return {"labels": torch.rand(BATCH, NUM_ANSWERS, generator=generator)}
        return {"labels": torch.randint(0, config.num_labels, (BATCH,), generator=generator)}

    def output_tensors(self, model_class, outputs):
        if self.head(model_class) == "Model":
            return {
                "text_features": outputs.text_features,
                "image_features": outputs.image_features,
                "pooler_output": outputs.pooler_output,
            }
        if self.head(model_class) == "ForPreTraining":
            return {
                "mlm_logits": outputs.mlm_logits,
                "itm_logits": outputs.itm_logits,
                "text_embeds": outputs.contrastive.text_embeds,
                "image_embeds": outputs.contrastive.image_embeds,
            }
        if self.head(model_class) == "ForContrastiveLearning":
            return {
                "text_embeds": outputs.text_embeds,
                "image_embeds": outputs.image_embeds,
                "logits_per_text": outputs.logits_per_text,
                # (the fresh-process test passes outputs as a namespace without its None fields)
                **(
                    {"cross_embeds": outputs.cross_embeds}
                    if getattr(outputs, "cross_embeds", None) is not None
                    else {}
                ),
            }
        return {"logits": outputs.logits}

    def expected_shapes(self, model_class, config, inputs):
        batch, text_len = inputs["input_ids"].shape
        image_len = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
        hidden, vocab = config.hidden_size, config.text_config.vocab_size
        if self.head(model_class) == "Model":
            return {
                "text_features": (batch, text_len, hidden),
                "image_features": (batch, image_len, hidden),
                "pooler_output": (batch, 2 * hidden),
            }
        if self.head(model_class) == "ForPreTraining":
            embed = (batch, config.contrastive_hidden_size)
            return {
                "mlm_logits": (batch, text_len, vocab),
                "itm_logits": (batch, 2),
                "text_embeds": embed,
                "image_embeds": embed,
            }
        if self.head(model_class) == "ForMaskedLM":
            return {"logits": (batch, text_len, vocab)}
        if self.head(model_class) == "ForContrastiveLearning":
            embed = (batch, config.contrastive_hidden_size)
            return {
                "text_embeds": embed,
                "image_embeds": embed,
                "logits_per_text": (batch, batch),
                **({"cross_embeds": embed} if config.contrastive_cross_modal_head else {}),
            }
        if self.head(model_class) == "ForImageAndTextRetrieval":
            return {"logits": (batch, 2)}
        return {"logits": (batch, config.num_labels)}

    def build_processor(self, config, tmp_path):
        return build_processor(build_tiny_tokenizer(tmp_path / "tokenizer"), config)
