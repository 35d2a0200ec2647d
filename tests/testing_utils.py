"""Builders shared by the tests: tiny configs, a tiny RoBERTa-style tokenizer, random batches (all offline)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from towerzoo.models.bridgetower import BridgeTowerConfig
from towerzoo.models.managertower import ManagerTowerConfig
from towerzoo.tiny import build_tiny_tokenizer

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "build_tiny_tokenizer",
    "clip_transform_reference",
    "run_without_towerzoo",
    "padded_text_batch",
    "random_pixels",
    "tiny_bridgetower_config",
    "tiny_managertower_config",
    "transformers_config",
]


def tiny_bridgetower_config(config_class=BridgeTowerConfig, **overrides) -> BridgeTowerConfig:
    """A BridgeTower (or a `config_class` built on it) small enough for two CPU cores; widths are multiples of 64 so
    transformers' ViT (width/64 heads) can be built with the same shapes."""
    text = {
        "vocab_size": 297,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "max_position_embeddings": 40,
        **overrides.pop("text_config", {}),
    }
    vision = {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 1,
        "intermediate_size": 256,
        "image_size": 32,
        "patch_size": 8,
        **overrides.pop("vision_config", {}),
    }
    defaults = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "contrastive_hidden_size": 16,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    return config_class(text_config=text, vision_config=vision, **{**defaults, **overrides})


def tiny_managertower_config(**overrides) -> ManagerTowerConfig:
    """`tiny_bridgetower_config`'s sizes with managers over all 3 text layers and the top 2 ViT blocks (so the layer
    embeddings' indexing from the top is exercised)."""
    defaults = {"managed_layers_text": 3, "managed_layers_image": 2}
    return tiny_bridgetower_config(ManagerTowerConfig, **{**defaults, **overrides})


def transformers_config(**options) -> transformers.BridgeTowerConfig:
    """transformers' config for the same tiny sizes as `tiny_bridgetower_config`."""
    tiny = tiny_bridgetower_config()
    text_keys = (
        "vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size max_position_embeddings"
    )
    text = {key: getattr(tiny.text_config, key) for key in text_keys.split()}
    vision = {
        key: getattr(tiny.vision_config, key) for key in "hidden_size num_hidden_layers image_size patch_size".split()
    }
    return transformers.BridgeTowerConfig(
        text_config=text,
        vision_config={**vision, **options.pop("vision", {})},
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        contrastive_hidden_size=tiny.contrastive_hidden_size,
        logit_scale_init_value=2.6592,
        **options,
    )


def padded_text_batch(config: BridgeTowerConfig, batch_size: int = 3, length: int = 9, seed: int = 0):
    """input_ids/attention_mask with <s> first and right padding of different lengths in the batch."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    input_ids = torch.randint(5, text.vocab_size, (batch_size, length), generator=generator)
    input_ids[:, 0] = text.bos_token_id
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch_size):
        keep = max(2, length - 2 * row)
        attention_mask[row, keep:] = 0
        input_ids[row, keep:] = text.pad_token_id
    return input_ids, attention_mask


def random_pixels(config: BridgeTowerConfig, batch_size: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return torch.randn(batch_size, config.vision_config.num_channels, size, size, generator=generator)


_BLOCK_TOWERZOO = """
import importlib.abc, sys
class BlockTowerzoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "towerzoo" or name.startswith("towerzoo."):
            raise ImportError("towerzoo must not be needed to load a Hub folder")
sys.meta_path.insert(0, BlockTowerzoo())
"""


def run_without_towerzoo(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` as a Hub user would: a fresh isolated interpreter where towerzoo cannot be imported, offline,
    in another working directory, with its own remote-code module cache. Fails the test if the script fails."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _BLOCK_TOWERZOO + textwrap.dedent(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def clip_transform_reference(image: "Image.Image", size: int) -> np.ndarray:
    """OpenAI CLIP's preprocessing of one RGB image, written out by hand in float64: torchvision's
    Resize(size, BICUBIC) (shorter side to `size`, longer to int(size * long / short), PIL resampling),
    CenterCrop(size) with offsets int(round(margin / 2)) (Python's round: halves to even), ToTensor,
    Normalize(CLIP mean/std). Returns (3, size, size)."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
