"""BridgeTower: the common battery for every head, plus what is BridgeTower's own."""

import pytest
import torch
from testing_utils import padded_text_batch, random_pixels, tiny_bridgetower_config
from two_tower_tester import NUM_ANSWERS, TwoTowerHeadTests

import towerzoo.models.bridgetower as bt


class TestBridgeTower(TwoTowerHeadTests):
    model_classes = (
        bt.BridgeTowerModel,
        bt.BridgeTowerForPreTraining,
        bt.BridgeTowerForMaskedLM,
        bt.BridgeTowerForImageAndTextRetrieval,
        bt.BridgeTowerForContrastiveLearning,
        bt.BridgeTowerForVisualQuestionAnswering,
        bt.BridgeTowerForVisualEntailment,
        bt.BridgeTowerForNLVR2,
    )
    auto_classes = bt.AUTO_CLASSES
    base_class_name = "BridgeTowerModel"
    expected_code_files = (
        "configuration_bridgetower.py",
        "modeling_bridgetower.py",
        "processing_bridgetower.py",
        "processing_common.py",
        "tower_attention.py",
        "tower_blocks.py",
    )
    tiny_config = staticmethod(tiny_bridgetower_config)


def test_padding_does_not_leak():
    """A padded row gives the same outputs as the same row alone without padding, on every CPU backend."""
    config = tiny_bridgetower_config()
    torch.manual_seed(0)
    model = bt.BridgeTowerModel(config).eval()
    input_ids, attention_mask = padded_text_batch(config, 3)
    pixels = random_pixels(config, 3)
    length = int(attention_mask[2].sum())
    for backend in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(backend)
        with torch.no_grad():
            batched = model(input_ids, attention_mask, pixel_values=pixels)
            alone = model(input_ids[2:, :length], pixel_values=pixels[2:])
        torch.testing.assert_close(batched.pooler_output[2:], alone.pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.image_features[2:], alone.image_features, atol=1e-5, rtol=0)


def test_nlvr2_uses_token_types_one_and_two():
    """Swapping the two images changes the logits only through the type embeddings: with rows 1 and 2 of the type
    table equal, the pooled pair is a permutation, so the logits equal those of a classifier with swapped halves."""
    config = tiny_bridgetower_config(num_token_types=3, num_labels=2, task_head_layers=1)
    torch.manual_seed(0)
    model = bt.BridgeTowerForNLVR2(config).eval()
    input_ids, attention_mask = padded_text_batch(config, 2)
    pair = torch.stack([random_pixels(config, 2), random_pixels(config, 2, seed=5)], dim=1)
    with torch.no_grad():
        first = model.bridgetower(input_ids, attention_mask, pixel_values=pair[:, 0], image_token_type_idx=1)
        second = model.bridgetower(input_ids, attention_mask, pixel_values=pair[:, 1], image_token_type_idx=2)
        expected = model.nlvr2_classifier(torch.cat([first.pooler_output, second.pooler_output], dim=-1))
        torch.testing.assert_close(model(input_ids, attention_mask, pixel_values=pair).logits, expected)
        with pytest.raises(ValueError, match="num_token_types=3"):
            bt.BridgeTowerModel(tiny_bridgetower_config())(input_ids, pixel_values=pair[:, 0], image_token_type_idx=2)


def test_fractional_head_hidden_scale_gives_the_originals_width():
    """The original's NLVR2 recipe uses head_hidden_scale 1.5: its classifiers are int(2·hidden·scale) wide."""
    config = tiny_bridgetower_config(num_token_types=3, num_labels=2, task_head_layers=2, head_hidden_scale=1.5)
    model = bt.BridgeTowerForNLVR2(config)
    first = model.nlvr2_classifier.dense.weight
    assert first.shape == (int(2 * config.hidden_size * 1.5), 4 * config.hidden_size)


def test_vqa_loss_is_the_originals_scaled_bce():
    config = tiny_bridgetower_config(id2label={i: str(i) for i in range(NUM_ANSWERS)})
    model = bt.BridgeTowerForVisualQuestionAnswering(config).eval()
    input_ids, attention_mask = padded_text_batch(config, 2)
    targets = torch.zeros(2, NUM_ANSWERS)
    targets[0, 3], targets[1, 1] = 1.0, 0.6
    with torch.no_grad():
        out = model(input_ids, attention_mask, pixel_values=random_pixels(config, 2), labels=targets)
    by_hand = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets) * NUM_ANSWERS
    torch.testing.assert_close(out.loss, by_hand)


def test_bad_inputs_raise_clear_errors():
    config = tiny_bridgetower_config()
    model = bt.BridgeTowerModel(config).eval()
    input_ids, attention_mask = padded_text_batch(config, 1)
    with pytest.raises(ValueError, match="does not match the model's 32x32"):
        model(input_ids, pixel_values=torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, height, width\)"):
        model(input_ids, pixel_values=torch.randn(1, 4, 32, 32))
    too_long = torch.full((1, 39), 5)
    with pytest.raises(ValueError, match="longer than the position table allows"):
        model(too_long, pixel_values=torch.randn(1, 3, 32, 32))
    with torch.no_grad():  # interpolated positions accept another size
        assert model(input_ids, pixel_values=torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True) is not None
    with pytest.raises(ValueError, match="link_tower_type"):
        tiny_bridgetower_config(link_tower_type="concat")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        tiny_bridgetower_config(num_hidden_layers=5)
    with pytest.raises(ValueError, match="multiple of the number of attention heads"):
        bt.BridgeTowerModel(tiny_bridgetower_config(num_attention_heads=5))


def test_shared_link_towers_have_one_module_per_modality():
    config = tiny_bridgetower_config(share_link_tower_layers=True, num_hidden_layers=3)
    model = bt.BridgeTowerModel(config)
    assert isinstance(model.cross_modal_text_link_tower, bt.modeling_bridgetower.LinkTower)
    assert not any(".cross_modal_text_link_tower.1." in k for k in model.state_dict())
