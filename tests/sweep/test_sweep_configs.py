"""The sweep configs compose (and their plugins accept them): hydra/launcher=slurm and =gpus,
hparams_search=optuna, and the job folder named by the job's overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import ROOT  # noqa: E402


@pytest.fixture
def compose_hydra():
    def make(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            return compose("train", overrides=list(overrides), return_hydra_config=True)

    yield make
    GlobalHydra.instance().clear()


def test_slurm_launcher_config_composes_and_is_accepted_by_submitit(compose_hydra):
    cfg = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweep.dir=/sweeps/grid",
                        "paths.root_dir=/repo")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.array_parallelism == 16 and launcher.timeout_min == 720 and launcher.mem_gb == 64
    assert launcher.submitit_folder == "/sweeps/grid/.submitit/%j"
    # the node loads the repository's .env (WANDB_*, MLLMREC_DATA_DIR) before the job starts
    assert "if [ -f /repo/.env ]; then set -a; . /repo/.env; set +a; fi" in launcher.setup
    plugin = hydra.utils.instantiate(launcher)  # the plugin takes every key (no SLURM needed for that)
    assert type(plugin).__name__ == "SlurmLauncher"
    assert plugin.params["partition"] == "gpu"


def test_gpus_launcher_config_composes(compose_hydra):
    cfg = compose_hydra("hydra/launcher=gpus", "hydra.launcher.gpus=0", "hydra.launcher.cpu_workers=3",
                        "hydra.sweep.dir=/sweeps/grid")
    assert cfg.hydra.launcher.lock_dir == "/sweeps/grid/.launcher/leases"
    plugin = hydra.utils.instantiate(cfg.hydra.launcher)
    assert type(plugin).__name__ == "GpuLauncher"
    assert plugin.devices() == [] and plugin.n_slots() == 3


def test_optuna_search_config_composes(compose_hydra):
    cfg = compose_hydra("hparams_search=optuna", "paths.root_dir=/repo")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweep.dir == "/repo/multirun/optuna_demo"  # fixed, so a rerun finds the study
    assert sweeper.storage == "sqlite:////repo/multirun/optuna_demo/optuna.db"
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/recall@20"
    assert sweeper.sampler.seed == 999 and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert dict(sweeper.params) == {
        "graph.alpha": "interval(0.4, 0.7)", "graph.kc": "choice(5, 10, 15, 20)",
        "model.d": "choice(16, 32, 64, 128, 256)", "model.optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}


def test_job_folder_is_named_by_the_swept_values(compose_hydra):
    cfg = compose_hydra("graph.alpha=0.5", "graph.kc=10", "paths.data_dir=/data", "logger=none",
                        "callbacks.progress_bar=null")
    # where data lives and how runs are logged are not part of the name
    assert cfg.hydra.sweep.subdir == "graph.alpha=0.5,graph.kc=10"
