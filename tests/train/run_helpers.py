"""A small trained demo run (in-process), saved like ``python train.py`` saves one: ``.hydra/config.yaml``,
``metrics.json`` and ``checkpoints/`` (imported by name by the evaluate / recommend tests)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from train_helpers import SMALL_DEMO, compose_config


def train_demo_run(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    """Train the small demo for a few epochs into ``run_dir``; returns the run's summary."""
    from mllmrec.train.task import train

    cfg = compose_config("train", [f"paths.data_dir={data_dir}", "logger=none", "trainer=cpu", *SMALL_DEMO,
                                   "dataset.max_epochs=3", "callbacks.progress_bar=null",
                                   "callbacks.graph_statistics=null", "compare_popularity=false",
                                   *overrides], run_dir)
    try:
        summary, _ = train(cfg)
        saved = cfg.copy()
        with open_dict(saved):
            del saved["hydra"]  # Hydra saves the job's config without its own node, unresolved
            saved.paths.output_dir = "${hydra:runtime.output_dir}"
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    finally:
        GlobalHydra.instance().clear()
    return summary
