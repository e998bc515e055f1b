"""Resume: a job is skipped only when its metrics.json was written for the same config; a failing
job leaves error.json and never another config's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import compose_train  # noqa: E402

from mllmrec.sweep.failures import JobFailure, failure_from_exception  # noqa: E402
from mllmrec.sweep.resume import config_fingerprint, finished_summary  # noqa: E402
from mllmrec.train.job import job_context  # noqa: E402


def _cfg(tmp_path: Path, *overrides: str, out: str = "job"):
    return compose_train(["logger=none", *overrides], tmp_path / out)


def test_fingerprint_ignores_where_and_how_but_not_what(tmp_path):
    base = config_fingerprint(_cfg(tmp_path))
    assert config_fingerprint(_cfg(tmp_path)) == base
    assert config_fingerprint(_cfg(tmp_path, "paths.data_dir=/elsewhere")) == base
    assert config_fingerprint(_cfg(tmp_path, "callbacks.progress_bar=null", "tags=[x]")) == base
    assert config_fingerprint(_cfg(tmp_path, out="moved/job")) == base  # a renamed sweep folder
    for changed in ("graph.alpha=0.6", "graph.kc=5", "model.d=32", "seed=1", "trainer.max_epochs=3",
                    "callbacks.early_stopping.patience=5", "dataset.n_users=100"):
        assert config_fingerprint(_cfg(tmp_path, changed)) != base, changed


def test_finished_summary_requires_the_same_config(tmp_path):
    cfg = _cfg(tmp_path, "graph.alpha=0.6")
    out = Path(cfg.paths.output_dir)
    assert finished_summary(cfg) is None  # nothing there yet
    out.mkdir(parents=True)
    summary = {"valid": {"recall@20": 0.3}, "config_fingerprint": config_fingerprint(cfg)}
    (out / "metrics.json").write_text(json.dumps(summary))
    assert finished_summary(cfg) == summary
    assert finished_summary(_cfg(tmp_path, "graph.alpha=0.7")) is None  # same folder, other config
    cfg.skip_finished = False
    assert finished_summary(cfg) is None
    (out / "metrics.json").write_text("{broken")
    cfg.skip_finished = True
    assert finished_summary(cfg) is None


def test_a_failing_job_records_its_error_and_drops_stale_results(tmp_path):
    cfg = _cfg(tmp_path)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")  # left by another config of this folder
    with pytest.raises(ZeroDivisionError):
        with job_context(cfg):
            1 / 0
    assert not (out / "metrics.json").exists()
    record = json.loads((out / "error.json").read_text())
    assert record["error_type"] == "ZeroDivisionError" and "1 / 0" in record["traceback"]
    with job_context(cfg):  # a later success clears the error
        pass
    assert not (out / "error.json").exists()


def test_job_failures_survive_pickling_with_their_details():
    import pickle

    try:
        raise ValueError("bad value\nsecond line")
    except ValueError as err:
        failure = failure_from_exception(3, ["graph.kc=-1"], err)
    again = pickle.loads(pickle.dumps(failure))
    assert isinstance(again, JobFailure) and again.to_dict() == failure.to_dict()
    assert str(again) == "job 3 [graph.kc=-1]: ValueError: bad value"
    assert "Traceback" in again.details
    assert OmegaConf.create(failure.to_dict()).error_type == "ValueError"
