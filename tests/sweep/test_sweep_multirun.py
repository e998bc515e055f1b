"""`python train.py -m ... hydra/launcher=gpus` on the CPU demo: parallel jobs, resume, crash isolation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import FAST_JOB, encoded_data_dir, launcher_records, max_concurrency, run_train  # noqa: E402, F401

GRID = ["graph.alpha=0.5,0.7", "graph.kc=5,10"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, encoded_data_dir):
    """The 4-job grid run once with 2 CPU workers; later tests rerun and extend it."""
    root = tmp_path_factory.mktemp("multirun")
    sweep_dir = root / "multirun" / "grid"
    args = ["-m", "hydra/launcher=gpus", "hydra.launcher.gpus=0", "hydra.launcher.cpu_workers=2",
            f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={encoded_data_dir}", *FAST_JOB, *GRID,
            "callbacks=tsne"]  # the opt-in t-SNE figure is checked below
    result = run_train(args, cwd=root)
    return root, sweep_dir, args, result


def _named(folder: Path, override: str) -> bool:
    """Whether a job folder (named by its overrides, comma-separated) holds ``override``."""
    return override in folder.name.split(",")


@pytest.mark.slow
def test_four_jobs_run_two_at_a_time_and_each_writes_metrics(sweep):
    _, sweep_dir, _, result = sweep
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = sorted(sweep_dir.rglob("metrics.json"))
    assert len(metrics) == 4
    configs = set()
    for path in metrics:
        summary = json.loads(path.read_text())
        assert set(summary["valid"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
        assert summary["config_fingerprint"]
        overrides = (path.parent / ".hydra" / "overrides.yaml").read_text()
        configs.add(tuple(line.split("=")[1] for line in overrides.splitlines()
                          if "graph.alpha" in line or "graph.kc" in line))
        # figures are written next to the results even without a logger
        for png in ("similarity_histogram.png", "degree_histogram.png", "user_tsne.png"):
            assert (path.parent / "plots" / png).stat().st_size > 0
    assert configs == {("0.5", "5"), ("0.5", "10"), ("0.7", "5"), ("0.7", "10")}
    # job folders are named by the swept values (what makes a rerun find them)
    assert all("graph.alpha=" in p.parent.name and "graph.kc=" in p.parent.name for p in metrics)
    records = launcher_records(sweep_dir)
    assert len(records) == 4 and {r["status"] for r in records} == {"COMPLETED"}
    assert max_concurrency([(r["start"], r["end"]) for r in records]) == 2


@pytest.mark.slow
def test_rerunning_the_same_sweep_skips_finished_jobs(sweep):
    root, sweep_dir, args, first = sweep
    assert first.returncode == 0, first.stderr[-4000:]
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("metrics.json")}
    result = run_train(args, cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("skipping:") == 4
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("metrics.json")} == before


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others_and_is_reported(sweep):
    """Extend the grid with K_c = -1 (rejected by the config check) and K_c = 15: the new valid job
    trains, the old ones are skipped, the invalid ones fail and are listed with their overrides."""
    root, sweep_dir, args, first = sweep
    assert first.returncode == 0, first.stderr[-4000:]
    extended = [a for a in args if not a.startswith("graph.")] + ["graph.alpha=0.5", "graph.kc=-1,15,5"]
    result = run_train(extended, cwd=root)
    output = result.stdout + result.stderr
    assert result.returncode != 0  # the sweep as a whole reports the failure
    assert "1 of 3 sweep job(s) failed" in output
    assert "graph.kc=-1]: ConfigError: graph.kc=-1: k_c must be an integer >= 0" in output
    failures = json.loads((sweep_dir / "failures.json").read_text())
    assert [f["error_type"] for f in failures] == ["ConfigError"]
    assert "graph.kc=-1" in failures[0]["overrides"]
    failed_dir = next(p for p in sweep_dir.iterdir() if _named(p, "graph.kc=-1"))
    assert json.loads((failed_dir / "error.json").read_text())["error_type"] == "ConfigError"
    assert not (failed_dir / "metrics.json").exists()
    # K_c = 15 ran to the end beside the failure; K_c = 5 was already done and skipped
    assert any(_named(p.parent, "graph.kc=15") for p in sweep_dir.rglob("metrics.json"))
    assert output.count("skipping:") == 1
