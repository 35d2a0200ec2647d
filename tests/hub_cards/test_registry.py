"""The zoo registry (core/zoo.yaml): it loads, every entry's converter and harness tasks exist (parametrised over the
registry), `towerzoo list` prints it, and a malformed registry or an unknown name fails naming the entry and field."""

import json
import re
from pathlib import Path

import pytest
import yaml

from towerzoo.cli import CONVERTERS, build_parser, main
from towerzoo.registry import REGISTRY_PATH, RegistryError, get_entry, load_registry

ENTRIES = load_registry()


def eval_tasks() -> set[str]:
    """The task names `towerzoo eval` takes (its subcommands)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    return set(next(a for a in commands["eval"]._actions if a.dest == "task").choices)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_converter_exists(name):
    entry = ENTRIES[name]
    assert entry.source.format is None or entry.source.format in CONVERTERS
    assert entry.source.checkpoint


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_harness_tasks_exist(name):
    """Tasks marked as having a harness are `towerzoo eval` tasks, and tasks marked without one are not (so a new
    harness shows up here until the registry marks it)."""
    tasks = eval_tasks()
    for task in ENTRIES[name].tasks:
        assert (task.name in tasks) == task.harness, (task.name, task.harness, sorted(tasks))


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_numbers_cite_their_table(name):
    entry = ENTRIES[name]
    for number in entry.reported:
        assert 0 < number.value <= 100 and number.table.strip()
        assert entry.task(number.task, number.dataset.key) is not None
        assert entry.paper is not None  # a reported number needs the paper it comes from
    if entry.labels is not None:
        assert entry.labels.size > 1


def test_known_numbers_and_label_sets():
    """Spot checks against the papers (arXiv 2306.00103's comparison table) and the originals' data code."""
    numbers = {(r.split, r.metric): r.value for r in get_entry("bridgetower-base-vqav2").reported}
    assert numbers == {("test-dev", "accuracy"): 78.66, ("test-std", "accuracy"): 78.73}
    numbers = {(r.split, r.metric): r.value for r in get_entry("managertower-base-flickr30k").reported}
    assert numbers == {("test", "ir_r1"): 86.56, ("test", "tr_r1"): 95.64}
    assert get_entry("bridgetower-base-snli-ve").labels.names == ("contradiction", "neutral", "entailment")
    assert get_entry("managertower-base-vqav2").labels.size == 3129


def test_demo_entry_is_trained_here_without_paper_numbers():
    entry = get_entry("towerzoo-shapes-bridgetower")
    assert entry.source.format is None and entry.reported == () and entry.license == "apache-2.0"
    assert entry.architecture == "bridgetower"
    assert {(t.name, t.dataset.key) for t in entry.tasks} == {
        ("vqav2", "towerzoo-shapes"),
        ("retrieval", "towerzoo-shapes"),
    }


def test_every_released_checkpoint_is_listed():
    formats = {}
    for entry in ENTRIES.values():
        formats.setdefault(entry.source.format, set()).add(entry.source.checkpoint.split("?")[0].rsplit("/", 1)[-1])
    assert {"bridgetower-base", "bridgetower-base-itm-mlm", "bridgetower-large-itm-mlm"} < formats[
        "bridgetower-transformers"
    ]
    assert len(formats["bridgetower-original"]) == 10  # pt base/large, VQAv2 ×4, Flickr, COCO, SNLI-VE, NLVR2
    assert {f"ManagerTower_{kind}.ckpt" for kind in ("pt_base", "ftfpt_base_vqav2", "ftfpt_base_nlvr2")} < formats[
        "managertower-original"
    ]
    assert formats["vidla-from-clip"] == {"clip-vit-base-patch16", "clip-vit-base-patch32"}


def test_unknown_entry_names_close_matches():
    with pytest.raises(
        RegistryError, match=r"no zoo entry named 'bridgetower-base-vqa'\. Did you mean bridgetower-base-vqav2"
    ):
        get_entry("bridgetower-base-vqa")
    with pytest.raises(RegistryError, match=r"Known entries: bridgetower-base, "):
        get_entry("zzz")


def test_list_prints_a_table(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "ARCH", "SOURCE"]
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(ENTRIES)]}
    assert list(rows) == list(ENTRIES)
    assert re.search(r"vqav2\(vqav2\)\s+test-dev 78\.66, test-std 78\.73\s+mit$", rows["bridgetower-base-vqav2"])
    assert "(trained here)" in rows["towerzoo-shapes-bridgetower"]
    assert "snli-ve*(snli-ve)" in rows["managertower-base-snli-ve"]
    assert lines[-1] == f"{len(ENTRIES)} entries. * = no `towerzoo eval` harness for this task yet."


def test_list_json_and_architecture_filter(capsys):
    assert main(["list", "--format", "json", "--architecture", "vidla"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == ["vidla-base-patch16-from-clip", "vidla-base-patch32-from-clip"]
    assert listed[0]["tasks"][0] == {"name": "video-retrieval", "dataset": "msrvtt", "harness": True}
    assert listed[0]["paper"] == "2403.14870" and listed[0]["reported"] == []


# ---- a malformed registry: each breakage names the entry and field ------------------------------------------------
def _edit(raw: dict, change) -> dict:
    change(raw)
    return raw


def _entry(name: str, field: str, value):
    def change(raw):
        if value is None:
            del raw["entries"][name][field]
        else:
            raw["entries"][name][field] = value

    return change


BREAKAGES = {
    "missing field": (
        _entry("bridgetower-base", "license", None),
        r"entry 'bridgetower-base': missing field\(s\) \['license'\]",
    ),
    "unknown field": (
        _entry("bridgetower-base", "licence", "mit"),
        r"entry 'bridgetower-base': unknown field\(s\) \['licence'\]",
    ),
    "architecture": (
        _entry("bridgetower-base", "architecture", "clip"),
        r"entry 'bridgetower-base', field 'architecture': 'clip' is not one of",
    ),
    "converter": (
        _entry("bridgetower-base", "source", {"format": "bridgetower-onnx", "checkpoint": "x"}),
        r"entry 'bridgetower-base', field 'source.format': 'bridgetower-onnx' is not a converter",
    ),
    "dataset": (
        _entry("bridgetower-base", "tasks", [{"name": "vqav2", "dataset": "vqa-v2"}]),
        r"entry 'bridgetower-base', field 'tasks\[0\].dataset': 'vqa-v2' is not in datasets",
    ),
    "harness flag": (
        _entry("bridgetower-base", "tasks", [{"name": "nlvr2", "dataset": "nlvr2", "harness": "no"}]),
        r"entry 'bridgetower-base', field 'tasks\[0\]', field 'harness': expected true or false, got 'no'",
    ),
    "number without its task": (
        lambda raw: raw["entries"]["bridgetower-base-vqav2"]["reported"][0].update(task="retrieval"),
        r"entry 'bridgetower-base-vqav2', field 'reported\[0\]': retrieval on vqav2 is not among the entry's tasks",
    ),
    "number out of range": (
        lambda raw: raw["entries"]["bridgetower-base-vqav2"]["reported"][1].update(value=7873),
        r"entry 'bridgetower-base-vqav2', field 'reported\[1\].value': 7873 is not a percentage",
    ),
    "number without table": (
        lambda raw: raw["entries"]["bridgetower-base-vqav2"]["reported"][1].pop("table"),
        r"entry 'bridgetower-base-vqav2', field 'reported\[1\]': missing field\(s\) \['table'\]",
    ),
    "paper": (
        _entry("bridgetower-base", "paper", "bridge-tower"),
        r"entry 'bridgetower-base', field 'paper': 'bridge-tower' is not in papers",
    ),
    "name": (
        lambda raw: raw["entries"].update({"BridgeTower Base": raw["entries"]["bridgetower-base"]}),
        r"entry 'BridgeTower Base': names are lower-case",
    ),
    "dataset alias": (
        lambda raw: raw["datasets"]["coco"].update(aliases=["shapes"]),
        r"dataset 'towerzoo-shapes', field 'aliases': \['shapes'\] is taken or not a string",
    ),
    "label set": (
        lambda raw: raw["label_sets"]["nlvr2"].update(count=2),
        r"label set 'nlvr2': give either 'names'",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_malformed_registry_names_entry_and_field(tmp_path, breakage):
    change, message = BREAKAGES[breakage]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(_edit(yaml.safe_load(REGISTRY_PATH.read_text()), change)))
    with pytest.raises(RegistryError, match=re.escape(str(path)) + ": " + message):
        load_registry(path)


def test_registry_that_is_not_yaml(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text("entries: [unclosed\n")
    with pytest.raises(RegistryError, match=r"is not valid YAML"):
        load_registry(path)
    with pytest.raises(RegistryError, match=r"cannot read the registry"):
        load_registry(Path(tmp_path / "missing.yaml"))
