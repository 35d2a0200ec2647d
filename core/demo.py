"""`towerzoo demo`: the zoo's round trip on this machine, offline.

1. Builds a small BridgeTower in transformers' own layout (a stand-in for a `BridgeTower/...` Hub download) and a
   small RoBERTa-style tokenizer.
2. Converts it with `towerzoo convert bridgetower-transformers` into a verified Hub folder.
3. Loads that folder the way a Hub user does — `AutoModel…from_pretrained(folder, trust_remote_code=True)` in a
   separate Python process that cannot import towerzoo — and scores an image against two captions with ITM.
The weights are random, so the scores carry no meaning; what the demo shows is the path a checkpoint takes.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

USER_SCRIPT = """
import importlib.abc, sys
class NoTowerzoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "towerzoo":
            raise ImportError("a Hub user does not have towerzoo")
sys.meta_path.insert(0, NoTowerzoo())
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForSequenceClassification, AutoProcessor
folder = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.new("RGB", (96, 64), "skyblue")
ImageDraw.Draw(image).ellipse((30, 20, 60, 50), fill="orange")
captions = ["a cat sits on the mat", "two dogs play in the park"]
inputs = processor(images=[image] * len(captions), text=captions)
with torch.no_grad():
    scores = model(**inputs).logits.softmax(-1)[:, 1]
print(f"loaded {type(model).__name__} from {type(model).__module__} with {model.config._attn_implementation}")
for caption, score in zip(captions, scores):
    print(f"  ITM p(match) = {score:.3f}  {caption!r}")
"""


def _source_checkpoint(folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BridgeTowerConfig(
        text_config={
            "vocab_size": 297,
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "max_position_embeddings": 64,
        },
        vision_config={"hidden_size": 128, "num_hidden_layers": 4, "image_size": 64, "patch_size": 16},
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    transformers.BridgeTowerForImageAndTextRetrieval(config).save_pretrained(folder)


def run_demo(work_dir: Path) -> int:
    from towerzoo.conversions.bridgetower_transformers import run as convert
    from towerzoo.tiny import build_tiny_tokenizer

    print("1. building a small BridgeTower in transformers' layout and a small tokenizer")
    _source_checkpoint(work_dir / "source")
    tokenizer = build_tiny_tokenizer(work_dir / "tokenizer")
    print("2. towerzoo convert bridgetower-transformers")
    folder = convert(work_dir / "source", work_dir / "hub-folder", tokenizer=Path(tokenizer), overwrite=True)
    verification = json.loads((folder / "verification.json").read_text())
    print(f"   wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    print(
        f"   max |towerzoo - transformers| = {verification['max_abs_diff']:.2e} over {len(verification['max_abs_diff_per_output'])} outputs"
    )
    print("3. loading it as a Hub user would, in a fresh process without towerzoo")
    result = subprocess.run([sys.executable, "-I", "-c", USER_SCRIPT, str(folder)], capture_output=True, text=True)
    print(result.stdout.rstrip())
    if result.returncode:
        print(result.stderr[-2000:], file=sys.stderr)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="towerzoo demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, help="keep the work here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        return run_demo(args.output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return run_demo(Path(tmp))
