"""A sweep job killed with SIGKILL after a checkpoint, then rerun (issue 18, point 1): it continues
from its last.ckpt and ends exactly where an uninterrupted job of the same sweep ends."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sweep"))

from sweep_helpers import FAST_JOB, NO_PLOTS, ROOT, encoded_data_dir, run_train  # noqa: E402, F401

JOB = [*FAST_JOB, *NO_PLOTS, "trainer.max_epochs=3", "+callbacks.kill_switch._target_=kill_switch.KillAtEpoch",
       "graph.kc=5"]


def _sweep(root: Path, name: str, data_dir: Path, **env: str):
    sweep_dir = root / "multirun" / name
    args = ["-m", f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={data_dir}", *JOB]
    path = os.pathsep.join([str(ROOT / "src"), str(HERE), os.environ.get("PYTHONPATH", "")])
    return run_train(args, cwd=root, PYTHONPATH=path, **env), sweep_dir


@pytest.mark.slow
def test_a_sweep_job_killed_after_a_checkpoint_resumes_exactly(tmp_path, encoded_data_dir):
    whole, whole_dir = _sweep(tmp_path, "whole", encoded_data_dir)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed, sweep_dir = _sweep(tmp_path, "killed", encoded_data_dir, MLLMREC_TEST_KILL_AT_EPOCH="2")
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: nothing ran after it
    (job,) = [p.parent.parent for p in sweep_dir.rglob("last.ckpt")]
    assert not (job / "metrics.json").exists()

    rerun, _ = _sweep(tmp_path, "killed", encoded_data_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    output = rerun.stdout + rerun.stderr
    # it continued (Lightning's own message) instead of training epochs 0 and 1 again
    assert f"Restoring states from the checkpoint path at {job / 'checkpoints' / 'last.ckpt'}" in output

    (expected_path,) = whole_dir.rglob("metrics.json")
    expected, resumed = json.loads(expected_path.read_text()), json.loads((job / "metrics.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for key in ("history", "best_epoch", "valid", "test", "epochs_run", "config_fingerprint"):
        assert resumed[key] == expected[key], key
