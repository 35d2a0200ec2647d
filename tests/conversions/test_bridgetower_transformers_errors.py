"""Bad input to `towerzoo convert bridgetower-transformers`, through `run` and through the CLI: every failure names the
problem, and leaves nothing in or next to the output folder (no temporary folders either)."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from testing_utils import transformers_config

import towerzoo.conversions.bridgetower_transformers as converter
import towerzoo.conversions.hub_folder as hub_folder
from towerzoo.cli import main
from towerzoo.conversions.common import ConversionError

ENTRIES = ["run", "cli"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """transformers' own BridgeTowerForMaskedLM and BridgeTowerModel, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("hf_checkpoints")
    folders = {}
    for kind, cls in (("masked_lm", transformers.BridgeTowerForMaskedLM), ("bare", transformers.BridgeTowerModel)):
        torch.manual_seed(0)
        cls(transformers_config()).save_pretrained(root / kind)
        folders[kind] = root / kind
    return folders


@pytest.fixture
def workspace(tmp_path, checkpoints):
    """A fresh copy of each checkpoint under src/, and an output parent holding one unrelated file."""
    for kind, folder in checkpoints.items():
        shutil.copytree(folder, tmp_path / "src" / kind)
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "sibling.txt").write_text("not ours")
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` (hidden ones included), with a content hash for files."""
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


def attempt(entry: str, source: Path, output: Path, capsys, overwrite: bool = False, tokenizer=None) -> str | None:
    """Convert through `run` or the CLI; None on success, else the error message (checked to be well-formed)."""
    if entry == "run":
        try:
            converter.run(source, output, tokenizer=tokenizer, overwrite=overwrite)
        except ConversionError as error:
            return str(error)
        return None
    argv = ["convert", "bridgetower-transformers", str(source), str(output)]
    argv += ["--overwrite"] if overwrite else []
    argv += ["--tokenizer", str(tokenizer)] if tokenizer else []
    code = main(argv)
    captured = capsys.readouterr()
    if code == 0:
        assert f"wrote {output.resolve()}" in captured.out
        return None
    assert code == 2, captured
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("towerzoo convert: error: ")]
    assert len(errors) == 1, captured.err
    return errors[0]


def assert_fails(entry, source, output, capsys, pattern: str, **kwargs) -> str:
    parent = output.parent
    before = snapshot(parent)
    message = attempt(entry, source, output, capsys, **kwargs)
    assert message is not None, "the conversion should have failed"
    assert re.search(pattern, message, re.DOTALL), message
    assert snapshot(parent) == before, "the failed conversion left something in or next to the output folder"
    return message


# --------------------------------------------------------------------------------------------------------------------
# Breaking a checkpoint
# --------------------------------------------------------------------------------------------------------------------


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def edit_weights(folder: Path, change) -> None:
    state_dict = load_file(folder / "model.safetensors")
    change(state_dict)
    save_file(state_dict, folder / "model.safetensors", metadata={"format": "pt"})


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _set(key: str, value, sub: str | None = None):
    def change(config):
        (config[sub] if sub else config)[key] = value

    return change


def _add_unexpected_layer(state_dict):
    # a well-formed key for a cross-modal layer the config does not have
    state_dict["bridgetower.cross_modal_text_layers.7.attention.self.query.weight"] = torch.zeros(64, 64)


def _drop_text_pooler_weight(state_dict):
    # transformers saves the bare model's keys without the "bridgetower." prefix
    key = "cross_modal_text_pooler.dense.weight"
    state_dict.pop(f"bridgetower.{key}" if f"bridgetower.{key}" in state_dict else key)


BREAKAGES = {
    "other_model_type": (
        lambda f: edit_config(f, _set("model_type", "clip")),
        r"model_type='clip', not 'bridgetower'",
    ),
    "truncated_safetensors": (
        lambda f: truncate(f / "model.safetensors"),
        r"model\.safetensors.*corrupt or truncated",
    ),
    "corrupt_config_json": (lambda f: truncate(f / "config.json"), r"config\.json is not valid JSON"),
    "missing_key": (
        lambda f: edit_weights(f, _drop_text_pooler_weight),
        r"missing keys \(1\): bridgetower\.cross_modal_text_pooler\.dense\.weight",
    ),
    "unexpected_key": (
        lambda f: edit_weights(f, _add_unexpected_layer),
        r"unexpected keys \(1\): bridgetower\.cross_modal_text_layers\.7\.self_attention\.attn\.q_proj\.weight",
    ),
    "hidden_size_contradicts_weights": (
        lambda f: edit_config(f, _set("hidden_size", 128)),
        r"shape mismatches: .*checkpoint \(64,\) vs model \(128,\)",
    ),
    "text_hidden_size_contradicts_weights": (
        lambda f: edit_config(f, _set("hidden_size", 128, sub="text_config")),
        r"shape mismatches: .*text_model.*checkpoint \(64,\) vs model \(128,\)",
    ),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), r"holds no model\.safetensors"),
    "no_config": (lambda f: (f / "config.json").unlink(), r"no config\.json"),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_checkpoint_fails_cleanly(workspace, capsys, breakage, entry):
    source = workspace / "src" / "masked_lm"
    breaker, pattern = BREAKAGES[breakage]
    breaker(source)
    assert_fails(entry, source, workspace / "parent" / "out", capsys, pattern)


@pytest.mark.parametrize("breakage", ["missing_key", "hidden_size_contradicts_weights"])
def test_bad_bare_model_checkpoint_fails_cleanly(workspace, capsys, breakage):
    source = workspace / "src" / "bare"
    breaker, pattern = BREAKAGES[breakage]
    breaker(source)
    assert_fails("cli", source, workspace / "parent" / "out", capsys, pattern.replace(r"bridgetower\.", ""))


def test_unknown_key_fails_cleanly_through_run(workspace, capsys):
    source = workspace / "src" / "masked_lm"
    edit_weights(source, lambda sd: sd.update({"bridgetower.foo.weight": torch.zeros(2)}))
    parent = workspace / "parent"
    before = snapshot(parent)
    with pytest.raises(ConversionError, match=r"foo\.weight.*Is this a BridgeTower checkpoint"):
        converter.run(source, parent / "out")
    assert snapshot(parent) == before


def test_unknown_key_fails_cleanly_through_cli(workspace, capsys):
    source = workspace / "src" / "masked_lm"
    edit_weights(source, lambda sd: sd.update({"bridgetower.foo.weight": torch.zeros(2)}))
    assert_fails("cli", source, workspace / "parent" / "out", capsys, r"foo\.weight")


# --------------------------------------------------------------------------------------------------------------------
# Failures after the checkpoint was read: verification, writing
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_failed_verification_writes_nothing(workspace, capsys, monkeypatch, entry):
    monkeypatch.setattr(converter, "verify_against_transformers", lambda *args: {"pooler_output": 0.5})
    assert_fails(
        entry,
        workspace / "src" / "masked_lm",
        workspace / "parent" / "out",
        capsys,
        r"differs from transformers' built-in BridgeTower by 0\.5 on pooler_output.*Nothing was written",
    )


def _fail_while_writing(monkeypatch) -> None:
    """Fail after save_pretrained has filled the temporary folder (the last step before the rename)."""

    def boom(folder):
        assert (folder / "model.safetensors").is_file(), "the temporary folder should be filled by now"
        raise ConversionError("injected failure while writing")

    monkeypatch.setattr(hub_folder, "check_self_contained", boom)


@pytest.mark.parametrize("entry", ENTRIES)
def test_failure_while_writing_leaves_no_temporary_folder(workspace, capsys, monkeypatch, entry):
    _fail_while_writing(monkeypatch)
    assert_fails(entry, workspace / "src" / "masked_lm", workspace / "parent" / "out", capsys, "injected failure")


def test_failure_while_writing_does_not_create_the_parent(workspace, capsys, monkeypatch):
    _fail_while_writing(monkeypatch)
    parent = workspace / "new_parent" / "deeper"
    assert attempt("run", workspace / "src" / "masked_lm", parent / "out", capsys) is not None
    assert not (workspace / "new_parent").exists()


# --------------------------------------------------------------------------------------------------------------------
# An existing output folder
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def existing_output(workspace) -> Path:
    output = workspace / "parent" / "out"
    output.mkdir()
    (output / "marker.txt").write_text("an earlier conversion")
    return output


@pytest.mark.parametrize("entry", ENTRIES)
def test_existing_output_without_overwrite_is_kept(workspace, existing_output, capsys, entry):
    assert_fails(entry, workspace / "src" / "masked_lm", existing_output, capsys, r"already exists; pass --overwrite")
    assert (existing_output / "marker.txt").read_text() == "an earlier conversion"


@pytest.mark.parametrize("entry", ENTRIES)
def test_existing_output_with_overwrite_is_replaced(workspace, existing_output, capsys, tiny_tokenizer_dir, entry):
    source = workspace / "src" / ("masked_lm" if entry == "run" else "bare")
    assert attempt(entry, source, existing_output, capsys, overwrite=True, tokenizer=tiny_tokenizer_dir) is None
    parent_listing = sorted(p.name for p in existing_output.parent.iterdir())
    assert parent_listing == ["out", "sibling.txt"], parent_listing  # no .out.tmp-*/.out.old-* left
    files = {p.name for p in existing_output.iterdir()}
    assert "marker.txt" not in files
    assert {"config.json", "model.safetensors", "verification.json", "README.md", "tokenizer.json"} <= files
    assert not any(name.startswith(".") for name in files)
    verification = json.loads((existing_output / "verification.json").read_text())
    assert verification["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("entry", ENTRIES)
def test_overwrite_keeps_the_old_output_when_writing_fails(workspace, existing_output, capsys, monkeypatch, entry):
    _fail_while_writing(monkeypatch)
    assert_fails(entry, workspace / "src" / "masked_lm", existing_output, capsys, "injected failure", overwrite=True)
    assert (existing_output / "marker.txt").read_text() == "an earlier conversion"
