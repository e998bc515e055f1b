"""Reasoning across machines through Hydra's submitit launcher: shards as separate jobs, one merge.

``submitit_local`` runs each job as its own process exactly as ``hydra/launcher=slurm`` runs it as
a SLURM job (same pickled job, same submitit runner), so what is checked here -- separate
processes, waiting for each other, exactly one merge -- is what a cluster run does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from reasoning_helpers import CONF, REPO

SMALL = ["mllm=qwen25vl", "reason.backend=fake", "dataset.n_users=160", "dataset.n_items=90"]


@pytest.mark.slow
def test_submitit_local_runs_the_shards_as_jobs_and_merges_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "reason.py"), "-m", "hydra/launcher=submitit_local",
           "reason.shard=0,1", "reason.num_shards=2", *SMALL, f"paths.data_dir={tmp_path / 'data'}",
           f"hydra.sweep.dir={sweep}", "reason.progress=false", "reason.poll_s=0.2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    # two jobs, each run by submitit in its own process
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    assert len(jobs) == 2 and all((j / f"{j.name}_0_result.pkl").is_file() for j in jobs)
    out = tmp_path / "data" / "demo" / "reasoning" / "qwen25vl-fake"
    writers = {p.name.split("-")[1] for p in (out / "generations" / "shards").glob("*.parquet")}
    assert len(writers) == 2, f"generations written by processes {writers}: the shards did not run apart"

    # both shards waited for the complete set (null shard_wait_s in a multirun); one wrote the tables
    # job folders are named by their overrides (conf/reason.yaml's hydra.sweep.subdir)
    logs = [next(sweep.glob(f"*reason.shard={i}*/reason.log")).read_text() for i in (0, 1)]
    merged = [i for i, log in enumerate(logs) if "tables and manifest written to" in log]
    skipped = [i for i, log in enumerate(logs) if "not merging again" in log]
    assert len(merged) == 1 and len(skipped) == 1 and merged != skipped, logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["merge"]["shard"] == merged[0] and manifest["merge"]["num_shards"] == 2
    images = pd.read_parquet(out / "image_descriptions.parquet")
    users = pd.read_parquet(out / "user_profiles.parquet")
    assert images["item_id"].tolist() == list(range(90)) and set(images["status"]) == {"ok"}
    assert users["user_id"].tolist() == list(range(160)) and set(users["status"]) == {"ok"}


def test_the_slurm_launcher_composes_for_reasoning_shards() -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="reason", return_hydra_config=True,
                          overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                     "reason.num_shards=4", "reason.shard=3"])
    finally:
        GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # one task and one GPU per shard job: a shard is one vLLM engine
    assert launcher["tasks_per_node"] == 1 and launcher["gpus_per_node"] == 1 and launcher["partition"] == "gpu"
    assert cfg.reason.shard_wait_s is None  # resolved to the multirun wait in each job
