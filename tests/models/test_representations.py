"""``Recommender.representations()``: for every model, the exported user and item vectors' dot products
are exactly what ``full_scores`` ranks (what an ANN index built on them would serve)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import semantic_graph
from mllmrec.models import BPR, FREEDOM, LATTICE, VBPR, LGMRec, LightGCN, MLLMRec

N_USERS, N_ITEMS, D_T = 11, 9, 6


def _inputs():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(N_ITEMS, D_T, generator=g)
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.float32))
    return features, torch.randn(N_USERS, D_T, generator=g), semantic_graph(features, 3, 0.0), train


def _models():
    features, user_features, graph, train = _inputs()
    yield "mllmrec", MLLMRec(item_features=features, user_features=user_features, item_graph=graph, d=4)
    yield "mllmrec w/o RS", MLLMRec(item_features=features, user_features=None, item_graph=graph, n_users=N_USERS, d=4)
    yield "mllmrec w/ GCN_UI", MLLMRec(item_features=features, user_features=user_features, item_graph=graph, d=4,
                                       train_interactions=train, ui_layers=1)
    yield "bpr", BPR(n_users=N_USERS, n_items=N_ITEMS, d=4)
    modalities = {"text": features, "image": torch.randn(N_ITEMS, D_T + 2, generator=torch.Generator().manual_seed(2))}
    yield "vbpr", VBPR(item_modalities=modalities, n_users=N_USERS, n_items=N_ITEMS, d=4)
    yield "lightgcn", LightGCN(train_interactions=train, n_users=N_USERS, n_items=N_ITEMS, d=4, layers=2)
    yield "freedom", FREEDOM(item_modalities=modalities, train_interactions=train, n_users=N_USERS, n_items=N_ITEMS,
                             knn_k=3, d=4)
    yield "freedom+gr", FREEDOM(item_modalities=modalities, item_graph=graph, train_interactions=train,
                                n_users=N_USERS, n_items=N_ITEMS, knn_k=3, d=4)
    yield "lattice", LATTICE(item_modalities=modalities, train_interactions=train, n_users=N_USERS, n_items=N_ITEMS,
                             knn_k=3, d=4)
    yield "lgmrec", LGMRec(item_modalities=modalities, train_interactions=train, n_users=N_USERS, n_items=N_ITEMS,
                           d=4)
    yield "lgmrec+gr", LGMRec(item_modalities=modalities, item_graph=graph, train_interactions=train,
                              n_users=N_USERS, n_items=N_ITEMS, d=4)


@pytest.mark.parametrize("name, model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_dot_products_of_the_representations_are_the_scores(name, model):
    torch.manual_seed(1)
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        users, items = model.representations()
        scores = model.full_scores(torch.arange(N_USERS))
    assert users.shape[0] == N_USERS and items.shape[0] == N_ITEMS and users.shape[1] == items.shape[1]
    torch.testing.assert_close(users @ items.T, scores, rtol=1e-5, atol=1e-6)
