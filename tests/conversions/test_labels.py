"""`--labels`: a classifier's label names (VQAv2's answer vocabulary, …) land in config.id2label, checked."""

import json

import pytest
from original_bridgetower_checkpoints import DIM, write_task_checkpoint

import towerzoo.models.bridgetower as bt
from towerzoo.cli import main
from towerzoo.conversions import bridgetower_original as converter
from towerzoo.conversions.common import ConversionError

NUM_ANSWERS = DIM[3129]


@pytest.fixture(scope="module")
def vqa_checkpoint(tmp_path_factory):
    return write_task_checkpoint(tmp_path_factory.mktemp("ckpt"), "vqa")


def answers(count: int) -> list[str]:
    return [f"answer {i}" for i in range(count)]


@pytest.mark.parametrize("layout", ["list", "answer2label", "id2label"])
def test_labels_become_id2label(vqa_checkpoint, tmp_path, layout):
    names = answers(NUM_ANSWERS)
    data = {
        "list": names,
        "answer2label": {name: index for index, name in reversed(list(enumerate(names)))},
        "id2label": {str(index): name for index, name in enumerate(names)},
    }[layout]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(data))
    folder = converter.run(vqa_checkpoint, tmp_path / "out", labels=labels)
    config = bt.BridgeTowerConfig.from_pretrained(folder)
    assert [config.id2label[i] for i in range(NUM_ANSWERS)] == names
    assert config.label2id["answer 3"] == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (answers(NUM_ANSWERS - 1), "outputs"),
        (answers(NUM_ANSWERS - 1) + ["answer 0"], "duplicate labels"),
        ({"yes": 0, "no": 0}, "share an index"),
        ("yes", "must hold a JSON list"),
    ],
    ids=["too_few", "duplicate", "shared_index", "not_a_collection"],
)
def test_bad_label_files_fail_without_writing(vqa_checkpoint, tmp_path, capsys, data, message):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(data))
    args = ["convert", "bridgetower-original", str(vqa_checkpoint), str(tmp_path / "out"), "--labels", str(labels)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_labels_need_a_classifier(tmp_path):
    checkpoint = write_task_checkpoint(tmp_path, "pretrain")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["yes", "no"]))
    with pytest.raises(ConversionError, match="no VQA/SNLI-VE/NLVR2 head"):
        converter.run(checkpoint, tmp_path / "out", labels=labels)
