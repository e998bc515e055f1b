"""recommend (``python recommend.py``, ``mllmrec.recommend``) against a brute-force reference on the demo:
the full users x items score matrix (tiny here, and only in this test), masked and sorted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_helpers import train_demo_run  # noqa: E402

from mllmrec.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow

K = 10


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("recommend") / "run"
    train_demo_run(run, data_dir)
    return run


@pytest.fixture(scope="module")
def reference(trained_run):
    """The brute-force reference: every user's scores over every item, from the restored model."""
    from mllmrec.data import read_items
    from mllmrec.train.restore import restore_run

    restored = restore_run(trained_run)
    model, data = restored.model, restored.datamodule.data
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_scores(torch.arange(data.n_users)).numpy().astype(np.float64)
    items = read_items(restored.datamodule.layout.root, data.n_items)
    users = pd.read_parquet(restored.datamodule.layout.users).sort_values("user_id")["source_id"].to_numpy()
    return scores, data, items, users


def brute_force_top_k(scores: np.ndarray, masked: np.ndarray, k: int) -> list[list[int]]:
    ranked = np.where(masked, -np.inf, scores)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    return [[int(i) for i in row if np.isfinite(ranked[u, i])] for u, row in enumerate(order)]


@pytest.mark.parametrize("exclude_valid", [True, False])
def test_top_k_matches_the_brute_force_reference(trained_run, reference, exclude_valid):
    import mllmrec

    scores, data, items, users = reference
    frame = mllmrec.recommend(trained_run, k=K, exclude_valid=exclude_valid)
    seen = data.train + data.valid if exclude_valid else data.train
    expected = brute_force_top_k(scores, seen.toarray() > 0, K)
    got = frame.groupby("user_idx", sort=True)["item_idx"].apply(list)
    assert list(got.index) == list(range(data.n_users))
    assert [got[u] for u in range(data.n_users)] == expected
    # scores, ranks, raw ids and titles line up with the reference and the dataset's tables
    np.testing.assert_allclose(frame["score"], scores[frame["user_idx"], frame["item_idx"]], rtol=1e-5, atol=1e-6)
    assert (frame.groupby("user_idx")["rank"].apply(list) == frame.groupby("user_idx")["rank"]
            .apply(lambda r: list(range(1, len(r) + 1)))).all()
    assert (frame["item"].to_numpy() == items["source_id"].to_numpy()[frame["item_idx"]]).all()
    assert (frame["title"].to_numpy() == items["title"].to_numpy()[frame["item_idx"]]).all()
    assert (frame["user"].to_numpy() == users[frame["user_idx"]]).all()
    # never an item the user already has
    assert not np.asarray(seen[frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()]).any()
    if not exclude_valid:  # the switch matters: validation items do come back when allowed
        assert np.asarray(data.valid[frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()]).any()


def test_chosen_users_by_raw_id_in_the_given_order_and_csv_output(trained_run, reference, tmp_path):
    from mllmrec.train.recommend import recommend

    scores, data, _, users = reference
    chosen = [users[7], users[2]]
    out = tmp_path / "top.csv"
    frame = recommend(trained_run, users=",".join(chosen), k=3, output=out)
    assert list(dict.fromkeys(frame["user"])) == chosen
    written = pd.read_csv(out)
    assert list(written.columns) == list(frame.columns) and len(written) == 6
    expected = brute_force_top_k(scores, (data.train + data.valid).toarray() > 0, 3)
    assert list(frame["item_idx"]) == expected[7] + expected[2]


def test_bad_requests_are_errors_before_any_work(trained_run, reference):
    from mllmrec.train.recommend import recommend

    with pytest.raises(ConfigError, match="1 unknown user id\\(s\\): nobody"):
        recommend(trained_run, users=[reference[3][0], "nobody"], k=3)
    with pytest.raises(ConfigError, match="k=0"):
        recommend(trained_run, k=0)
    with pytest.raises(ConfigError, match=r"\.parquet or \.csv"):
        recommend(trained_run, k=3, output="top.xlsx")


def test_exported_representations_reproduce_the_scores_for_an_ann_index(trained_run, reference, tmp_path):
    from mllmrec.train.recommend import recommend

    scores, data, items, users = reference
    recommend(trained_run, users=[users[0]], k=1, export=tmp_path / "emb")
    user_vectors = np.load(tmp_path / "emb" / "user_embeddings.npy")
    item_vectors = np.load(tmp_path / "emb" / "item_embeddings.npy")
    assert user_vectors.shape == (data.n_users, 64) and item_vectors.shape == (data.n_items, 64)
    np.testing.assert_allclose(user_vectors @ item_vectors.T, scores, rtol=1e-4, atol=1e-5)
    user_ids = pd.read_parquet(tmp_path / "emb" / "users.parquet")
    item_ids = pd.read_parquet(tmp_path / "emb" / "items.parquet")
    assert (user_ids["row"].to_numpy() == np.arange(data.n_users)).all() and (user_ids["user"] == users).all()
    assert (item_ids["item"] == items["source_id"]).all() and (item_ids["title"] == items["title"]).all()


def test_a_model_without_representations_says_so():
    from mllmrec.models.base import Recommender

    with pytest.raises(NotImplementedError, match="Recommender does not export user/item representations"):
        Recommender().representations()
