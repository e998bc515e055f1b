"""MLLMRec's "w/ GCN_UI" branch against a dense reference; the item-item propagation stays once per run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mllmrec.graph import refined_item_graph
from mllmrec.models import MLLMRec


def tiny(ui_layers: int, seed: int = 0) -> tuple[MLLMRec, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    r = sp.csr_matrix((rng.random((8, 6)) < 0.4).astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    items, users = torch.randn(6, 10, generator=g), torch.randn(8, 10, generator=g)
    graph = refined_item_graph(items, r, k_s=3, alpha=0.0, k_c=2)
    torch.manual_seed(seed)
    model = MLLMRec(items, users, graph, n_users=8, d=4, layers=1, train_interactions=r, ui_layers=ui_layers)
    return model, r


def dense_adjacency(r: sp.csr_matrix) -> torch.Tensor:
    b = torch.from_numpy(r.toarray()).double()
    a = torch.zeros(14, 14, dtype=torch.float64)
    a[:8, 8:], a[8:, :8] = b, b.T
    d = a.sum(1)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    return inv[:, None] * a * inv[None, :]


@pytest.mark.parametrize("ui_layers", [1, 2])
def test_branch_matches_dense_reference(ui_layers):
    model, r = tiny(ui_layers)
    with torch.no_grad():
        model.prepare_eval()
        scores = model.full_scores(torch.arange(8)).double()
        h_u = model.user_tower(model.user_features).double()
        h_i = model.item_tower(model.propagated_items()).double()
        x = F.normalize(torch.cat([h_u, h_i]))
        a, z, layer = dense_adjacency(r), x.clone(), x
        for _ in range(ui_layers):
            layer = a @ layer
            z = z + layer
        out = torch.cat([h_u, h_i]) + z
    torch.testing.assert_close(scores, out[:8] @ out[8:].T, rtol=1e-5, atol=1e-6)


def test_branch_off_is_the_plain_model():
    with_branch, _ = tiny(2)
    without, _ = tiny(0)
    without.load_state_dict(with_branch.state_dict())
    assert without.ui_graph is None
    with torch.no_grad():
        without.prepare_eval()
        h = without.user_tower(without.user_features) @ without.item_tower(without.propagated_items()).T
        torch.testing.assert_close(without.full_scores(torch.arange(8)), h)


def test_item_propagation_runs_once_while_the_branch_runs_every_batch():
    model, r = tiny(2)
    users = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        model.zero_grad()
        model.loss(users, torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 3, 2])).backward()
        assert model.user_tower[0].weight.grad.abs().sum() > 0
        assert model.item_tower[0].weight.grad.abs().sum() > 0
    assert model.n_propagations == 1


def test_branch_needs_the_interactions():
    items, users = torch.randn(6, 10), torch.randn(8, 10)
    graph = torch.eye(6).to_sparse()
    with pytest.raises(ValueError, match="train_interactions"):
        MLLMRec(items, users, graph, ui_layers=2)
