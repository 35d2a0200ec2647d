"""Write a converted model as a self-contained Hub folder: code, config with `auto_map`, safetensors, processor,
`verification.json` and a card stub — atomically (temp folder, then rename)."""

import ast
import json
import sys
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin

from towerzoo.conversions.common import ConversionError, write_folder_atomically


def auto_map_for(model: PreTrainedModel, exposed: dict[str, str]) -> dict[str, str]:
    """`auto_map` entries: AutoConfig plus `{auto class: module.class}` for every class in `exposed`."""
    config_module = type(model.config).__module__.rsplit(".", 1)[-1]
    model_module = type(model).__module__.rsplit(".", 1)[-1]
    auto_map = {"AutoConfig": f"{config_module}.{type(model.config).__name__}"}
    for class_name, auto_class in exposed.items():
        auto_map.setdefault(auto_class, f"{model_module}.{class_name}")
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
) -> Path:
    """Save `model` (and `processor`) as a Hub folder loadable with `trust_remote_code=True`.

    `exposed` maps class names to the Auto classes that should load them from this folder (the saved class must be
    among them). The model code is copied by transformers from the class's module and its relative imports.
    """
    model_class = type(model).__name__
    if model_class not in exposed:
        raise ValueError(f"{model_class} must be listed in `exposed` with its Auto class.")

    def fill(tmp: Path) -> None:
        model.config.auto_map = auto_map_for(model, exposed)
        type(model).register_for_auto_class(exposed[model_class])
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if processor is not None:
            type(processor).register_for_auto_class("AutoProcessor")
            processor.save_pretrained(tmp)
        if verification is not None:
            (tmp / "verification.json").write_text(json.dumps(verification, indent=2, sort_keys=True) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
        check_self_contained(tmp)

    return write_folder_atomically(Path(output_dir), fill, overwrite=overwrite)
