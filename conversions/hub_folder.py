"""Write a converted model as a self-contained Hub folder: code, config with `auto_map`, safetensors, processor,
`verification.json` and a card stub — atomically (temp folder, then rename)."""

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin

from towerzoo.conversions.common import ConversionError, write_folder_atomically


def auto_map_for(model: PreTrainedModel, exposed: dict[str, str]) -> dict[str, str]:
    """`auto_map` entries: AutoConfig plus `{auto class: module.class}` for every class in `exposed`, and `AutoModel`
    for the saved class when no exposed class claims it (so every towerzoo folder loads with `AutoModel`)."""
    config_module = type(model.config).__module__.rsplit(".", 1)[-1]
    model_module = type(model).__module__.rsplit(".", 1)[-1]
    auto_map = {"AutoConfig": f"{config_module}.{type(model.config).__name__}"}
    for class_name, auto_class in exposed.items():
        auto_map.setdefault(auto_class, f"{model_module}.{class_name}")
    auto_map.setdefault("AutoModel", f"{model_module}.{type(model).__name__}")
    return auto_map


def _guarded_imports(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside `try:` blocks or `if is_xxx_available():` blocks: transformers lets remote
    code import optional packages there, and the code must then raise a clear error itself when they are missing."""
    guarded = set()
    for node in ast.walk(tree):
        body = []
        if isinstance(node, ast.Try):
            body = node.body
        elif isinstance(node, ast.If):
            test = node.test
            name = getattr(test.func, "id", getattr(test.func, "attr", "")) if isinstance(test, ast.Call) else ""
            if name.startswith("is_") and name.endswith("_available"):
                body = node.body
        for statement in body:
            guarded.update(
                id(child) for child in ast.walk(statement) if isinstance(child, (ast.Import, ast.ImportFrom))
            )
    return guarded


def check_self_contained(folder: Path) -> None:
    """Every `.py` in the folder imports only the standard library, torch, transformers, huggingface_hub,
    safetensors, PIL, numpy or sibling files that are present — what a Hub user is guaranteed to have — except
    behind a `try:` or `if is_xxx_available():` guard."""
    allowed = {"torch", "transformers", "huggingface_hub", "safetensors", "PIL", "numpy"}
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = _guarded_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level > 1 or not (folder / f"{node.module}.py").is_file():
                    raise ConversionError(f"{path.name} imports .{node.module}, which the folder does not contain.")
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in allowed and top not in stdlib:
                        raise ConversionError(f"{path.name} imports {name}, which a Hub user may not have.")


def write_hub_folder(
    model: PreTrainedModel,
    output_dir: Path,
    *,
    exposed: dict[str, str],
    processor: ProcessorMixin | None = None,
    verification: dict | None = None,
    card: str | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    save_kwargs: dict | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Save `model` (and `processor`) as a Hub folder loadable with `trust_remote_code=True`.

    `exposed` maps class names to the Auto classes that should load them from this folder (the saved class must be
    among them). The model code is copied by transformers from the class's module and its relative imports.
    `save_kwargs` go to the model's `save_pretrained` (e.g. RESTORE's `adapters_only=True`); `extra_files` are copied
    in as they are (e.g. a transformers processor's files, when loading it would need packages absent here).
    """
    model_class = type(model).__name__
    if model_class not in exposed:
        raise ValueError(f"{model_class} must be listed in `exposed` with its Auto class.")

    def fill(tmp: Path) -> None:
        model.config.auto_map = auto_map_for(model, exposed)
        type(model).register_for_auto_class(exposed[model_class])
        model.save_pretrained(tmp, max_shard_size=max_shard_size, **(save_kwargs or {}))
        if processor is not None:
            if not type(processor).__module__.startswith("transformers."):  # transformers' own need no code
                type(processor).register_for_auto_class("AutoProcessor")
            processor.save_pretrained(tmp)
        for path in extra_files:
            shutil.copy2(path, tmp / Path(path).name)
        if verification is not None:
            (tmp / "verification.json").write_text(json.dumps(verification, indent=2, sort_keys=True) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
        check_self_contained(tmp)

    return write_folder_atomically(Path(output_dir), fill, overwrite=overwrite)


# Run by `check_folder_loads` as `python -I -c LOAD_CHECK_SCRIPT FOLDER`: loads the folder as a Hub user would, with
# towerzoo blocked, and on failure prints one line, `STEP: ErrorType: message`, as its last line on stderr.
LOAD_CHECK_SCRIPT = """
import importlib.abc
import json
import os
import sys


class NoTowerzoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "towerzoo":
            raise ImportError("towerzoo is imported, but a Hub user does not have it")


sys.meta_path.insert(0, NoTowerzoo())
folder = sys.argv[1]
step = "AutoConfig"
try:
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    saved = set(getattr(config, "architectures", None) or [])
    for auto_class, reference in (getattr(config, "auto_map", None) or {}).items():
        if auto_class == "AutoConfig":
            continue
        step = f"{auto_class} ({reference})"
        class_name = reference.rsplit(".", 1)[-1]
        model, info = getattr(transformers, auto_class).from_pretrained(
            folder, trust_remote_code=True, output_loading_info=True
        )
        if type(model).__name__ != class_name:
            raise TypeError(f"loaded {type(model).__name__}, not {class_name}")
        # the saved class must match its weights exactly; other exposed classes must at least find all of theirs
        kinds = ("missing_keys", "unexpected_keys", "mismatched_keys") if class_name in saved else ("missing_keys",)
        problems = [
            f"{len(info[kind])} {kind} ({', '.join(map(str, list(info[kind])[:3]))})" for kind in kinds if info.get(kind)
        ]
        if problems:
            raise ValueError("the weights do not fit: " + "; ".join(problems))
        del model
    if any(os.path.isfile(os.path.join(folder, name)) for name in sys.argv[2:]):
        step = "AutoProcessor"
        transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
except Exception as error:
    print(f"{step}: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(1)
"""

# files whose presence means the folder carries a processor (or a tokenizer / image processor of its own)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def check_folder_loads(folder: Path, timeout: float = 1800) -> None:
    """Load the folder as a Hub user would — config, every model class in `config.json`'s `auto_map` through its
    Auto class, and the processor if there is one, with `trust_remote_code=True` — in a fresh isolated Python
    process, offline, where towerzoo cannot be imported. Raises `ConversionError` with the child's error line."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder.")
    if not (folder / "config.json").is_file():
        raise ConversionError(
            f"{folder} has no config.json, so it is not a model folder (write one with `towerzoo convert`)."
        )
    with tempfile.TemporaryDirectory(prefix="towerzoo-load-check-") as work:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(work) / "modules")}
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", LOAD_CHECK_SCRIPT, str(folder), *PROCESSOR_FILES],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ConversionError(f"loading {folder} in a fresh process took over {timeout:.0f} s.") from None
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"the process exited with status {done.returncode}"
        raise ConversionError(
            f"{folder} does not load with trust_remote_code in a fresh process without towerzoo: {reason}"
        )
