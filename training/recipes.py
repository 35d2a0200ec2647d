"""The original fine-tuning recipes, as data, and the optimizer parameter groups they train with.

Every value comes from the run scripts of the original repositories (cited per recipe), read together with their
`src/config.py` (`task_finetune_*` named configs: `max_text_len`, and `decay_power=1`, `end_lr=0`, `optim_type="adamw"`
for all) and `src/modules/meter_utils.py` (`set_schedule`: AdamW with betas (0.9, 0.98) and eps 1e-8, six parameter
groups, linear warm-up then linear decay to 0). `total_batch_size` is the script's `batch_size`, reached by gradient
accumulation over `per_gpu_batchsize` (kept as `per_device_train_batch_size`) × GPUs, with the accumulation steps
rounded down as the original's `run.py` rounds them.

Not reproduced: the training-time image augmentation of the scripts (RandAugment variants, `*_randaug_*`) — towerzoo
trains on the evaluation preprocessing — and, for ManagerTower retrieval, drawing hard negatives from the batch
gathered over all GPUs (`gather_global_negative=True`): towerzoo draws them from each process's batch, as BridgeTower's
script does.
"""

import re
from dataclasses import asdict, dataclass, field

from towerzoo.training import TrainingError

TASKS = ("vqav2", "retrieval", "snli-ve", "nlvr2")


@dataclass(frozen=True)
class Recipe:
    """One original fine-tuning run's hyper-parameters (the defaults of `towerzoo finetune`)."""

    name: str
    task: str
    architecture: str
    source: str
    learning_rate: float
    lr_mult_head: float
    lr_mult_cross_modal: float
    weight_decay: float
    warmup_ratio: float
    num_train_epochs: float
    total_batch_size: int
    per_device_train_batch_size: int
    image_size: int
    max_text_length: int
    task_head_layers: int
    head_hidden_scale: float
    dataset: str | None = None  # retrieval: the Karpathy split's `dataset` the run used
    lr_scheduler_type: str = "linear"  # decay_power=1, end_lr=0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-8
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return asdict(self)


