# Copyright 2026 The towerzoo authors. Licensed under the Apache License, Version 2.0.
"""ManagerTower processor: ManagerTower preprocesses exactly as BridgeTower does (the original CLIP transform and the
RoBERTa tokenizer), so this is BridgeTower's processor under ManagerTower's name."""

from .processing_bridgetower import BridgeTowerProcessor


class ManagerTowerProcessor(BridgeTowerProcessor):
    r"""Pairs the original image preprocessing (through a `CLIPImageProcessor`) with a RoBERTa tokenizer; see
    `BridgeTowerProcessor`."""


__all__ = ["ManagerTowerProcessor"]
