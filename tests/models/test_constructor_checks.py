"""Every shipped model rejects out-of-range hyper-parameters with a message naming the config key."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch

from mllmrec.models import BPR, FREEDOM, VBPR, LightGCN, MLLMRec

U, I, D_T = 5, 6, 4


def _inputs():
    train = sp.csr_matrix(([1.0] * 6, ([0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 5])), shape=(U, I))
    return {"item_features": torch.randn(I, D_T), "user_features": torch.randn(U, D_T),
            "item_modalities": {"text": torch.randn(I, D_T), "image": torch.randn(I, D_T + 3)},
            "item_graph": torch.eye(I).to_sparse(), "train_interactions": train, "n_users": U, "n_items": I}


def _build(cls, **overrides):
    wanted = {"BPR": ("n_users", "n_items"), "VBPR": ("item_modalities", "n_users", "n_items"),
              "LightGCN": ("train_interactions", "n_users", "n_items"),
              "FREEDOM": ("item_modalities", "train_interactions", "n_users", "n_items"),
              "MLLMRec": ("item_features", "user_features", "item_graph")}[cls.__name__]
    inputs = _inputs()
    return cls(**{k: inputs[k] for k in wanted}, **overrides)


@pytest.mark.parametrize("cls, key, value", [
    (BPR, "d", 0), (BPR, "reg_weight", -1e-3), (VBPR, "d", 0), (LightGCN, "d", 0), (LightGCN, "layers", -1),
    (FREEDOM, "d", 0), (FREEDOM, "mm_layers", -1), (FREEDOM, "ui_layers", -1), (FREEDOM, "knn_k", 0),
    (MLLMRec, "d", 0), (MLLMRec, "ui_layers", -1),
])
def test_out_of_range_hyper_parameter_names_its_key(cls, key, value):
    with pytest.raises(ValueError, match=rf"model\.{key} must be >= \d+, got {value}"):
        _build(cls, **{key: value})
    _build(cls)  # the defaults are accepted


def test_mllmrec_graph_layers_names_the_graph_key():
    with pytest.raises(ValueError, match=r"graph\.layers must be >= 0, got -1"):
        _build(MLLMRec, layers=-1)
