"""The ManagerTower key map: what ManagerTower adds to BridgeTower's table (`bridgetower_keys`).

ManagerTower keeps BridgeTower's towers, cross-modal layers, poolers and heads under the same original names, so
BridgeTower's rules rename those; this table adds the managers, the layer embeddings and the ITC heads' own names,
and the two kinds of tensors the original forward pass never reads. Base-model keys go under `managertower.`.
"""

from towerzoo.conversions.bridgetower_keys import KeyTable

_MANAGER_LAYER = r"^cross_modal_(text|image)_manager_tower\.(\d+)\.manager_layer\."

# Sub-keys of an original heads.SAUE / heads.AAUE → towerzoo's Manager (models/_shared/manager.py).
_MANAGER = [
    (r"layer_scores$", "scores"),  # SAUE: the learned scores of the managed layers (+ the previous output)
    (r"layer_scores_cross$", "previous_score"),  # AAUE: the previous output's score
    (r"softmax_temperature$", "temperature"),
    (r"linear_controller\.", "controller."),
    (r"fusion_attention\.q_proj\.", "query_proj."),
    (r"fusion_attention\.k_proj\.", "key_proj."),
    (r"LayerNorm\.(\d+)\.", r"expert_layer_norms.\3."),  # one per managed layer, then one for the previous output
    (r"extra_query_LayerNorm\.", "other_layer_norm."),
]

MANAGERTOWER_KEYS = KeyTable(
    model="ManagerTower",
    base_prefix="managertower.",
    rules=(
        *[(_MANAGER_LAYER + sub, rf"cross_modal_\1_managers.\2.{new}") for sub, new in _MANAGER],
        (r"^layer_embeddings_(text|image)\.weight$", r"layer_embeddings_\1.weight"),
        (r"^cross_modal_itc_(text|image)_head\.fc\.(weight|bias)$", r"itc_\1_head.\2"),
    ),
    dropped=(
        (
            _MANAGER_LAYER + r"softmax_temperature_cross$",
            "never read by the original forward (SAUE/AAUE.aggregate_reps divide by softmax_temperature only)",
        ),
        (
            # the key as BridgeTower's first renaming step leaves it (vit_model.visual. → vision_model.visual.)
            r"^vision_model\.visual\.ln_separate\.",
            "the ViT's per-block norms (vit_layernorm_shared=False) are never read by ManagerTower: infer, "
            "infer_image and get_uni_modal_features all normalise with ln_post (VisualTransformer.forward_post)",
        ),
    ),
)
