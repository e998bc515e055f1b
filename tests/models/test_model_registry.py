"""Models are found by ``_target_`` alone: a class defined outside the package (here, in this test
module) trains through train() and receives the inputs its constructor names."""

from __future__ import annotations

import json
from pathlib import Path

import scipy.sparse as sp
import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

from mllmrec.models import Recommender, bpr_loss
from mllmrec.train.task import train

RECEIVED: dict[str, object] = {}


class ItemBiasMF(Recommender):
    """A tiny model that exists only in this test: MF plus an item bias, needing only two inputs."""

    def __init__(self, n_items: int, train_interactions: sp.spmatrix, d: int = 4, optimizer=None) -> None:
        super().__init__(optimizer=optimizer)
        RECEIVED.update(n_items=n_items, shape=train_interactions.shape)
        n_users = train_interactions.shape[0]
        self.users = nn.Embedding(n_users, d)
        self.items = nn.Embedding(n_items, d)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        p = self.users(users)
        pos = (p * self.items(positives)).sum(-1) + self.bias[positives]
        neg = (p * self.items(negatives)).sum(-1) + self.bias[negatives]
        return bpr_loss(pos, neg)

    def full_scores(self, users: Tensor) -> Tensor:
        return self.users(users) @ self.items.weight.T + self.bias


def test_model_defined_outside_the_package_trains_via_target(train_cfg):
    cfg = train_cfg("trainer.max_epochs=2", "test=true")
    target = f"{ItemBiasMF.__module__}.{ItemBiasMF.__qualname__}"
    assert not target.startswith("mllmrec.")
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": target, "d": 3, "optimizer": {
            "_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05}})
    RECEIVED.clear()
    summary, objects = train(cfg)
    model, datamodule = objects["model"], objects["datamodule"]
    assert type(model).__name__ == "ItemBiasMF" and model.items.weight.shape == (datamodule.data.n_items, 3)
    # only what the constructor asked for was passed, with the datamodule's values
    assert RECEIVED == {"n_items": datamodule.data.n_items, "shape": datamodule.data.train.shape}
    assert model.bias.abs().sum() > 0  # it trained
    assert type(model.optimizers().optimizer).__name__ == "SGD"  # the configured optimiser
    # inputs it did not ask for were never built: no encoding, no graph
    assert datamodule._item_features is None and datamodule._texts is None and not datamodule.has_item_graph
    assert len(summary["history"]) == 2 and set(summary["test"]) >= {"recall@20", "ndcg@20"}
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["valid"] == summary["valid"]
