"""The documented commands, as typed, in subprocesses: a sweep prints its folder at start and each job its
config tree; a sweep job folder (named graph.alpha=0.5,...) is accepted unquoted by
``train.py ckpt_path=``, ``evaluate.py run=`` and ``recommend.py run=``; evaluate's user errors are one
message and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from train_helpers import ROOT, SMALL_DEMO

pytestmark = pytest.mark.slow

JOB = [*SMALL_DEMO, "trainer.max_epochs=1", "compare_popularity=false", "callbacks.progress_bar=null",
       "callbacks.graph_statistics=null", "logger=none"]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(cwd), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("cli")
    sweep_dir = root / "multirun" / "grid"
    result = run("train.py", "-m", f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={data_dir}", *JOB,
                 "graph.alpha=0.5,0.6", cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    [job] = [p for p in sweep_dir.iterdir() if "graph.alpha=0.5" in p.name.split(",")]
    return root, sweep_dir, job, result


def test_multirun_prints_its_folder_first_and_each_job_its_config_tree(sweep):
    _, sweep_dir, job, result = sweep
    out = result.stdout + result.stderr
    line = f"sweep folder: {sweep_dir.resolve()}"
    assert out.count(line) == 1 and out.index(line) < out.index("Launching 2 jobs")
    assert result.stdout.count("CONFIG") == 2 and "── graph" in result.stdout
    assert "," in job.name and "=" in job.name  # the folder name Hydra's grammar cannot take unquoted


def test_resume_from_a_job_folder_checkpoint_as_typed(sweep, data_dir):
    root, _, job, _ = sweep
    last = f"{job}/checkpoints/last.ckpt"
    result = run("train.py", f"ckpt_path={last}", f"paths.data_dir={data_dir}", *JOB, "trainer.max_epochs=2",
                 "extras.print_config=false", f"hydra.run.dir={root / 'resumed'}", cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Restoring states from the checkpoint path at {last}" in result.stdout + result.stderr
    metrics = json.loads((root / "resumed" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]  # epoch 0 came from the checkpoint


def test_evaluate_a_job_folder_gives_its_metrics(sweep):
    root, _, job, _ = sweep
    result = run("evaluate.py", f"run={job}", cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    evaluation = json.loads((job / "evaluation.json").read_text())
    recorded = json.loads((job / "metrics.json").read_text())
    assert evaluation["valid"] == recorded["valid"] and evaluation["test"] == recorded["test"]
    assert "MLLMRec results" in result.stdout and "CONFIG" in result.stdout


def test_evaluate_under_other_settings_is_one_message_and_exit_2(sweep):
    root, _, job, _ = sweep
    result = run("evaluate.py", f"run={job}", "graph.kc=3", "extras.print_config=false", cwd=root)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert out.count("graph.kc: 10 (checkpoint) -> 3 (now)") == 1 and "Traceback" not in out


def test_recommend_a_job_folder_to_csv(sweep):
    root, _, job, _ = sweep
    result = run("recommend.py", f"run={job}", "k=5", f"output={root / 'top.csv'}", cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    frame = pd.read_csv(root / "top.csv")
    assert len(frame) == 160 * 5 and set(frame["rank"]) == {1, 2, 3, 4, 5}
    assert frame["item"].str.startswith("D").all() and frame["title"].notna().all()


@pytest.mark.parametrize("script, args, message", [
    ("evaluate.py", ["run=/nonexistent"], "run=/nonexistent: no such folder"),
    ("evaluate.py", [], "name what to load: run=<run folder>"),
    ("recommend.py", ["oops"], "unexpected argument 'oops'"),
    ("recommend.py", ["run=/nonexistent", "k=x"], "k=x / batch_size=1024: integers expected"),
])
def test_user_errors_of_evaluate_and_recommend_are_one_message_and_exit_2(tmp_path, script, args, message):
    result = run(script, *args, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert out.count(message) == 1 and "Traceback" not in out, out