_BT = "microsoft/BridgeTower scripts/ftfpt_base_{}.sh"
_MT = "LooperXX/ManagerTower scripts/ftfpt-base-{}.sh"

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="bridgetower-vqav2",
            task="vqav2",
            architecture="BridgeTower",
            source=_BT.format("vqa"),
            learning_rate=1e-5,
            lr_mult_head=50,
            lr_mult_cross_modal=5,
            weight_decay=0.05,
            warmup_ratio=0.06,
            num_train_epochs=10,
            total_batch_size=512,
            per_device_train_batch_size=16,
            image_size=576,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=2,
            notes=("trained on VQAv2 train + val minus 1000 val questions for the test-dev submission",),
        ),
        Recipe(
            name="bridgetower-snli-ve",
            task="snli-ve",
            architecture="BridgeTower",
            source=_BT.format("snlive"),
            learning_rate=3e-6,
            lr_mult_head=10,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.06,
            num_train_epochs=5,
            total_batch_size=64,
            per_device_train_batch_size=8,
            image_size=384,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=2,
        ),
        Recipe(
            name="bridgetower-nlvr2",
            task="nlvr2",
            architecture="BridgeTower",
            source=_BT.format("nlvr2"),
            learning_rate=5e-6,
            lr_mult_head=10,
            lr_mult_cross_modal=5,
            weight_decay=0.008,
            warmup_ratio=0.1,
            num_train_epochs=10,
            total_batch_size=64,
            per_device_train_batch_size=8,
            image_size=384,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=1.5,
            notes=(
                "the script passes these values to the named config task_finetune_snli_clip_bert (sic); they are "
                "taken as the NLVR2 recipe the script is named for",
                "the original classifier has a dropout of 0.1 (nlvr2_drop_rate) that towerzoo's NLVR2 head lacks",
            ),
        ),
        Recipe(
            name="bridgetower-retrieval-flickr30k",
            task="retrieval",
            architecture="BridgeTower",
            source=_BT.format("irtr_itm_itc_flickr"),
            dataset="flickr30k",
            learning_rate=5e-6,
            lr_mult_head=5,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.05,
            num_train_epochs=20,
            total_batch_size=512,
            per_device_train_batch_size=8,
            image_size=384,
            max_text_length=40,
            task_head_layers=2,
            head_hidden_scale=2,
            notes=("evaluated with ITM re-ranking of the top 128 (towerzoo eval retrieval --k 128)",),
        ),
        Recipe(
            name="bridgetower-retrieval-coco",
            task="retrieval",
            architecture="BridgeTower",
            source=_BT.format("irtr_itm_itc_coco"),
            dataset="coco",
            learning_rate=4.5e-6,
            lr_mult_head=5,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.1,
            num_train_epochs=30,
            total_batch_size=256,
            per_device_train_batch_size=16,
            image_size=384,
            max_text_length=40,
            task_head_layers=2,
            head_hidden_scale=2,
            notes=("evaluated with ITM re-ranking of the top 256 (towerzoo eval retrieval --k 256)",),
        ),
        Recipe(
            name="managertower-vqav2",
            task="vqav2",
            architecture="ManagerTower",
            source=_MT.format("vqa"),
            learning_rate=9e-6,
            lr_mult_head=50,
            lr_mult_cross_modal=5,
            weight_decay=0.06,
            warmup_ratio=0.1,
            num_train_epochs=10,
            total_batch_size=504,
            per_device_train_batch_size=4,
            image_size=576,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=2,
        ),
        Recipe(
            name="managertower-snli-ve",
            task="snli-ve",
            architecture="ManagerTower",
            source=_MT.format("snlive"),
            learning_rate=3e-6,
            lr_mult_head=10,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.06,
            num_train_epochs=4,
            total_batch_size=64,
            per_device_train_batch_size=8,
            image_size=384,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=2,
        ),
        Recipe(
            name="managertower-nlvr2",
            task="nlvr2",
            architecture="ManagerTower",
            source=_MT.format("nlvr2"),
            learning_rate=1.4e-5,
            lr_mult_head=10,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.1,
            num_train_epochs=5,
            total_batch_size=256,
            per_device_train_batch_size=4,
            image_size=384,
            max_text_length=50,
            task_head_layers=2,
            head_hidden_scale=1,
        ),
        Recipe(
            name="managertower-retrieval-flickr30k",
            task="retrieval",
            architecture="ManagerTower",
            source=_MT.format("flickr"),
            dataset="flickr30k",
            learning_rate=6e-6,
            lr_mult_head=5,
            lr_mult_cross_modal=5,
            weight_decay=0.01,
            warmup_ratio=0.1,
            num_train_epochs=20,
            total_batch_size=512,
            per_device_train_batch_size=8,
            image_size=384,
            max_text_length=40,
            task_head_layers=2,
            head_hidden_scale=1,
            notes=("the original draws hard negatives from the batch gathered over all GPUs",),
        ),
    )
}


def default_recipe(task: str, architecture: str, dataset: str | None = None) -> Recipe:
    """The recipe for `task` on `architecture`; for retrieval, the one run on `dataset` when there is one, else the
    architecture's first retrieval recipe (ManagerTower has only Flickr30K's)."""
    candidates = [r for r in RECIPES.values() if r.task == task and r.architecture == architecture]
    if not candidates:
        known = sorted({r.architecture for r in RECIPES.values()})
        raise TrainingError(
            f"no original {task} recipe for {architecture} (recipes exist for {', '.join(known)}); pass --recipe "
            "NAME to borrow one."
        )
    return next((r for r in candidates if dataset is not None and r.dataset == dataset), candidates[0])


def get_recipe(name: str, task: str) -> Recipe:
    if name not in RECIPES:
        raise TrainingError(f"unknown recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}.")
    recipe = RECIPES[name]
    if recipe.task != task:
        raise TrainingError(f"recipe {name} is for {recipe.task}, not {task}.")
    return recipe


# --- Parameter groups ------------------------------------------------------------------------------------------------
# `set_schedule` puts each parameter in one of three learning-rate groups by substrings of its name — a task head
# (`lr × lr_mult_head`), the cross-modal part (any name holding "cross_modal": `lr × lr_mult_cross_modal`), the rest
# (`lr`) — and exempts names holding "bias", "LayerNorm.weight" or "norm.weight" (and a few others) from weight decay.
# Here the same decisions are made on towerzoo's names (conversions/bridgetower_keys.py and managertower_keys.py give
# the correspondence), including where the original's substring test gives an unexpected answer.


