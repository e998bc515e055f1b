"""The datamodule picks up reasoning outputs, builds the no-LLM profiles, and checks what it reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mllmrec.data import DatasetError, DatasetLayout
from mllmrec.data.demo import ensure_demo_dataset
from mllmrec.encoding import EncoderSpec, encode_texts
from mllmrec.errors import MllmrecError
from mllmrec.train.task import build_datamodule


def _datamodule(cfg):
    """A datamodule with every model input built (what MLLMRec asks for)."""
    dm = build_datamodule(cfg)
    dm.setup("fit")
    dm.item_features, dm.user_features, dm.item_graph
    return dm


def _write_reasoning(root, n_items, n_users, name="fakellm", drop_user=False, history="train"):
    folder = DatasetLayout(root).reasoning(name, history)
    folder.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({
        "item_id": np.arange(n_items),
        "text": [f"text of item {i}" for i in range(n_items)],
        "image_description": [f"a picture of thing {i % 7}" for i in range(n_items)],
    })
    items["description"] = items["text"] + " | " + items["image_description"]
    users = pd.DataFrame({"user_id": np.arange(n_users), "profile": [f"likes thing {u % 5}" for u in range(n_users)]})
    if drop_user:
        users = users.iloc[:-1]
    items.to_parquet(folder / "item_descriptions.parquet")
    users.to_parquet(folder / "user_profiles.parquet")
    return items, users


def test_mllm_none_profiles_are_chronological_training_descriptions(train_cfg):
    cfg = train_cfg()
    dm = build_datamodule(cfg)
    ensure_demo_dataset(cfg.dataset.root, n_users=cfg.dataset.n_users, n_items=cfg.dataset.n_items)
    from mllmrec.data import load_processed_dataset, read_items

    data = load_processed_dataset(cfg.dataset.root)
    item_texts, user_texts = dm.item_and_user_texts(data)
    items = read_items(cfg.dataset.root)
    assert item_texts == items["text"].tolist()
    inter = pd.read_parquet(DatasetLayout(cfg.dataset.root).interactions)
    u = 3
    rows = inter[(inter.user_id == u) & (inter.x_label == 0)].sort_values("timestamp", kind="stable")
    assert user_texts[u] == "\n".join(item_texts[i] for i in rows.item_id)
    held_out = inter[(inter.user_id == u) & (inter.x_label > 0)].item_id
    for i in held_out:  # no valid/test item leaks into the profile
        assert item_texts[i] not in user_texts[u].split("\n")


def test_reasoning_outputs_are_encoded_by_source_column(train_cfg):
    cfg = train_cfg("mllm.name=fakellm")
    ensure_demo_dataset(cfg.dataset.root, n_users=cfg.dataset.n_users, n_items=cfg.dataset.n_items)
    items, users = _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users)
    dm = _datamodule(cfg)
    spec = EncoderSpec()
    expected = encode_texts(items["description"].tolist()[:3], spec)
    np.testing.assert_allclose(dm.item_features[:3].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(dm.user_features[:2].numpy(), encode_texts(users["profile"].tolist()[:2], spec), atol=1e-5)

    text_only = _datamodule(train_cfg("mllm.name=fakellm", "data.item_text_source=text"))  # w/o V
    np.testing.assert_allclose(text_only.item_features[:3].numpy(),
                               encode_texts(items["text"].tolist()[:3], spec), atol=1e-5)


def test_empty_profiles_are_reported_with_their_status_and_fix(train_cfg, caplog):
    cfg = train_cfg("mllm.name=fakellm3")
    ensure_demo_dataset(cfg.dataset.root, n_users=cfg.dataset.n_users, n_items=cfg.dataset.n_items)
    _, users = _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users, name="fakellm3")
    status = ["ok"] * len(users)
    status[:3] = ["skipped_limit"] * 3
    status[5] = "failed"
    users["status"] = status
    users.loc[[0, 1, 2, 5], "profile"] = ""
    users.to_parquet(DatasetLayout(cfg.dataset.root).reasoning("fakellm3") / "user_profiles.parquet")
    dm = build_datamodule(cfg)
    from mllmrec.data import load_processed_dataset

    with caplog.at_level("WARNING", logger="mllmrec.reasoning.outputs"):
        dm.item_and_user_texts(load_processed_dataset(cfg.dataset.root))
    (message,) = [r.getMessage() for r in caplog.records if "empty profile" in r.getMessage()]
    assert f"4 of {len(users)} users" in message
    assert "3 skipped_limit (reason.py ran with reason.limit_users" in message
    assert "1 failed (rerun reason.py: it retries recorded failures" in message

    caplog.clear()
    _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users, name="fakellm3")
    with caplog.at_level("WARNING", logger="mllmrec.reasoning.outputs"):
        dm.item_and_user_texts(load_processed_dataset(cfg.dataset.root))
    assert not [r for r in caplog.records if "empty profile" in r.getMessage()]


def test_reasoning_table_with_missing_rows_is_rejected(train_cfg):
    cfg = train_cfg("mllm.name=fakellm2")
    ensure_demo_dataset(cfg.dataset.root, n_users=cfg.dataset.n_users, n_items=cfg.dataset.n_items)
    _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users, name="fakellm2", drop_user=True)
    with pytest.raises(DatasetError, match="user_profiles.parquet.*one row per id"):
        _datamodule(cfg)


def test_reason_history_picks_the_outputs_reason_py_wrote_with_the_same_key(train_cfg):
    """One key, reason.history, in both apps: train.py reads reasoning/<mllm>__history-all/ only
    when asked for it, and names the reason.py command with the same key when it is missing."""
    cfg = train_cfg("mllm.name=fakellm4", "reason.history=all")
    ensure_demo_dataset(cfg.dataset.root, n_users=cfg.dataset.n_users, n_items=cfg.dataset.n_items)
    from mllmrec.data import load_processed_dataset

    data = load_processed_dataset(cfg.dataset.root)
    dm = build_datamodule(cfg)
    with pytest.raises(DatasetError, match=r"python reason.py dataset=demo mllm=fakellm4 reason.history=all`"):
        dm.item_and_user_texts(data)
    _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users, name="fakellm4")
    with pytest.raises(DatasetError, match="fakellm4__history-all"):  # the train-history outputs do not count
        dm.item_and_user_texts(data)
    _, leaky = _write_reasoning(cfg.dataset.root, cfg.dataset.n_items, cfg.dataset.n_users, name="fakellm4",
                                history="all")
    leaky.loc[:, "profile"] = [f"leaky profile {u}" for u in range(len(leaky))]
    leaky.to_parquet(DatasetLayout(cfg.dataset.root).reasoning("fakellm4", "all") / "user_profiles.parquet")
    _, users = dm.item_and_user_texts(data)
    assert users == leaky["profile"].tolist()
    _, users = build_datamodule(train_cfg("mllm.name=fakellm4")).item_and_user_texts(data)
    assert users[0] == "likes thing 0"  # the default history reads the other folder
    with pytest.raises(MllmrecError, match="reason.history must be 'train'"):
        build_datamodule(train_cfg("mllm.name=fakellm4", "reason.history=valid"))


def test_graph_is_built_from_training_interactions_only(train_cfg, monkeypatch):
    import mllmrec.train.datamodule as dmod

    seen = {}
    real = dmod.build_refined_item_graph

    def spy(features, interactions, *args, **kwargs):
        seen["interactions"] = interactions
        return real(features, interactions, *args, **kwargs)

    monkeypatch.setattr(dmod, "build_refined_item_graph", spy)
    dm = _datamodule(train_cfg())
    assert (seen["interactions"] != dm.data.train).nnz == 0


def test_eval_batches_are_capped_so_a_batch_score_matrix_stays_bounded(train_cfg, monkeypatch):
    """4096 users x 1M items would be a 16 GB score matrix: the users per batch shrink to fit the
    budget, and the same users are evaluated, each once, in the same order."""
    import mllmrec.train.datamodule as dmod

    assert dmod.eval_users_per_batch(4096, 1_000_000) == 134  # 512 MiB / (4 B x 1M items)
    assert dmod.eval_users_per_batch(4096, 7_050) == 4096  # the paper's datasets: unchanged
    assert dmod.eval_users_per_batch(4096, 10**12) == 1
    dm = build_datamodule(train_cfg())
    dm.setup("fit")
    full = torch.cat(list(dm.val_dataloader()))
    n_items = dm.data.train.shape[1]
    monkeypatch.setattr(dmod, "EVAL_SCORE_BYTES", 4 * n_items * 7)
    batches = list(dm.val_dataloader())
    assert max(len(b) for b in batches) == 7 and len(batches) == -(-len(full) // 7)
    assert torch.equal(torch.cat(batches), full)


def test_demo_knn_similarities_spread_so_alpha_prunes_different_amounts(train_cfg):
    # demo version 1 had every kNN cosine >= 0.71: alpha in 0.4-0.7 pruned nothing and the README's
    # alpha x kc sweep gave identical rows. The statistics are those of the graph build itself.
    dm = build_datamodule(train_cfg("graph.alpha=0.5"))
    dm.setup("fit")
    _ = dm.item_graph  # builds the graph and its statistics
    stats = dm.graph_statistics
    sims = stats.knn_similarities
    shares = [float((sims < a).mean()) for a in (0.4, 0.5, 0.6, 0.7)]
    assert shares[1] > 0.02, shares  # some edges below 0.5, as on real data (~12%)
    assert shares[1] < shares[2] < shares[3] < 1.0, shares  # each step of alpha prunes more
    assert stats.alpha_pruned == int((sims < 0.5).sum())  # self-loops (cosine 1) are never pruned
    assert stats.cooccurrence_edges > 0 and stats.final_edges > stats.alpha_kept  # co-occurrence adds
