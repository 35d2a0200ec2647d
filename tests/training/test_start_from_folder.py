"""Starting from a towerzoo Hub folder: the folder's own code and weights, a new task head built from its config
(encoder weights kept, new and dropped tensors reported, NLVR2's third type row and a new image size adapted as the
original adapts them), and the written folder giving the trained model's logits in a fresh process without
towerzoo."""

import json

import pytest
import torch
from evaluation_fixtures import ANSWERS, tiny_model_folder
from PIL import Image
from safetensors.torch import load_file
from testing_utils import run_without_towerzoo

import towerzoo.models.bridgetower as bt
from towerzoo.training import trainer as trainer_module
from towerzoo.training.loading import resize_position_table

FROZEN = ["--max-steps", "2", "--learning-rate", "0"]  # runs the whole path, leaves the weights as they started


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pre-training folder (MLM + ITM + ITC heads, random weights) and its weights."""
    folder = tiny_model_folder(
        tmp_path_factory.mktemp("pretrained") / "folder",
        bt.BridgeTowerForPreTraining,
        pretraining_heads=["mlm", "itm", "itc"],
    )
    return folder, load_file(folder / "model.safetensors")


@pytest.fixture
def captured(monkeypatch):
    """The model and processor `finetune` hands to `save_model_folder`."""
    seen = {}
    original = trainer_module.save_model_folder

    def save(model, processor, folder, record):
        seen.update(model=model, processor=processor)
        return original(model, processor, folder, record)

    monkeypatch.setattr(trainer_module, "save_model_folder", save)
    return seen


def test_a_new_head_on_the_folders_encoder(pretrained, finetune, tmp_path, captured):
    folder, weights = pretrained
    assert finetune("snli-ve", tmp_path, "--model", folder, "--image-size", "48", *FROZEN) == 0
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    start = record["start"]
    assert start["model"] == str(folder) and start["class"] == "BridgeTowerForPreTraining" and start["new_head"]
    assert start["transfer"]["new"] and all(k.startswith("snli_classifier.") for k in start["transfer"]["new"])
    assert {k.split(".")[0] for k in start["transfer"]["dropped"]} == {
        "mlm_score",
        "itm_score",
        "itc_text_head",
        "itc_image_head",
        "itc_cross_modal_head",
        "logit_scale",
    }
    assert start["transfer"]["adapted"] == [
        "bridgetower.vision_model.embeddings.position_embedding.weight: 17 → 37 positions (bicubic)"
    ]
    # a new head takes the recipe's shape; the model runs at the new size with the processor set to it
    assert (record["settings"]["task_head_layers"], record["settings"]["head_hidden_scale"]) == (2, 2)
    saved = load_file(tmp_path / "model" / "model.safetensors")
    for key, value in weights.items():
        if key.startswith("bridgetower.") and "position_embedding" not in key:
            torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    table = weights["bridgetower.vision_model.embeddings.position_embedding.weight"]
    torch.testing.assert_close(
        saved["bridgetower.vision_model.embeddings.position_embedding.weight"], resize_position_table(table, 37)
    )
    assert captured["processor"].image_processor.crop_size == {"height": 48, "width": 48}

    # the written folder, loaded as a Hub user loads it, gives the trained model's logits
    image = tmp_path / "image.png"
    Image.new("RGB", (60, 50), "orange").save(image)
    texts = ["a cat sits on the mat", "two dogs play"]
    model, processor = captured["model"], captured["processor"]
    with torch.no_grad():
        expected = model(**processor(images=[Image.open(image)] * 2, text=texts, padding="max_length")).logits
    script = f"""
    import json, torch
    from PIL import Image
    from transformers import AutoModelForSequenceClassification, AutoProcessor
    folder = {str(tmp_path / "model")!r}
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=[Image.open({str(image)!r})] * 2, text={texts!r}, padding="max_length")
    with torch.no_grad():
        print(json.dumps(model(**inputs).logits.tolist()))
    print(type(model).__name__, model.config.id2label[0])
    """
    output = run_without_towerzoo(script, tmp_path).stdout.splitlines()
    torch.testing.assert_close(torch.tensor(json.loads(output[0])), expected, rtol=1e-5, atol=1e-5)
    assert output[1] == "BridgeTowerForVisualEntailment contradiction"


def test_nlvr2_copies_the_image_type_row_and_retrieval_keeps_the_heads(pretrained, finetune, tmp_path):
    folder, weights = pretrained
    # the recipe's head_hidden_scale 1.5 needs the classifier width rounded to an int (the original's int(...));
    # towerzoo's classifier takes whole scales only, so this run names one
    nlvr2 = ["--model", folder, "--image-size", "32", "--head-hidden-scale", "2", *FROZEN]
    assert finetune("nlvr2", tmp_path / "nlvr2", *nlvr2) == 0
    types = load_file(tmp_path / "nlvr2" / "model" / "model.safetensors")["bridgetower.token_type_embeddings.weight"]
    torch.testing.assert_close(types, weights["bridgetower.token_type_embeddings.weight"][[0, 1, 1]])

    assert finetune("retrieval", tmp_path / "retrieval", "--model", folder, "--image-size", "32", *FROZEN) == 0
    record = json.loads((tmp_path / "retrieval" / "model" / "training.json").read_text())
    assert record["start"]["transfer"]["new"] == [] and not record["start"]["new_head"]
    assert {k.split(".")[0] for k in record["start"]["transfer"]["dropped"]} == {"mlm_score"}
    assert record["recipe"]["name"] == "bridgetower-retrieval-flickr30k"  # from the Karpathy file's dataset
    saved = load_file(tmp_path / "retrieval" / "model" / "model.safetensors")
    torch.testing.assert_close(saved["itm_score.weight"], weights["itm_score.weight"], rtol=0, atol=0)


def test_a_folder_with_the_tasks_head_keeps_it(finetune, config_files, tmp_path):
    first = tmp_path / "first"
    assert finetune("snli-ve", first, "--max-steps", "2", init_config=config_files["bridgetower"]) == 0
    assert finetune("snli-ve", tmp_path / "again", "--model", first / "model", "--image-size", "32", *FROZEN) == 0
    record = json.loads((tmp_path / "again" / "model" / "training.json").read_text())
    assert record["start"]["transfer"]["new"] == [] and record["start"]["transfer"]["dropped"] == []
    before, after = (
        load_file(first / "model" / "model.safetensors"),
        load_file(tmp_path / "again" / "model" / "model.safetensors"),
    )
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)


def test_a_vqa_folder_keeps_its_answer_vocabulary(finetune, tmp_path):
    folder = tiny_model_folder(tmp_path / "vqa")  # a VQA head whose labels are evaluation_fixtures.ANSWERS
    assert finetune("vqav2", tmp_path / "out", "--model", folder, "--image-size", "32", *FROZEN) == 0
    record = json.loads((tmp_path / "out" / "model" / "training.json").read_text())
    assert record["start"]["transfer"]["new"] == [] and not record["start"]["new_head"]
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"] == {str(k): v for k, v in enumerate(ANSWERS)}