@dataclass(frozen=True)
class GroupRules:
    """Which towerzoo parameter names belong to the head group and the cross-modal group of one architecture."""

    head: str  # regex searched in the name
    cross_modal: str


GROUP_RULES = {
    # `head_names` of BridgeTower's set_schedule: the task heads and the ITC heads; `itc_cross_modal_head` (only in
    # transformers' port) is a head too
    "BridgeTower": GroupRules(
        head=r"(^|\.)(vqa_classifier|nlvr2_classifier|snli_classifier|mlm_score|itm_score|itc_(text|image|cross_modal)_head)\.",
        cross_modal=r"cross_modal",
    ),
    # ManagerTower's set_schedule leaves the ITC heads out of `head_names`; they are named `cross_modal_itc_*_head`
    # in the original, so they train with the cross-modal learning rate; the managers (`cross_modal_*_manager_tower`)
    # too
    "ManagerTower": GroupRules(
        head=r"(^|\.)(vqa_classifier|nlvr2_classifier|snli_classifier|mlm_score|itm_score)\.",
        cross_modal=r"cross_modal|(^|\.)itc_(text|image)_head\.",
    ),
}

# Weight decay is skipped for every bias, and for the LayerNorm weights whose ORIGINAL names contain "LayerNorm.weight"
# or "norm.weight": the RoBERTa text tower, the cross-modal layers, the LayerNorms before the first cross-modal layer,
# the bridges, the MLM head and the managers' query LayerNorm (`extra_query_LayerNorm`). Decayed as in the original,
# because their original names do not contain those substrings: CLIP's `ln_pre`/`ln_1`/`ln_2`/`ln_post`/`ln_separate`,
# the classifiers' LayerNorm (`vqa_classifier.1`), the managers' per-layer LayerNorms (`LayerNorm.0` …), the managers'
# scores and temperatures. Departure: `logit_scale` (towerzoo's log(1/temperature)) is not decayed — decay would pull
# it towards temperature 1, where the original's decay on `temperature` pulled towards 0.
NO_DECAY = re.compile(
    r"(^|\.)bias$"
    r"|(^|\.)logit_scale$"
    r"|(^|\.)text_model\..*layer_norm\.weight$"
    r"|(^|\.)cross_modal_(text|image)_layers\.\d+\..*layer_norm\.weight$"
    r"|(^|\.)cross_modal_(text|image)_layernorm\.weight$"
    r"|(^|\.)cross_modal_(text|image)_link_tower\.(\d+\.)?layer_norm\.weight$"
    r"|(^|\.)mlm_score\.layer_norm\.weight$"
    r"|(^|\.)cross_modal_(text|image)_managers\.\d+\.other_layer_norm\.weight$"
)
GROUPS = ("backbone", "cross_modal", "head")


def parameter_group(name: str, architecture: str) -> tuple[str, bool]:
    """(learning-rate group, weight decay?) of a parameter by its name, as the original's `set_schedule` decides."""
    if architecture not in GROUP_RULES:
        raise TrainingError(f"no parameter-group rules for {architecture}; known: {', '.join(GROUP_RULES)}.")
    rules = GROUP_RULES[architecture]
    if re.search(rules.head, name):
        group = "head"
    elif re.search(rules.cross_modal, name):
        group = "cross_modal"
    else:
        group = "backbone"
    return group, NO_DECAY.search(name) is None


def optimizer_groups(
    named_parameters, architecture: str, learning_rate: float, weight_decay: float, multipliers: dict[str, float]
) -> list[dict]:
    """The six AdamW groups of `set_schedule` (three learning rates × decay or not), each with a `name`; trainable
    parameters only, empty groups left out. `multipliers` scales `learning_rate` per group ("head", "cross_modal")."""
    groups: dict[tuple[str, bool], list] = {}
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            groups.setdefault(parameter_group(name, architecture), []).append(parameter)
    return [
        {
            "name": f"{group}{'' if decay else '_no_decay'}",
            "params": groups[(group, decay)],
            "lr": learning_rate * multipliers.get(group, 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for group in GROUPS
        for decay in (True, False)
        if (group, decay) in groups
    ]
