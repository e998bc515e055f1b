"""Exact resume (issue 18, point 1): N uninterrupted epochs == k epochs, then a resume to N, bit for bit
on CPU (history, best epoch, valid/test metrics, weights, optimiser, callback and random states)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from mllmrec.train.checkpointing import RandomStateCheckpoint
from mllmrec.train.task import train

from train_helpers import SMALL_DEMO, compose_config

QUIET = ["logger=none", "trainer=cpu", "callbacks.progress_bar=null", "callbacks.user_tsne=null",
         "callbacks.graph_statistics=null", "compare_popularity=false", *SMALL_DEMO]


def _run(data_dir: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_config("train", [f"paths.data_dir={data_dir}", *QUIET, *overrides], out)
    try:
        summary, _ = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return summary


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_tensors(a, b, what: str) -> None:
    """Nested dicts/lists of tensors and numbers: equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


@pytest.mark.parametrize("model", ["mllmrec", "bpr"])
def test_resume_equals_an_uninterrupted_run_bit_for_bit(data_dir, tmp_path, model):
    whole = _run(data_dir, tmp_path / "whole", f"model={model}", "trainer.max_epochs=3")
    _run(data_dir, tmp_path / "part", f"model={model}", "trainer.max_epochs=2")
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    # in the same folder, as a requeued job does (its checkpoint callbacks then keep their best scores)
    resumed = _run(data_dir, tmp_path / "part", f"model={model}", "trainer.max_epochs=3",
                   f"ckpt_path={last}")

    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    # exact equality, not approx: the same batches, negatives and optimiser steps in the same order
    assert resumed["history"] == whole["history"]
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["valid"] == whole["valid"]
    assert resumed["test"] == whole["test"]

    a, b = _load(tmp_path / "whole" / "checkpoints" / "last.ckpt"), _load(tmp_path / "part" / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    _assert_same_tensors(a["state_dict"], b["state_dict"], "weights")
    _assert_same_tensors(a["optimizer_states"], b["optimizer_states"], "optimiser (Adam moments, step)")
    assert any(name.startswith("RandomStateCheckpoint") for name in a["callbacks"])
    # early stopping's wait/best, checkpoints' best score, the Python/NumPy/torch random states
    for name, state in a["callbacks"].items():
        if name.startswith(("EarlyStopping", "ModelCheckpoint", "RandomStateCheckpoint")):
            # paths differ by folder; current_score is the score of the last save, not carried over
            kept = {k: v for k, v in state.items() if k not in ("dirpath", "best_model_path", "last_model_path",
                                                                  "kth_best_model_path", "best_k_models",
                                                                  "current_score")}
            _assert_same_tensors(kept, {k: b["callbacks"][name][k] for k in kept}, name)


def test_random_states_survive_a_checkpoint_round_trip(tmp_path):
    callback = RandomStateCheckpoint()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "state.pt"
    torch.save({"rng": callback.state_dict()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(10), np.random.seed(20), torch.manual_seed(30)  # a fresh process's states
    callback.load_state_dict(torch.load(path, weights_only=True)["rng"])  # as checkpoints load
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_auto_resume_only_continues_an_unfinished_run_of_the_same_config(tmp_path):
    from mllmrec.train.checkpointing import auto_resume_checkpoint, record_run_fingerprint

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert auto_resume_checkpoint(tmp_path, "abc") is None  # nothing there
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert auto_resume_checkpoint(tmp_path, "abc") is None  # a checkpoint of unknown origin
    record_run_fingerprint(last.parent, "abc")
    assert auto_resume_checkpoint(tmp_path, "abc") == last
    assert auto_resume_checkpoint(tmp_path, "other") is None  # another config in this folder
    (tmp_path / "metrics.json").write_text("{}")
    assert auto_resume_checkpoint(tmp_path, "abc") is None  # finished: a rerun trains again


def test_resume_settings_leave_the_sweep_fingerprint_alone(tmp_path):
    """Finished sweep jobs stay finished: the keys added for exact resume and caches are result-neutral."""
    from mllmrec.train.fingerprint import config_fingerprint

    try:
        base = config_fingerprint(compose_config("train", ["logger=none"], tmp_path / "a"))
        for override in ("auto_resume=false", "callbacks.random_state=null", "~trainer.plugins",
                         "data.cache_dir=/somewhere/else"):
            assert config_fingerprint(compose_config("train", ["logger=none", override], tmp_path / "b")) == base
        assert config_fingerprint(compose_config("train", ["logger=none", "seed=1"], tmp_path / "c")) != base
    finally:
        GlobalHydra.instance().clear()
