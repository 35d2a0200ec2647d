"""Pytest wiring: shared fixtures, and `model_class` parametrisation for the common model tester."""

import pytest
import torch
from common_model_tester import parametrize_model_classes
from testing_utils import build_tiny_tokenizer, padded_text_batch, random_pixels, tiny_bridgetower_config

__all__ = ["padded_text_batch", "random_pixels", "tiny_bridgetower_config"]


def pytest_generate_tests(metafunc):
    parametrize_model_classes(metafunc)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip cleanly where there is no CUDA device (they run with `pytest -m gpu`)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
