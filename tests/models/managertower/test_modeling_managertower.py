"""ManagerTower: the common battery for every head, the Manager against its equations, and what is ManagerTower's own."""

import math

import pytest
import torch
from testing_utils import padded_text_batch, random_pixels, tiny_bridgetower_config, tiny_managertower_config
from two_tower_tester import TwoTowerHeadTests

import towerzoo.models.bridgetower as bt
import towerzoo.models.managertower as mt
from towerzoo.models.managertower import Manager


class TestManagerTower(TwoTowerHeadTests):
    model_classes = (
        mt.ManagerTowerModel,
        mt.ManagerTowerForPreTraining,
        mt.ManagerTowerForMaskedLM,
        mt.ManagerTowerForImageAndTextRetrieval,
        mt.ManagerTowerForContrastiveLearning,
        mt.ManagerTowerForVisualQuestionAnswering,
        mt.ManagerTowerForVisualEntailment,
        mt.ManagerTowerForNLVR2,
    )
    auto_classes = mt.AUTO_CLASSES
    base_class_name = "ManagerTowerModel"
    expected_code_files = (
        "configuration_bridgetower.py",
        "configuration_managertower.py",
        "manager.py",
        "modeling_bridgetower.py",
        "modeling_managertower.py",
        "processing_bridgetower.py",
        "processing_common.py",
        "processing_managertower.py",
        "tower_attention.py",
        "tower_blocks.py",
    )
    tiny_config = staticmethod(tiny_managertower_config)

    def build_processor(self, config, tmp_path):
        processor = super().build_processor(config, tmp_path)
        return mt.ManagerTowerProcessor(processor.image_processor, processor.tokenizer, processor.max_text_length)


# --------------------------------------------------------------------------------------------------------------------
# The Manager against its equations (written here from the paper and the original code, independently of manager.py)
# --------------------------------------------------------------------------------------------------------------------
B, N, L, L_OTHER, D = 2, 3, 5, 4, 8


