"""A tiny random transformers `CLIPModel` folder with a tiny CLIP tokenizer: the source RESTORE (and VidLA) tests
build their models from."""

from pathlib import Path

import torch
import transformers

from towerzoo.tiny import build_tiny_clip_tokenizer


def tiny_clip_folder(root: Path, layers: int = 3, image_size: int = 32, seed: int = 0) -> Path:
    """`root/clip`: a seeded random `CLIPModel` (text width 32, vision width 48, `layers` blocks each, 8-px patches)
    saved with its tokenizer, as a Hub CLIP folder holds both."""
    folder = Path(root) / "clip"
    tokenizer_dir = build_tiny_clip_tokenizer(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "hidden_size": 48,
        "intermediate_size": 37,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    return folder
