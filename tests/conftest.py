"""Shared fixtures: configs composed like `python train.py` does, with tmp output dirs and a small
demo dataset built (and encoded) once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# never touch the network from tests
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PROJECT_ROOT"] = str(ROOT)

# a small demo keeps encoding cheap; the full-size default is exercised by test_default_demo
SMALL_DEMO = ["dataset.n_users=160", "dataset.n_items=90", "dataset.max_epochs=8"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data dir for the whole session: the demo is generated and encoded once, then cached."""
    return tmp_path_factory.mktemp("data")


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` like ``@hydra.main`` would, outside a Hydra run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_cfg(tmp_path, data_dir):
    """Factory: ``train_cfg(*overrides)`` -> a CPU, no-logger, small-demo train config."""

    def make(*overrides: str) -> DictConfig:
        base = [f"paths.data_dir={data_dir}", "logger=none", "trainer=cpu", *SMALL_DEMO,
                "callbacks.progress_bar=null", "compare_popularity=false"]
        return compose_config("train", base + list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
