"""Shared fixtures: configs composed like `python train.py` does, with tmp output dirs and a small
demo dataset built (and encoded) once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from train_helpers import ROOT, SMALL_DEMO, compose_config

# never touch the network from tests
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PROJECT_ROOT"] = str(ROOT)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data dir for the whole session: the demo is generated and encoded once, then cached."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train_cfg(tmp_path, data_dir):
    """Factory: ``train_cfg(*overrides)`` -> a CPU, no-logger, small-demo train config."""

    def make(*overrides: str) -> DictConfig:
        other_dataset = any(o.startswith("dataset=") for o in overrides)
        base = [f"paths.data_dir={data_dir}", "logger=none", "trainer=cpu",
                *([] if other_dataset else SMALL_DEMO),  # demo-only keys
                "callbacks.progress_bar=null", "compare_popularity=false"]
        return compose_config("train", base + list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