def _randomised(manager: Manager, seed: int = 0) -> Manager:
    """Every parameter random (LayerNorm affine too), so no term of the equations can hide behind its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in manager.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        manager.temperature.fill_(0.7)
    return manager.eval()


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    experts = torch.randn(B, N, L, D, generator=generator)
    previous = torch.randn(B, L, D, generator=generator)
    other = torch.randn(B, L_OTHER, D, generator=generator)
    return experts, previous, other


def _aggregate(normed: list[torch.Tensor], scores: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """out = Σ_j softmax_j(s_j / T) · e_j  +  s_prev · e_prev (the previous output's score is used raw)."""
    uni = torch.stack(scores[:N]) / temperature
    weights = list(torch.softmax(uni, dim=0)) + scores[N:]
    return sum(w * e for w, e in zip(weights, normed, strict=True))


@pytest.mark.parametrize("weight_type", ["scalar", "vector"])
@pytest.mark.parametrize("has_previous", [False, True])
def test_static_manager_matches_equations(weight_type, has_previous):
    manager = _randomised(Manager(D, N, adaptive=False, has_previous=has_previous, weight_type=weight_type))
    experts, previous, _ = _inputs()
    states = [experts[:, j] for j in range(N)] + ([previous] if has_previous else [])
    normed = [_layer_norm(s, manager.expert_layer_norms[j]) for j, s in enumerate(states)]
    # scores (1, E, 1, 1|D) → one (1|D)-vector per expert, broadcast over batch and tokens
    scores = [manager.scores[0, j, 0] for j in range(len(states))]
    expected = _aggregate(normed, scores, 0.7)
    got = manager(experts, previous if has_previous else None)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("weight_type", ["scalar", "vector"])
def test_adaptive_manager_matches_equations(weight_type):
    manager = _randomised(Manager(D, N, adaptive=True, has_previous=True, weight_type=weight_type))
    experts, previous, other = _inputs()
    normed = [_layer_norm(experts[:, j], manager.expert_layer_norms[j]) for j in range(N)]
    prev = _layer_norm(previous, manager.expert_layer_norms[N])
    other_normed = _layer_norm(other, manager.other_layer_norm)
    expected = torch.empty(B, L, D)
    for b in range(B):
        for t in range(L):
            # attention-pool the other modality with this token of the previous output as the query
            q = manager.query_proj.weight @ prev[b, t] + manager.query_proj.bias
            k = other_normed[b] @ manager.key_proj.weight.T + manager.key_proj.bias
            pooled = torch.softmax(k @ q / math.sqrt(D), dim=0) @ other_normed[b]
            generated = manager.controller.weight @ torch.cat([pooled, prev[b, t]]) + manager.controller.bias
            scores = [generated[j].expand(D) for j in range(N)] + [manager.previous_score[0, 0, 0].expand(D)]
            expected[b, t] = _aggregate([e[b, t] for e in normed] + [prev[b, t]], scores, 0.7)
    got = manager(experts, previous, other)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_adaptive_manager_masks_padded_keys_of_the_other_modality():
    """With `other_mask`, padded positions of `other` get no attention: the result equals cutting them off."""
    manager = _randomised(Manager(D, N, adaptive=True, has_previous=True))
    experts, previous, other = _inputs()
    mask = torch.ones(B, L_OTHER, dtype=torch.long)
    mask[1, 2:] = 0
    got = manager(experts, previous, other, other_mask=mask)
    alone = manager(experts[1:], previous[1:], other[1:, :2])
    torch.testing.assert_close(got[1:], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(manager(experts, previous, other)[1:], alone, atol=1e-4)  # the original attends to pads


def test_manager_noise_only_in_training_and_seeded():
    manager = _randomised(Manager(D, N, adaptive=True, has_previous=True, weight_type="scalar"))
    experts, previous, other = _inputs()
    clean = manager(experts, previous, other)
    torch.testing.assert_close(manager(experts, previous, other), clean, atol=0, rtol=0)  # eval: no noise
    manager.train()
    torch.manual_seed(3)
    noisy = manager(experts, previous, other)
    torch.manual_seed(3)
    torch.testing.assert_close(manager(experts, previous, other), noisy, atol=0, rtol=0)
    torch.manual_seed(4)
    assert not torch.allclose(manager(experts, previous, other), noisy)
    # the noise is N(0, (1/N)^2) per token and channel on the uni-modal scores, from torch's global generator
    torch.manual_seed(3)
    noise = torch.randn(B, N, L, D) / N
    manager.eval()
    prev = _layer_norm(previous, manager.expert_layer_norms[N])
    states = [_layer_norm(experts[:, j], manager.expert_layer_norms[j]) for j in range(N)] + [prev]
    scores = manager._adaptive_scores(prev, other, None)  # checked against the equations above
    weights = ((scores + noise) / 0.7).softmax(dim=1)
    expected = sum(weights[:, j] * states[j] for j in range(N)) + manager.previous_score[0, 0] * prev
    torch.testing.assert_close(noisy, expected, atol=1e-6, rtol=0)
    quiet = Manager(D, N, adaptive=True, has_previous=True, weight_type="scalar", noise_std=0.0)
    quiet.load_state_dict(manager.state_dict())
    torch.testing.assert_close(quiet.train()(experts, previous, other), clean, atol=0, rtol=0)


def test_manager_rejects_bad_arguments():
    with pytest.raises(ValueError, match="needs has_previous=True"):
        Manager(D, N, adaptive=True, has_previous=False)
    with pytest.raises(ValueError, match="weight_type"):
        Manager(D, N, weight_type="matrix")
    manager = Manager(D, N, adaptive=True)
    experts, previous, other = _inputs()
    with pytest.raises(ValueError, match=r"shape \(batch, 3, len, hidden\)"):
        manager(experts[:, :2], previous, other)
    with pytest.raises(ValueError, match="needs `other`"):
        manager(experts, previous)
    with pytest.raises(ValueError, match="has_previous=True"):
        manager(experts)


def test_manager_init_is_the_originals():
    """Static scores 1/N (uni-modal) and 1 (previous), temperature as configured, after `post_init` and after a
    save/load round trip (loaded values are not re-initialised)."""
    config = tiny_managertower_config(manager_temperature=0.5)
    model = mt.ManagerTowerModel(config)
    first, later = model.cross_modal_text_managers[0], model.cross_modal_text_managers[1]
    assert not first.adaptive and later.adaptive and not hasattr(first, "controller")
    torch.testing.assert_close(first.scores, torch.full_like(first.scores, 1 / config.managed_layers_text))
    torch.testing.assert_close(later.previous_score, torch.ones_like(later.previous_score))
    assert later.temperature.item() == 0.5
    static = mt.ManagerTowerModel(tiny_managertower_config(manager_type="SAUE")).cross_modal_image_managers[1]
    expected = torch.tensor([1 / 2, 1 / 2, 1.0]).view(1, 3, 1, 1).expand_as(static.scores)
    torch.testing.assert_close(static.scores, expected)


# --------------------------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------------------------


def _manual_fuse(model: mt.ManagerTowerModel, input_ids, attention_mask, pixels) -> torch.Tensor:
    """The pooled output recomputed from the model's parts in the original's order (managers read the previous
    outputs of both modalities before either cross-modal layer runs)."""
    config = model.config
    text_states = model.text_model(input_ids, attention_mask).hidden_states
    vision_states = model.vision_model(pixels).hidden_states
    n_text, n_image = config.managed_layers_text, config.managed_layers_image
    types = model.token_type_embeddings.weight
    text = torch.stack(
        [
            model.cross_modal_text_transform(text_states[-n_text + j])
            + types[0]
            + model.layer_embeddings_text.weight[config.text_config.num_hidden_layers - n_text + j]
            for j in range(n_text)
        ],
        dim=1,
    )
    image = torch.stack(
        [
            model.cross_modal_image_transform(model.vision_model.post_layernorm(vision_states[-n_image + j]))
            + types[1]
            + model.layer_embeddings_image.weight[config.vision_config.num_hidden_layers - n_image + j]
            for j in range(n_image)
        ],
        dim=1,
    )
    additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    x = y = None
    for i in range(config.num_hidden_layers):
        x_in = model.cross_modal_text_managers[i](text, x, y)
        y_in = model.cross_modal_image_managers[i](image, y, x)
        x = model.cross_modal_text_layers[i](x_in, y_in, additive, None)
        y = model.cross_modal_image_layers[i](y_in, x_in, None, additive)
    return torch.cat([model.cross_modal_text_pooler(x), model.cross_modal_image_pooler(y)], dim=-1)


@pytest.mark.parametrize("manager_type", ["AAUE", "SAUE"])
def test_fuse_follows_the_original_order(manager_type):
    torch.manual_seed(0)
    model = mt.ManagerTowerModel(tiny_managertower_config(manager_type=manager_type)).eval()
    for manager in [*model.cross_modal_text_managers, *model.cross_modal_image_managers]:
        _randomised(manager, seed=len(manager.expert_layer_norms))
    input_ids, attention_mask = padded_text_batch(model.config)
    pixels = random_pixels(model.config)
    with torch.no_grad():
        expected = _manual_fuse(model, input_ids, attention_mask, pixels)
        got = model(input_ids, attention_mask, pixel_values=pixels).pooler_output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_towers_and_itc_heads_are_bridgetowers():
    """Same tower and ITC weights → the same uni-modal embeddings as BridgeTower with the original's ITC options."""
    torch.manual_seed(0)
    manager_model = mt.ManagerTowerForContrastiveLearning(tiny_managertower_config()).eval()
    bridge_config = tiny_bridgetower_config(contrastive_image_features="uni_modal", contrastive_cross_modal_head=False)
    bridge_model = bt.BridgeTowerForContrastiveLearning(bridge_config).eval()
    shared = {
        k.replace("managertower.", "bridgetower."): v
        for k, v in manager_model.state_dict().items()
        if ".text_model." in f".{k}" or ".vision_model." in f".{k}" or k.startswith(("itc_", "logit_scale"))
    }
    missing = bridge_model.load_state_dict(shared, strict=False).missing_keys
    assert not [k for k in missing if "text_model" in k or "vision_model" in k or k.startswith("itc_")]
    input_ids, attention_mask = padded_text_batch(manager_model.config)
    pixels = random_pixels(manager_model.config)
    with torch.no_grad():
        torch.testing.assert_close(
            manager_model.get_text_features(input_ids, attention_mask),
            bridge_model.get_text_features(input_ids, attention_mask),
        )
        torch.testing.assert_close(manager_model.get_image_features(pixels), bridge_model.get_image_features(pixels))


def test_query_padding_mask_makes_outputs_padding_invariant():
    """With `manager_mask_query_padding`, a padded row equals the same row alone; the original's behaviour (off)
    lets the adaptive image managers attend to padding, so the row changes with the batch's padding."""
    torch.manual_seed(0)
    config = tiny_managertower_config(manager_mask_query_padding=True)
    model = mt.ManagerTowerModel(config).eval()
    for manager in model.cross_modal_image_managers[1:]:
        _randomised(manager)
    input_ids, attention_mask = padded_text_batch(config, 3)
    pixels = random_pixels(config, 3)
    length = int(attention_mask[2].sum())
    for backend in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(backend)
        with torch.no_grad():
            batched = model(input_ids, attention_mask, pixel_values=pixels).pooler_output[2:]
            alone = model(input_ids[2:, :length], pixel_values=pixels[2:]).pooler_output
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    model.config.manager_mask_query_padding = False
    with torch.no_grad():
        original = model(input_ids, attention_mask, pixel_values=pixels).pooler_output[2:]
    assert (original - alone).abs().max() > 1e-4


def test_training_noise_is_seeded_end_to_end():
    torch.manual_seed(0)
    config = tiny_managertower_config()
    model = mt.ManagerTowerForImageAndTextRetrieval(config).train()
    input_ids, attention_mask = padded_text_batch(config)
    pixels = random_pixels(config)

    def logits(seed):
        torch.manual_seed(seed)
        return model(input_ids, attention_mask, pixel_values=pixels).logits

    torch.testing.assert_close(logits(1), logits(1), atol=0, rtol=0)
    assert not torch.allclose(logits(1), logits(2))
    model.eval()
    torch.testing.assert_close(logits(1), logits(2), atol=0, rtol=0)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="manager_type must be one of"):
        tiny_managertower_config(manager_type="adaptive")
    with pytest.raises(ValueError, match="manager_weight_type must be one of"):
        tiny_managertower_config(manager_weight_type="matrix")
    with pytest.raises(ValueError, match="managed_layers_text=4 must be between 1 and the tower's 3 layers"):
        tiny_managertower_config(managed_layers_text=4)
    with pytest.raises(ValueError, match="share_cross_modal_transformer_layers=True"):
        tiny_managertower_config(share_cross_modal_transformer_layers=False)
    # managed layers and cross-modal depth are independent (unlike BridgeTower)
    assert tiny_managertower_config(num_hidden_layers=5).num_hidden_layers == 5
