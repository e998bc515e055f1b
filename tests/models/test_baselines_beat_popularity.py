"""Every Table 2 baseline trains through train() on the small demo and beats training popularity on
validation Recall@20 (the sanity bar of any recommender)."""

from __future__ import annotations

import pytest

from mllmrec.train.task import popularity_metrics, train

# a few epochs on the 160-user demo: larger steps than the papers' lr 1e-3, which needs hundreds of
# epochs on so few batches
FAST = ["model.optimizer.lr=0.01", "data.batch_size=256", "test=false"]


@pytest.mark.parametrize(
    ("experiment", "model_class", "epochs"),
    [
        ("baseline_bpr", "BPR", 6),
        ("baseline_lightgcn", "LightGCN", 3),
        ("baseline_vbpr", "VBPR", 4),
        ("baseline_freedom", "FREEDOM", 3),
        ("baseline_freedom_gr", "FREEDOM", 3),
    ],
)
def test_baseline_beats_popularity(train_cfg, experiment, model_class, epochs):
    # the demo has no image features: the multimodal baselines read its text modality alone
    text_only = ["model.modalities=[text]"] if model_class in ("VBPR", "FREEDOM") else []
    cfg = train_cfg(f"experiment={experiment}", f"trainer.max_epochs={epochs}", *FAST, *text_only)
    summary, objects = train(cfg)
    model, datamodule = objects["model"], objects["datamodule"]
    assert type(model).__name__ == model_class
    assert len(summary["history"]) == epochs
    popularity = popularity_metrics(datamodule, "valid")["recall@20"]
    assert summary["valid"]["recall@20"] > popularity, (experiment, summary["valid"], popularity)
    if experiment == "baseline_freedom":  # its own kNN graph (one modality): exactly knn_k edges per item
        assert model.item_item.nnz == datamodule.data.n_items * cfg.model.knn_k
    if experiment == "baseline_freedom_gr":  # the datamodule's refined graph, as it is
        assert model.item_item.nnz == datamodule.item_graph._nnz()
