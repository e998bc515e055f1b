"""Resume: a job is skipped only when its metrics.json was written for the same config; a failing
job leaves error.json and never another config's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllmrec.sweep.failures import JobFailure, failure_from_exception  # noqa: E402
from mllmrec.sweep.resume import finished_summary  # noqa: E402
from mllmrec.train.fingerprint import config_fingerprint  # noqa: E402
from mllmrec.train.job import job_context  # noqa: E402

from sweep_helpers import compose_train  # noqa: E402


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


def _write_outputs(root: Path, mllm: str, profiles: list[str]) -> Path:
    """Reasoning outputs as reason.py writes them (through the contract's writer)."""
    import numpy as np
    import pandas as pd

    from mllmrec.data import DatasetLayout
    from mllmrec.reasoning.outputs import outputs_dir, write_reasoning_outputs

    folder = outputs_dir(DatasetLayout(root), mllm, "train")
    folder.mkdir(parents=True, exist_ok=True)
    n_items = 3
    tables = {
        "image_descriptions.parquet": pd.DataFrame(
            {"item_id": np.arange(n_items), "image_description": ["red", "", "blue"],
             "status": ["ok", "no_image", "ok"]}),
        "item_descriptions.parquet": pd.DataFrame(
            {"item_id": np.arange(n_items), "text": ["a", "b", "c"], "image_description": ["red", "", "blue"],
             "description": ["a red", "b", "c blue"]}),
        "user_profiles.parquet": pd.DataFrame(
            {"user_id": np.arange(len(profiles)), "profile": profiles, "status": ["ok"] * len(profiles),
             "n_history": [2] * len(profiles), "n_used": [2] * len(profiles)}),
    }
    write_reasoning_outputs(folder, tables, {"created": str(len(profiles))})
    return folder


def test_a_finished_job_reruns_when_its_reasoning_outputs_change(tmp_path, monkeypatch):
    """The config is the same, but reason.py rewrote the profiles: the stale metrics must not be kept."""
    import os

    import mllmrec.reasoning.outputs as outputs

    cfg = _cfg(tmp_path, f"paths.data_dir={tmp_path / 'data'}", "mllm.name=fakellm", "graph.alpha=0.6")
    root = Path(cfg.dataset.root)
    folder = _write_outputs(root, "fakellm", ["likes red", "likes blue"])
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    summary = {"valid": {"recall@20": 0.3}, "config_fingerprint": config_fingerprint(cfg)}
    (out / "metrics.json").write_text(json.dumps(summary))
    assert finished_summary(cfg) == summary

    # the same tables written again (a rerun of reason.py from its cache): still the same job; and
    # the manifest's hashes are used, no table is read
    _write_outputs(root, "fakellm", ["likes red", "likes blue"])
    monkeypatch.setattr(outputs, "sha256_file", lambda path: pytest.fail(f"{path} was re-hashed"))
    assert finished_summary(cfg) == summary
    monkeypatch.undo()

    _write_outputs(root, "fakellm", ["likes red", "likes green"])  # new profiles, same config
    assert finished_summary(cfg) is None
    summary["config_fingerprint"] = config_fingerprint(cfg)
    (out / "metrics.json").write_text(json.dumps(summary))
    assert finished_summary(cfg) == summary

    # a table replaced behind the manifest's back (newer than it) is hashed itself
    import pandas as pd

    users = pd.read_parquet(folder / "user_profiles.parquet")
    users.loc[0, "profile"] = "edited by hand"
    users.to_parquet(folder / "user_profiles.parquet", index=False)
    later = (folder / "manifest.json").stat().st_mtime_ns + 10**9
    os.utime(folder / "user_profiles.parquet", ns=(later, later))
    assert finished_summary(cfg) is None

    # the history's other folder is another input: reason.history=all has no outputs here
    assert config_fingerprint(_cfg(tmp_path, f"paths.data_dir={tmp_path / 'data'}", "mllm.name=fakellm",
                                   "graph.alpha=0.6", "reason.history=all")) != summary["config_fingerprint"]


def test_a_finished_mmrec_job_reruns_when_a_feature_file_changes(tmp_path):
    import numpy as np

    root = tmp_path / "mm"
    root.mkdir()
    (root / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    np.save(root / "image_text_feat.npy", np.ones((2, 4), dtype=np.float32))
    np.save(root / "user_preferences_feat.npy", np.zeros((1, 4), dtype=np.float32))
    overrides = ["dataset=mmrec", f"dataset.root={root}", "dataset.name=toy"]
    base = config_fingerprint(_cfg(tmp_path, *overrides))
    np.save(root / "image_text_feat.npy", np.ones((2, 4), dtype=np.float32))  # same content, new mtime
    assert config_fingerprint(_cfg(tmp_path, *overrides)) == base
    np.save(root / "image_text_feat.npy", np.full((2, 4), 2, dtype=np.float32))
    changed = config_fingerprint(_cfg(tmp_path, *overrides))
    assert changed != base
    np.save(root / "user_preferences_feat.npy", np.ones((1, 4), dtype=np.float32))
    with_user = config_fingerprint(_cfg(tmp_path, *overrides))
    assert with_user not in (base, changed)
    np.save(root / "image_feat.npy", np.ones((2, 3), dtype=np.float32))  # an item modality (VBPR, FREEDOM, ...)
    assert config_fingerprint(_cfg(tmp_path, *overrides)) not in (base, changed, with_user)


def test_the_resume_check_fingerprints_reasoning_outputs_without_torch(tmp_path):
    """train.py skips a finished job before importing torch; the input fingerprints keep that true."""
    import subprocess

    folder = _write_outputs(tmp_path / "demo", "fakellm", ["likes red"])
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from mllmrec.train.fingerprint import config_fingerprint, input_fingerprints\n"
        f"cfg = OmegaConf.create({{'dataset': {{'root': {str(tmp_path / 'demo')!r}, 'format': 'processed'}},"
        " 'mllm': {'name': 'fakellm'}, 'reason': {'history': 'train'}})\n"
        "inputs = input_fingerprints(cfg)\n"
        "assert inputs['reasoning'] != 'absent', inputs\n"
        "config_fingerprint(cfg)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert folder.is_dir()
