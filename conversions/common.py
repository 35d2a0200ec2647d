"""What every converter shares: safe reading, strict loading, and the atomic Hub-folder writer."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the problem and the fix."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON ({error}); the file is corrupt or truncated.") from None


def read_labels(path: Path, num_labels: int) -> dict[int, str]:
    """A classifier's labels from JSON: a list in index order, `{label: index}` (e.g. VQAv2's answer2label) or
    `{"index": label}` (an id2label). Returns id2label after checking it names each of the `num_labels` outputs once."""
    data = read_json(path)
    if isinstance(data, list):
        id2label = dict(enumerate(data))
    elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
        id2label = {index: label for label, index in data.items()}
        if len(id2label) != len(data):
            raise ConversionError(f"{path}: two labels share an index.")
    elif isinstance(data, dict) and all(str(k).isdigit() for k in data):
        id2label = {int(k): v for k, v in data.items()}
    else:
        raise ConversionError(
            f'{path} must hold a JSON list of labels, a {{label: index}} or an {{"index": label}} mapping.'
        )
    labels = list(id2label.values())
    problems = []
    if sorted(id2label) != list(range(num_labels)):
        problems.append(
            f"it has {len(id2label)} entries with indices {min(id2label, default=None)}.."
            f"{max(id2label, default=None)}, the classifier {num_labels} outputs (0..{num_labels - 1})"
        )
    if any(not isinstance(label, str) or not label.strip() for label in labels):
        problems.append("some labels are empty or not strings")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})[:5]
    if duplicates:
        problems.append(f"duplicate labels {duplicates}")
    if problems:
        raise ConversionError(f"{path} does not fit the checkpoint: " + "; ".join(problems) + ".")
    return dict(sorted(id2label.items()))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ConversionError(
            f"cannot read {path} as safetensors ({error}); the file is corrupt or truncated."
        ) from None


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt/unsafe files
        raise ConversionError(
            f"cannot read {path} as a PyTorch state dict ({type(error).__name__}: {str(error)[:200]}); the file is "
            "corrupt, truncated, or holds more than tensors (only weights-only files are read)."
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{path} does not hold a flat {{name: tensor}} state dict.")
    return state_dict


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read weights from a file (.safetensors, .bin/.pt) or a folder (single or sharded safetensors, or .bin)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist.")
    if path.is_file():
        return _load_safetensors(path) if path.suffix == ".safetensors" else _load_torch(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(_load_safetensors(path / shard))
        return state_dict
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return load_state_dict_file(path / name)
    raise ConversionError(f"{path} holds no model.safetensors, sharded safetensors or pytorch_model.bin.")


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load so that every target key is filled and every source key used; raise naming both lists otherwise."""
    expected = model.state_dict()
    tied = {
        k for k in expected if k == "mlm_score.decoder.weight" and getattr(model.config, "tie_word_embeddings", False)
    }
    missing = sorted(set(expected) - set(state_dict) - tied)
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state_dict) & set(expected))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}"
        )
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched[:5])}")
    if problems:
        raise ConversionError(
            f"{source} does not match the inferred config — " + " | ".join(problems) + ". Check that the checkpoint "
            "is complete and that any config overrides agree with its tensor shapes."
        )
    model.load_state_dict(state_dict, strict=not tied)


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders (and some writers 0600 files): give the result the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_folder_atomically(output_dir: Path, fill, overwrite: bool = False) -> Path:
    """Run `fill(tmp_dir)` on a fresh temporary folder next to `output_dir`, then rename it into place.

    Nothing is left at `output_dir` if `fill` fails; an existing `output_dir` is replaced only with `overwrite`.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not overwrite:
        raise ConversionError(f"{output_dir} already exists; pass --overwrite to replace it.")
    created = [parent for parent in reversed(output_dir.parents) if not parent.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        fill(tmp_dir)
        _make_readable(tmp_dir)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / "previous")
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for parent in reversed(created):  # parents this call made, deepest first
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
    return output_dir
