"""Cold-start items (data.cold_start_items): the held-out split, the graph, and the cold-item metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mllmrec.data import TEST, TRAIN, VALID, DatasetError, interaction_data_from_frame
from mllmrec.data.cold_start import hold_out_cold_items
from mllmrec.graph import semantic_graph
from mllmrec.metrics import topk_metrics
from mllmrec.train.task import train


def _toy_data(seed: int = 0, n_users: int = 50, n_items: int = 30):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=8, replace=False)
        labels = [TRAIN] * 6 + [VALID, TEST]
        rows += [(u, int(i), k, lab) for k, (i, lab) in enumerate(zip(items, labels))]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp", "x_label"])
    return interaction_data_from_frame(frame, name="toy")


def _pairs(matrix: sp.spmatrix) -> set[tuple[int, int]]:
    coo = sp.coo_matrix(matrix)
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def test_cold_items_leave_training_and_their_interactions_go_to_valid_or_test():
    data = _toy_data()
    split = hold_out_cold_items(data, 0.2, seed=3)
    cold = set(split.cold_items.tolist())
    assert len(cold) == round(0.2 * 30)
    held = split.data
    assert not any(i in cold for _, i in _pairs(held.train))
    before = _pairs(data.train) | _pairs(data.valid) | _pairs(data.test)
    after = _pairs(held.train) | _pairs(held.valid) | _pairs(held.test)
    assert after == before  # nothing lost (every user keeps training items here), nothing invented
    # warm interactions keep their split; cold ones are only in valid/test
    for name in ("train", "valid", "test"):
        warm_before = {p for p in _pairs(getattr(data, name)) if p[1] not in cold}
        warm_after = {p for p in _pairs(getattr(held, name)) if p[1] not in cold}
        assert warm_before == warm_after, name
    moved = {p for p in _pairs(data.train) if p[1] in cold}
    assert moved and moved <= (_pairs(held.valid) | _pairs(held.test))
    assert split.moved["valid"] + split.moved["test"] == len(moved)
    # histories: the training items, chronological, without the cold ones
    for u in range(data.n_users):
        assert held.history(u).tolist() == [i for i in data.history(u).tolist() if i not in cold]
    # seeded: the same seed gives the same items, another seed others
    again = hold_out_cold_items(data, 0.2, seed=3)
    np.testing.assert_array_equal(again.cold_items, split.cold_items)
    assert (again.data.valid != held.valid).nnz == 0
    assert set(hold_out_cold_items(data, 0.2, seed=4).cold_items.tolist()) != cold


def test_a_share_holding_out_nothing_is_refused():
    with pytest.raises(DatasetError, match="holds out no item"):
        hold_out_cold_items(_toy_data(), 0.001, seed=0)
    with pytest.raises(DatasetError, match=r"must be in \(0, 1\)"):
        hold_out_cold_items(_toy_data(), 1.0, seed=0)


def test_mllmrec_cold_metrics_rank_only_cold_items_and_cold_items_have_semantic_neighbours_only(train_cfg):
    summary, objs = train(train_cfg("data.cold_start_items=0.2", "dataset.max_epochs=3"))
    dm, model = objs["datamodule"], objs["model"]
    cold = dm.cold_split.cold_items
    block = summary["cold_start"]
    assert block["items"] == len(cold) == round(0.2 * dm.data.n_items) and block["reads_item_content"]
    assert dm.data.train[:, cold].nnz == 0
    # reference: the model's dense scores, cold columns only, through the public topk_metrics
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_scores(torch.arange(dm.data.n_users))[:, torch.from_numpy(cold)]
    for split, truth in (("valid", dm.data.valid), ("test", dm.data.test)):
        users = np.flatnonzero(np.diff(truth[:, cold].tocsr().indptr) > 0)
        expected = topk_metrics(scores[users], dm.data.train[users][:, cold], truth[users][:, cold], ks=(10, 20))
        for key, value in expected.items():
            assert block[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    # the refined graph: every edge at a cold item is a semantic kNN edge (no co-occurrence)
    g = dm.graph_spec
    semantic = semantic_graph(dm.item_features, g.ks, g.alpha).coalesce()
    sem_pairs = set(map(tuple, semantic.indices().T.tolist()))
    rows, cols = dm.item_graph.coalesce().indices()
    is_cold = np.zeros(dm.data.n_items, dtype=bool)
    is_cold[cold] = True
    at_cold = [(a, b) for a, b in zip(rows.tolist(), cols.tolist()) if is_cold[a] or is_cold[b]]
    assert at_cold and set(at_cold) <= sem_pairs
    assert any(is_cold[a] and not is_cold[b] for a, b in at_cold)  # they do have (warm) neighbours


def test_an_id_only_model_is_reported_as_such(train_cfg):
    summary, _ = train(train_cfg("experiment=baseline_bpr", "data.cold_start_items=0.2", "dataset.max_epochs=2"))
    assert summary["cold_start"]["reads_item_content"] is False
    assert set(summary["cold_start"]["test"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}


def test_profiles_made_before_the_split_are_refused(train_cfg, tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 5.0, k, lab) for u in range(20)
            for k, (i, lab) in enumerate(zip(rng.choice(15, 8, replace=False), [0] * 6 + [1, 2]))]
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        folder / "toy.inter", sep="\t", index=False)
    np.save(folder / "image_text_feat.npy", rng.normal(size=(15, 8)).astype(np.float32))
    np.save(folder / "user_preferences_feat.npy", rng.normal(size=(20, 8)).astype(np.float32))
    mmrec = ("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy", "data.cold_start_items=0.2")
    with pytest.raises(DatasetError, match="data.use_user_features=false"):
        train(train_cfg(*mmrec))
    summary, _ = train(train_cfg(*mmrec, "data.use_user_features=false", "trainer.max_epochs=1"))
    assert summary["cold_start"]["items"] == 3
