"""The heads fine-tune with transformers' `Trainer`, and fresh weights follow the original initialisation."""

import torch
from testing_utils import padded_text_batch, random_pixels, tiny_bridgetower_config
from transformers import Trainer, TrainingArguments

import towerzoo.models.bridgetower as bt


class PairDataset(torch.utils.data.Dataset):
    """Eight image-text pairs with a per-example target built by `make_target(index)`."""

    def __init__(self, config, make_target, label_name="labels"):
        self.input_ids, self.attention_mask = padded_text_batch(config, 8)
        self.pixel_values = random_pixels(config, 8)
        self.make_target, self.label_name = make_target, label_name

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, index):
        item = {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "pixel_values": self.pixel_values[index],
        }
        target = self.make_target(index)
        if target is not None:
            item[self.label_name] = target
        return item


def train(model, dataset, tmp_path, steps=6, collate=None):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    return losses


def test_vqa_head_trains_with_trainer(tmp_path):
    config = tiny_bridgetower_config(id2label={i: f"a{i}" for i in range(5)})
    torch.manual_seed(0)
    targets = torch.zeros(8, 5)
    targets[torch.arange(8), torch.arange(8) % 5] = 1.0
    losses = train(
        bt.BridgeTowerForVisualQuestionAnswering(config), PairDataset(config, lambda i: targets[i]), tmp_path
    )
    assert min(losses[-2:]) < losses[0]


def test_itm_and_nlvr2_heads_train_with_trainer(tmp_path):
    config = tiny_bridgetower_config()
    torch.manual_seed(0)
    train(bt.BridgeTowerForImageAndTextRetrieval(config), PairDataset(config, lambda i: torch.tensor(i % 2)), tmp_path)
    config = tiny_bridgetower_config(num_token_types=3, num_labels=2)
    dataset = PairDataset(config, lambda i: torch.tensor(i % 2))
    dataset.pixel_values = torch.stack([dataset.pixel_values, dataset.pixel_values.flip(0)], dim=1)
    train(bt.BridgeTowerForNLVR2(config), dataset, tmp_path / "nlvr2", steps=2)


def test_contrastive_head_trains_with_trainer(tmp_path):
    config = tiny_bridgetower_config()

    def collate(items):
        batch = torch.utils.data.default_collate(items)
        return {**batch, "return_loss": True}

    torch.manual_seed(0)
    train(bt.BridgeTowerForContrastiveLearning(config), PairDataset(config, lambda i: None), tmp_path, collate=collate)


def test_init_follows_the_original():
    """N(0, 0.02) for new Linear/Embedding weights, CLIP's width-scaled stds inside the ViT, unit LayerNorms."""
    config = tiny_bridgetower_config(
        vision_config={"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
    )
    torch.manual_seed(0)
    model = bt.BridgeTowerModel(config)
    width, depth = 256, config.vision_config.num_hidden_layers
    layer = model.vision_model.layers[0]
    expected = {
        "vision q_proj": (layer.self_attn.q_proj.weight, width**-0.5),
        "vision o_proj": (layer.self_attn.o_proj.weight, width**-0.5 * (2 * depth) ** -0.5),
        "vision fc1": (layer.mlp.fc1.weight, (2 * width) ** -0.5),
        "cross-modal fc1": (model.cross_modal_text_layers[0].mlp.fc1.weight, 0.02),
        "text q_proj": (model.text_model.layers[0].self_attention.attn.q_proj.weight, 0.02),
    }
    for name, (weight, std) in expected.items():
        assert abs(weight.std().item() - std) < 0.1 * std, f"{name}: std {weight.std().item():.4f}, expected {std:.4f}"
    assert torch.equal(model.cross_modal_text_layernorm.weight, torch.ones(64))
    assert torch.equal(model.text_model.layers[0].mlp.fc1.bias, torch.zeros(96))
    pad = config.text_config.pad_token_id
    assert torch.equal(model.text_model.embeddings.word_embeddings.weight[pad], torch.zeros(64))


def test_missing_logit_scale_is_initialised_on_load(tmp_path):
    """Heads added to a pre-trained body (here ITC in the pre-training class) start at their init values on load."""
    from safetensors.torch import load_file, save_file

    config = tiny_bridgetower_config(pretraining_heads=["mlm", "itm", "itc"], logit_scale_init_value=1.5)
    bt.BridgeTowerForPreTraining(config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["logit_scale"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert bt.BridgeTowerForPreTraining.from_pretrained(tmp_path).logit_scale.item() == 1.5
