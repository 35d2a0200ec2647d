"""The retrieval objective: hard negatives drawn as the original draws them (softmax of the ITC logits, positives
excluded), the ITC soft targets, and ITM on negatives computed from the towers' saved layers equal to a full forward
pass of those pairs."""

import pytest
import torch
import torch.nn.functional as F
from testing_utils import padded_text_batch, random_pixels, tiny_bridgetower_config, tiny_managertower_config

import towerzoo.models.bridgetower as bt
import towerzoo.models.managertower as mt
from towerzoo.training import objectives
from towerzoo.training.objectives import RetrievalObjective, positive_mask, sample_hard_negatives


def test_negatives_are_never_positives_and_follow_the_softmax():
    image_ids = torch.tensor([0, 0, 1, 2])
    # text 0 prefers image 2 overwhelmingly; image 3's row prefers text 2
    logits = torch.zeros(4, 4)
    logits[0, 2] = 50.0
    logits[2, 3] = 50.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        negative_image, negative_text = sample_hard_negatives(logits, image_ids, generator)
        assert negative_image[0] == 2 and negative_text[3] == 2
        assert not positive_mask(image_ids)[torch.arange(4), negative_image].any()
        assert not positive_mask(image_ids)[torch.arange(4), negative_text].any()

    # frequencies: text 2's candidates are images 0, 1, 3 with weights softmax([log 2, 0, 0]) over them = 1/2, 1/4, 1/4;
    # 1000 copies of the batch in one call, each copy's logits to the others' images at -inf
    copies = 1000
    logits = torch.zeros(4, 4)
    logits[2, 0] = torch.log(torch.tensor(2.0))
    tiled = torch.block_diag(*[logits + 1e4] * copies) - 1e4
    tiled_ids = (image_ids[None] + 3 * torch.arange(copies)[:, None]).flatten()
    draws = sample_hard_negatives(tiled, tiled_ids, generator)[0][2::4] % 4
    frequencies = torch.bincount(draws, minlength=4).float() / copies
    assert frequencies.tolist() == pytest.approx([0.5, 0.25, 0.0, 0.25], abs=0.05)


def test_a_batch_of_one_image_falls_back_to_any_pair():
    negative_image, negative_text = sample_hard_negatives(torch.zeros(3, 3), torch.tensor([5, 5, 5]))
    assert negative_image.shape == negative_text.shape == (3,)


@pytest.mark.parametrize(
    "model_class, config",
    [
        (bt.BridgeTowerForPreTraining, tiny_bridgetower_config(pretraining_heads=["itm", "itc"])),
        (mt.ManagerTowerForPreTraining, tiny_managertower_config(pretraining_heads=["itm", "itc"])),
    ],
)
def test_itc_and_itm_losses_equal_a_direct_computation(model_class, config, monkeypatch):
    torch.manual_seed(0)
    model = model_class(config).eval()
    input_ids, attention_mask = padded_text_batch(config, batch_size=4)
    pixel_values = random_pixels(config, batch_size=4)
    image_ids = torch.tensor([0, 0, 1, 2])
    negative_image, negative_text = torch.tensor([2, 3, 0, 1]), torch.tensor([3, 2, 0, 2])
    monkeypatch.setattr(objectives, "sample_hard_negatives", lambda *args: (negative_image, negative_text))

    out = RetrievalObjective(model)(input_ids, attention_mask, pixel_values, image_ids)

    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=False)
        logits = full.contrastive.logits_per_text
        targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
        itc = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        # the negatives as pairs run through the whole model: (text b, image neg(b)), then (text neg(b), image b)
        rows = torch.arange(4)
        pairs = model(
            input_ids=input_ids[torch.cat([rows, negative_text])],
            attention_mask=attention_mask[torch.cat([rows, negative_text])],
            pixel_values=pixel_values[torch.cat([negative_image, rows])],
        ).itm_logits
        itm_logits = torch.cat([full.itm_logits, pairs])
        itm = F.cross_entropy(itm_logits, torch.tensor([1] * 4 + [0] * 8))
    assert out["itc_loss"].item() == pytest.approx(itc.item(), abs=1e-5)
    assert out["itm_loss"].item() == pytest.approx(itm.item(), abs=1e-5)

    out["loss"].backward()
    for name in ("itm_score.weight", "itc_text_head.weight", "itc_image_head.weight", "logit_scale"):
        assert model.get_parameter(name).grad is not None, name


def test_logit_scale_is_kept_in_the_originals_temperature_range():
    config = tiny_bridgetower_config(pretraining_heads=["itm", "itc"], logit_scale_init_value=9.0)
    model = bt.BridgeTowerForPreTraining(config)
    input_ids, attention_mask = padded_text_batch(config, batch_size=2)
    RetrievalObjective(model)(input_ids, attention_mask, random_pixels(config, 2), torch.tensor([0, 1]))
    assert model.logit_scale.item() == pytest.approx(objectives.LOGIT_SCALE_RANGE[1])
