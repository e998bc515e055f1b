"""The real Hydra configs: each dataset's source block resolves to the right files, URLs and counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mllmrec.data import load_processed_dataset
from mllmrec.prepare.cli import run_prepare
from mllmrec.prepare.pipeline import AmazonSource, PrepareOptions

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="prepare", overrides=list(overrides), return_hydra_config=False)


@pytest.mark.parametrize(("dataset", "category", "counts"), [
    ("baby", "Baby", (19445, 7050, 160792)),
    ("sports", "Sports_and_Outdoors", (35598, 18357, 296337)),
    ("clothing", "Clothing_Shoes_and_Jewelry", (39387, 23033, 278677)),
])
def test_2014_dataset_sources(dataset: str, category: str, counts: tuple[int, int, int], tmp_path: Path) -> None:
    cfg = _compose(f"dataset={dataset}", f"paths.data_dir={tmp_path}")
    opts = PrepareOptions.from_config({k: cfg.prepare[k] for k in cfg.prepare if k not in ("output_root", "meta_file")})
    source = AmazonSource.from_config(OmegaConf.to_container(cfg.dataset.source, resolve=True), opts)
    base = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
    assert source.interactions_url == f"{base}ratings_{category}.csv"
    assert source.meta_url == f"{base}meta_{category}.json.gz"
    assert len(source.sha256[f"ratings_{category}.csv"]) == 64
    assert (source.expected["users"], source.expected["items"], source.expected["interactions"]) == counts
    assert source.image_variant == "listed"
    assert cfg.dataset.root == f"{tmp_path}/{dataset}"


def test_2018_dataset_is_parameterised_by_category(tmp_path: Path) -> None:
    cfg = _compose("dataset=amazon2018", "dataset.source.category=Sports_and_Outdoors", f"paths.data_dir={tmp_path}")
    assert cfg.dataset.name == "amazon2018_Sports_and_Outdoors"
    source = AmazonSource.from_config(OmegaConf.to_container(cfg.dataset.source, resolve=True), PrepareOptions())
    assert source.interactions_url.endswith("/categoryFilesSmall/Sports_and_Outdoors_5.json.gz")
    assert source.meta_url.endswith("/metaFiles2/meta_Sports_and_Outdoors.json.gz")
    assert source.image_variant == "large" and source.expected is None


def test_demo_dataset_is_generated(tmp_path: Path) -> None:
    cfg = _compose("dataset=demo", f"paths.data_dir={tmp_path}", "dataset.n_users=40", "dataset.n_items=30")
    outcome = run_prepare(cfg)
    assert load_processed_dataset(outcome.layout.root).n_users == 40
