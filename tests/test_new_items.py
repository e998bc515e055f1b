"""Scoring new items (not in the dataset) with a trained MLLMRec, against a dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from new_items_reference import dense_new_item_representations

from mllmrec.data import read_items
from mllmrec.models.cold_start import new_item_representations, score_new_items
from mllmrec.train.new_items import score_new_item_texts
from mllmrec.train.task import train


def test_new_items_follow_the_dense_reference_and_do_not_move_trained_items(train_cfg):
    _, objs = train(train_cfg("dataset.max_epochs=2"))
    dm, model = objs["datamodule"], objs["model"]
    model.eval()
    g = dm.graph_spec
    rng = np.random.default_rng(0)
    # new items: noisy mixes of trained items' features (so they have neighbours above alpha)
    pick = rng.choice(dm.data.n_items, size=(5, 2))
    new = (dm.item_features[pick[:, 0]] + 0.5 * dm.item_features[pick[:, 1]]
           + 0.05 * torch.from_numpy(rng.normal(size=(5, dm.item_features.shape[1])).astype(np.float32)))
    got = new_item_representations(model, dm.item_graph, new, g.ks, g.alpha)
    expected = dense_new_item_representations(model, dm.item_graph, dm.item_features, new, g.ks, g.alpha)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    # each new item is placed alone: scoring a subset gives the same rows
    torch.testing.assert_close(new_item_representations(model, dm.item_graph, new[2:4], g.ks, g.alpha), got[2:4])
    users = torch.arange(7)
    with torch.no_grad():
        scores = score_new_items(model, dm.item_graph, new, users, g.ks, g.alpha)
        torch.testing.assert_close(scores, model.user_repr(users) @ got.T)
        # the trained items' representations are untouched by adding new ones
        model.prepare_eval()
        before = model.full_scores(users)
    assert model.n_propagations == 1
    torch.testing.assert_close(model.full_scores(users), before)


def test_texts_are_encoded_like_the_training_items(train_cfg):
    _, objs = train(train_cfg("dataset.max_epochs=1"))
    dm, model = objs["datamodule"], objs["model"]
    texts = read_items(dm.layout.root)["text"].tolist()[:3]  # known items' texts as "new" ones
    users = torch.arange(4)
    scores = score_new_item_texts(dm, model, texts, users)
    # the encoder output for the same texts is the training features' rows
    expected = score_new_items(model, dm.item_graph, dm.item_features[:3], users, dm.graph_spec.ks, dm.graph_spec.alpha)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_a_restored_run_scores_new_items_like_the_run_it_was_trained_in(tmp_path, data_dir):
    # the documented path (docs/cold_start.md): restore_run -> score_new_item_texts; the cold-start
    # hold-out is re-applied identically from the saved config (seeded), so the graph is the same
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
    from run_helpers import train_demo_run

    from mllmrec.train.restore import restore_run
    from mllmrec.train.task import cold_start_summary

    run_dir = tmp_path / "run"
    summary = train_demo_run(run_dir, data_dir, "data.cold_start_items=0.2")
    run = restore_run(run_dir)
    # same cold items, same best checkpoint: the cold-start block comes out as the run wrote it
    again = cold_start_summary(run.cfg, run.datamodule, run.model)
    assert again["items"] == summary["cold_start"]["items"]
    for split in ("valid", "test"):
        for key, value in summary["cold_start"][split].items():
            assert again[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    texts = ["Zoriva red wool scarf Zoriva A formal scarf made of wool in a red finish."]
    scores = score_new_item_texts(run.datamodule, run.model, texts, torch.arange(5))
    assert scores.shape == (5, 1) and torch.isfinite(scores).all()
