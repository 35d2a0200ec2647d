# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""transformers `CLIPModel` weight names → the names of towerzoo's CLIP towers (one source, symlinked into each Hub
folder that starts from CLIP). The towers use CLIP's own block layout, so the table only renames."""

import re

_LAYER = r"(\d+)\.(layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2|self_attn\.[qkv]_proj)\."
# CLIP key → towerzoo key, `{vision}` standing for the architecture's vision tower prefix (first matching rule wins).
CLIP_KEY_RULES: list[tuple[str, str]] = [
    (r"^text_model\.embeddings\.(token|position)_embedding\.weight$", r"text_model.embeddings.\1_embedding.weight"),
    (rf"^text_model\.encoder\.layers\.{_LAYER}", r"text_model.layers.\1.\2."),
    (r"^text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"text_model.layers.\1.self_attn.o_proj."),
    (r"^text_model\.final_layer_norm\.", "text_model.final_layer_norm."),
    (
        r"^vision_model\.embeddings\.(class_embedding|patch_embedding\.weight|position_embedding\.weight)$",
        r"{vision}.embeddings.\1",
    ),
    (r"^vision_model\.pre_layrnorm\.", "{vision}.pre_layernorm."),
    (rf"^vision_model\.encoder\.layers\.{_LAYER}", r"{vision}.layers.\1.\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"{vision}.layers.\1.self_attn.o_proj."),
    (r"^vision_model\.post_layernorm\.", "{vision}.post_layernorm."),
    (r"^(visual_projection|text_projection)\.weight$", r"\1.weight"),
    (r"^logit_scale$", "logit_scale"),
]
CLIP_DROPPED: list[tuple[str, str]] = [
    (r"^(text|vision)_model\.embeddings\.position_ids$", "index buffer (0, 1, 2, …), rebuilt by the model"),
]


def rename_clip_weights(state_dict: dict, vision_prefix: str) -> tuple[dict, dict[str, str], list[str]]:
    """Rename a `CLIPModel` state dict; returns (renamed, {dropped key: reason}, unknown keys)."""
    rules = [(pattern, replacement.replace("{vision}", vision_prefix)) for pattern, replacement in CLIP_KEY_RULES]
    renamed, dropped, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        reason = next((why for pattern, why in CLIP_DROPPED if re.search(pattern, key)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        for pattern, replacement in rules:
            if re.search(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    return renamed, dropped, unknown
