"""MMRec-exact pieces: EmbLoss (un-squared norms / batch), BPRLoss, the BPR / LightGCN / VBPR losses,
VBPR's [text ; image] content, MMRec's initialisations, checked against formulas written out here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.models import BPR, VBPR, LightGCN, emb_loss, mmrec_bpr_loss
from mllmrec.models.mmrec_parts import edge_propagate, knn_indices

U, I = 30, 20  # noqa: E741  (users, items: the paper's U and I)


def _mmrec_emb_loss(*embs):  # common/loss.py EmbLoss, as written there
    total = torch.zeros(1)
    for e in embs:
        total += torch.norm(e, p=2)
    return (total / embs[-1].shape[0])[0]


def test_emb_loss_is_mmrecs_unsquared_norm_over_the_batch():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(7, 5, generator=g) * 3 for _ in range(3))
    torch.testing.assert_close(emb_loss(a, b, c), _mmrec_emb_loss(a, b, c))
    squared = sum(e.pow(2).sum() for e in (a, b, c)) / (2 * 7)  # the LightGCN-paper form it replaced
    assert not torch.isclose(emb_loss(a, b, c), squared)


def test_bpr_loss_has_mmrecs_gamma():
    pos, neg = torch.tensor([0.0, -40.0]), torch.tensor([0.0, 0.0])
    expected = -torch.log(1e-10 + torch.sigmoid(pos - neg)).mean()
    torch.testing.assert_close(mmrec_bpr_loss(pos, neg), expected)
    assert float(mmrec_bpr_loss(pos, neg)) < 12.0  # log(1e-10) caps the far-wrong pair (logsigmoid: 40)


def _batch():
    g = torch.Generator().manual_seed(3)
    return (torch.randint(0, U, (9,), generator=g), torch.randint(0, I, (9,), generator=g),
            torch.randint(0, I, (9,), generator=g))


def test_bpr_loss_and_initialisation_follow_mmrec():
    torch.manual_seed(0)
    model = BPR(U, I, d=8, reg_weight=0.3)
    users, pos, neg = _batch()
    p, qp, qn = model.user_embedding(users), model.item_embedding(pos), model.item_embedding(neg)
    expected = mmrec_bpr_loss((p * qp).sum(-1), (p * qn).sum(-1)) + 0.3 * _mmrec_emb_loss(p, qp, qn)
    torch.testing.assert_close(model.loss(users, pos, neg), expected)
    # xavier_normal_: std = sqrt(2 / (fan_in + fan_out)); xavier_uniform_ would give the same std too,
    # so check the shape of the distribution: a normal has values beyond the uniform's bound
    big = BPR(2000, 2000, d=64).user_embedding.weight.detach()
    bound = (6 / (2000 + 64)) ** 0.5
    assert float(big.abs().max()) > bound


def test_lightgcn_regularises_ego_embeddings_with_emb_loss():
    rng = np.random.default_rng(0)
    r = sp.random(U, I, density=0.2, random_state=rng, format="csr")
    r.data[:] = 1
    torch.manual_seed(0)
    model = LightGCN(r, U, I, d=8, layers=2, reg_weight=0.5)
    users, pos, neg = _batch()
    user_out, item_out = model.propagated()
    e_u = user_out[users]
    expected = mmrec_bpr_loss((e_u * item_out[pos]).sum(-1), (e_u * item_out[neg]).sum(-1)) + 0.5 * _mmrec_emb_loss(
        model.user_embedding(users), model.item_embedding(pos), model.item_embedding(neg))
    torch.testing.assert_close(model.loss(users, pos, neg), expected)


def test_vbpr_reads_text_then_image_and_follows_mmrec():
    g = torch.Generator().manual_seed(1)
    text, image = torch.randn(I, 6, generator=g), torch.randn(I, 10, generator=g)
    model = VBPR({"image": image, "text": text}, n_users=U, n_items=I, d=4, reg_weight=0.2)
    torch.testing.assert_close(model.item_content, torch.cat([text, image], -1))  # MMRec: cat(t_feat, v_feat)
    assert model.item_linear.in_features == 16 and float(model.item_linear.bias.detach().abs().sum()) == 0.0
    users, pos, neg = _batch()
    items = torch.cat([model.item_embedding, model.item_content @ model.item_linear.weight.T + model.item_linear.bias], -1)
    p, hp, hn = model.user_embedding[users], items[pos], items[neg]
    expected = mmrec_bpr_loss((p * hp).sum(-1), (p * hn).sum(-1)) + 0.2 * _mmrec_emb_loss(p, hp, hn)
    torch.testing.assert_close(model.loss(users, pos, neg), expected)
    model.prepare_eval()
    torch.testing.assert_close(model.full_scores(users), model.user_embedding[users] @ items.T)
    only_text = VBPR({"text": text}, n_users=U, n_items=I, d=4, modalities=["text"])
    assert only_text.item_linear.in_features == 6


def test_vbpr_missing_modality_names_it():
    with pytest.raises(ValueError, match="'image'"):
        VBPR({"text": torch.randn(I, 3)}, n_users=U, n_items=I)


def test_knn_indices_match_dense_topk_and_edge_propagate_matches_dense_product():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(37, 6, generator=g)
    rows, cols = knn_indices(feats, 5, chunk_size=8)  # several chunks
    unit = feats / feats.norm(dim=-1, keepdim=True)
    dense_top = (unit @ unit.T).topk(5, dim=-1).indices
    assert torch.equal(cols.view(37, 5).sort(-1).values, dense_top.sort(-1).values)
    assert torch.equal(rows, torch.arange(37).repeat_interleave(5))
    values = torch.rand(rows.numel(), generator=g)
    x = torch.randn(37, 3, generator=g)
    dense = torch.zeros(37, 37).index_put_((rows, cols), values, accumulate=True)
    torch.testing.assert_close(edge_propagate(rows, cols, values, x), dense @ x)
