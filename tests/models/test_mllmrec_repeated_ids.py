"""MLLMRec computes each distinct user / item of a batch once: same loss and gradients as the plain
per-row computation, and fewer tower rows."""

from __future__ import annotations

import pytest
import torch

from mllmrec.models import MLLMRec
from mllmrec.models.base import bpr_loss


def test_loss_and_gradients_match_the_per_row_computation():
    g = torch.Generator().manual_seed(0)
    items, users = torch.randn(30, 16, generator=g), torch.randn(20, 16, generator=g)
    torch.manual_seed(0)
    model = MLLMRec(items, users, torch.eye(30).to_sparse(), d=8)
    # heavy repetition, as popular positives and small catalogues produce
    u = torch.randint(0, 20, (64,), generator=g)
    pos = torch.randint(0, 5, (64,), generator=g)
    neg = torch.randint(0, 30, (64,), generator=g)

    loss = model.loss(u, pos, neg)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    inputs = model.propagated_items()
    h_u = model.user_tower(model.user_features[u])
    h_pos, h_neg = model.item_tower(inputs[pos]), model.item_tower(inputs[neg])
    reference = bpr_loss((h_u * h_pos).sum(-1), (h_u * h_neg).sum(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_towers_see_each_distinct_id_once():
    model = MLLMRec(torch.randn(30, 16), torch.randn(20, 16), torch.eye(30).to_sparse(), d=8)
    rows = {}
    model.item_tower.register_forward_hook(lambda m, inp, out: rows.__setitem__("items", inp[0].shape[0]))
    model.user_tower.register_forward_hook(lambda m, inp, out: rows.__setitem__("users", inp[0].shape[0]))
    u = torch.tensor([0, 0, 1, 1, 1, 2])
    pos = torch.tensor([3, 3, 3, 4, 4, 5])
    neg = torch.tensor([5, 6, 6, 7, 3, 8])
    model.loss(u, pos, neg)
    assert rows == {"users": 3, "items": 6}  # {0, 1, 2} and {3, 4, 5, 6, 7, 8}


@pytest.mark.parametrize("slope", [0.01, 0.0, -0.2])
def test_tower_matches_the_functional_formula(slope):
    """Eq. 14 written out with out-of-place ops: the tower (in-place activation for slope >= 0) gives
    the same output and weight gradients."""
    from mllmrec.models import mlp_tower

    torch.manual_seed(0)
    tower = mlp_tower(6, 5, 3, negative_slope=slope)
    x = torch.randn(11, 6)
    tower(x).pow(2).sum().backward()
    got = [p.grad.clone() for p in tower.parameters()]
    w1, b1, w2, b2 = (p.detach().clone().requires_grad_() for p in tower.parameters())
    z = x @ w1.T + b1
    h = torch.where(z > 0, z, slope * z) @ w2.T + b2
    h.pow(2).sum().backward()
    torch.testing.assert_close(tower(x), h)
    for g, ref in zip(got, (w1, b1, w2, b2)):
        torch.testing.assert_close(g, ref.grad)
