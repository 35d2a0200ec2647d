"""`towerzoo convert --entry NAME INPUT OUTPUT_DIR`: the source format (and a classifier's labels) come from the zoo
registry, the entry is recorded in verification.json, and the folder's README.md is the real card; a contradicting
SOURCE, a missing labels file, an entry that is not a conversion, or no format at all fail before anything is written."""

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from testing_utils import transformers_config

from towerzoo.cli import _convert_options, main
from towerzoo.conversions.common import ConversionError
from towerzoo.registry import RegistryError, get_entry

ENTRY = "bridgetower-base-itm-mlm"  # a bridgetower-transformers entry


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small transformers BridgeTowerForMaskedLM saved with save_pretrained (stands in for the Hub download)."""
    folder = tmp_path_factory.mktemp("hf") / "bridgetower"
    torch.manual_seed(0)
    transformers.BridgeTowerForMaskedLM(transformers_config()).save_pretrained(folder)
    return folder


def test_convert_by_entry_records_it_and_writes_the_card(checkpoint, tmp_path, tiny_tokenizer_dir, capsys):
    output = tmp_path / "out"
    assert main(["convert", "--entry", ENTRY, str(checkpoint), str(output), "--tokenizer", tiny_tokenizer_dir]) == 0
    assert "wrote" in capsys.readouterr().out
    verification = json.loads((output / "verification.json").read_text())
    assert verification["towerzoo_entry"] == ENTRY and verification["source_format"] == "bridgetower-transformers"
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("\n---\n", 1)[0].removeprefix("---\n"))
    assert metadata["base_model"] == f"BridgeTower/{ENTRY}" and metadata["license"] == "mit"
    assert metadata["pipeline_tag"] == "fill-mask"  # a masked-LM head
    assert f"# {ENTRY}\n" in card and f"towerzoo convert --entry {ENTRY}" in card
    assert "- Reference the outputs were compared with: transformers" in card
    # `towerzoo card` without --entry finds the recorded entry
    assert main(["card", str(output)]) == 0
    assert (output / "README.md").read_text() == card


def test_convert_by_source_alone_still_writes_a_card(checkpoint, tmp_path):
    output = tmp_path / "out"
    assert main(["convert", "bridgetower-transformers", str(checkpoint), str(output)]) == 0
    card = (output / "README.md").read_text()
    assert "towerzoo_entry" not in json.loads((output / "verification.json").read_text())
    assert "library_name: transformers" in card and "This folder has no processor files" in card


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--entry", ENTRY, "managertower-original"], r"zoo entry 'bridgetower-base-itm-mlm' is a bridgetower-transformers checkpoint, not managertower-original; drop SOURCE"),
        (["--entry", "bridgetower-base-vqav2"], r"has a classifier of 3129 outputs: pass --labels with the original's VQAv2 answer vocabulary"),
        (["--entry", "towerzoo-shapes-bridgetower"], r"zoo entry 'towerzoo-shapes-bridgetower' is not converted from a checkpoint"),
        (["--entry", "bridgetower-itm-mlm"], r"no zoo entry named 'bridgetower-itm-mlm'\. Did you mean bridgetower-base-itm-mlm"),
        ([], r"give the SOURCE format or --entry NAME"),
    ],
)  # fmt: skip
def test_bad_entry_use_fails_before_writing(checkpoint, tmp_path, capsys, arguments, message):
    output = tmp_path / "out"
    assert main(["convert", *arguments, str(checkpoint), str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("towerzoo convert: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_registry_label_names_become_the_labels_file(tmp_path):
    args = argparse.Namespace(entry="managertower-base-nlvr2", source=None, labels=None, tokenizer=Path("tok"))
    source, labels = _convert_options(args, tmp_path)
    assert source == "managertower-original" and json.loads(labels.read_text()) == ["False", "True"]
    given = argparse.Namespace(
        entry="bridgetower-base-vqav2", source=None, labels=tmp_path / "a2l.json", tokenizer=None
    )
    assert _convert_options(given, tmp_path) == ("bridgetower-original", tmp_path / "a2l.json")
    with pytest.raises(RegistryError):
        _convert_options(argparse.Namespace(entry="nope", source=None, labels=None, tokenizer=None), tmp_path)
    with pytest.raises(ConversionError, match="give the SOURCE format"):
        _convert_options(argparse.Namespace(entry=None, source=None, labels=None, tokenizer=None), tmp_path)
    assert get_entry("managertower-base-nlvr2").labels.names == ("False", "True")
