"""data.valid_users: early-stopping validation on a fixed seeded sample of users (issue 16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mllmrec.errors import ConfigError
from mllmrec.train.datamodule import sample_validation_users
from mllmrec.train.task import build_datamodule, train

KS = (10, 20)


def brute_force_metrics(scores: np.ndarray, exclude: np.ndarray, truth: np.ndarray, users: np.ndarray) -> dict:
    """Recall@K / NDCG@K averaged over ``users`` only, from dense [U, I] arrays (one user at a time)."""
    sums = {f"{name}@{k}": 0.0 for k in KS for name in ("recall", "ndcg")}
    for u in users:
        n_truth = int(truth[u].sum())
        s = scores[u].astype(np.float64).copy()
        s[exclude[u]] = -np.inf
        order = np.argsort(-s, kind="stable")
        hit = truth[u][order] & ~exclude[u][order]
        for k in KS:
            dcg = sum(1.0 / math.log2(i + 2) for i in np.flatnonzero(hit[:k]))
            idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_truth, k)))
            sums[f"recall@{k}"] += hit[:k].sum() / n_truth
            sums[f"ndcg@{k}"] += dcg / idcg
    return {name: value / len(users) for name, value in sums.items()}


def served_users(loader) -> np.ndarray:
    return np.sort(np.concatenate([batch.numpy() for batch in loader]))


def test_sampled_validation_equals_brute_force_over_exactly_the_sampled_users(train_cfg, tmp_path):
    cfg = train_cfg("trainer.max_epochs=2", "data.valid_users=40", "data.valid_users_seed=7")
    summary, objects = train(cfg)
    datamodule, model, trainer = objects["datamodule"], objects["model"], objects["trainer"]
    valid = datamodule.data.valid
    with_truth = np.flatnonzero(np.diff(valid.indptr) > 0)
    sample = datamodule.validation_users
    assert sample.size == 40 < with_truth.size and np.isin(sample, with_truth).all()
    assert np.array_equal(sample, np.unique(sample))

    # the loaders: validation ranks exactly the sample, test every user with a test item
    assert np.array_equal(served_users(datamodule.val_dataloader()), sample)
    test_truth = datamodule.data.test
    assert np.array_equal(served_users(datamodule.test_dataloader()), np.flatnonzero(np.diff(test_truth.indptr) > 0))

    # the validation metrics of the model as it now is, against a brute force over those 40 users
    trainer.validate(model=model, datamodule=datamodule, verbose=False)
    got = model.eval_results["val"]
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_scores(torch.arange(valid.shape[0])).numpy()
    exclude, truth = datamodule.data.train.toarray() > 0, valid.toarray() > 0
    assert got == pytest.approx(brute_force_metrics(scores, exclude, truth, sample), abs=1e-9)
    everyone = brute_force_metrics(scores, exclude, truth, with_truth)
    assert got != pytest.approx(everyone, abs=1e-9)  # the sample is really a different average

    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["validation"] == {"users": 40, "users_with_truth": int(with_truth.size), "sampled": True,
                                     "valid_users": 40, "seed": 7}
    assert written["validation"] == summary["validation"]
    assert len(written["history"]) == 2


def test_the_sample_is_fixed_by_its_seed_and_the_same_in_every_run(train_cfg):
    cfg = train_cfg("data.valid_users=25")
    first, second = build_datamodule(cfg), build_datamodule(cfg)
    first.setup("fit")
    second.setup("fit")
    sample = first.validation_users
    assert np.array_equal(sample, second.validation_users)
    assert np.array_equal(sample, sample_validation_users(first.data.valid, 25, 999))
    # every validation pass (epoch) reads the same users
    assert np.array_equal(served_users(first.val_dataloader()), served_users(first.val_dataloader()))
    other_seed = sample_validation_users(first.data.valid, 25, 998)
    assert not np.array_equal(sample, other_seed)


def test_without_valid_users_every_user_is_validated(train_cfg):
    datamodule = build_datamodule(train_cfg())
    datamodule.setup("fit")
    valid = datamodule.data.valid
    with_truth = np.flatnonzero(np.diff(valid.indptr) > 0)
    assert np.array_equal(served_users(datamodule.val_dataloader()), with_truth)
    assert datamodule.validation_summary() == {"users": int(with_truth.size), "users_with_truth": int(with_truth.size),
                                               "sampled": False, "valid_users": None, "seed": 999}
    # a sample at least as large as the population is the population
    assert np.array_equal(sample_validation_users(valid, 10**6, 0), with_truth)


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "true"])
def test_a_bad_valid_users_value_is_rejected_before_work(train_cfg, value):
    with pytest.raises(ConfigError, match="data.valid_users"):
        train(train_cfg(f"data.valid_users={value}"))
