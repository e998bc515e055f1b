"""GUME against a dense re-statement of its authors' code (github.com/NanGongNingYi/GUME, src/models/gume.py)
on a tiny case: the graphs, the forward pass, every loss term; the noisy views; determinism for a seed;
training through train.py on a generated MMRec-format folder (early stopping, metrics.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from interaction_fixtures import random_interactions

from mllmrec.models import GUME
from mllmrec.models.gume import (
    agreement_edges,
    in_batch_infonce,
    moment_alignment,
    perturb,
    similarity_knn_graph,
)
from mllmrec.models.ui_graph import bipartite_edges
from mllmrec.train.task import train

U, I, K = 25, 18, 4  # noqa: E741  (users, items, kNN size)


def _interactions(seed: int = 0) -> sp.csr_matrix:
    return random_interactions(U, I, seed)


def _modalities(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a shared factor, so the two modalities' neighbour lists overlap (agreement edges exist)
    base = torch.randn(I, 3, generator=g)
    return {"image": base @ torch.randn(3, 9, generator=g) + 0.3 * torch.randn(I, 9, generator=g),
            "text": base @ torch.randn(3, 5, generator=g) + 0.3 * torch.randn(I, 5, generator=g)}


def _model(**kwargs) -> GUME:
    torch.manual_seed(0)
    return GUME(_modalities(), _interactions(), U, I, d=6, knn_k=K, **kwargs)


# ------------------------------------------------------------------ dense restatement of the authors' code
def _build_sim(x):
    n = x / x.norm(dim=-1, keepdim=True)
    return n @ n.T


def _knn_sym(sim, k):
    """build_knn_normalized_graph(sim, k, norm_type='sym'), dense: top-k values, D^-1/2 S D^-1/2 (row sums)."""
    val, ind = sim.topk(k, dim=-1)
    s = torch.zeros_like(sim).scatter_(-1, ind, val)
    d = s.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * s * d[None, :]


def _find_inter(image_graph, text_graph):
    """find_inter + add_edge: per item the neighbours in both graphs, itself excluded (python sets)."""
    b = torch.zeros(I, I)
    for i in range(I):
        common = set(image_graph[i].nonzero().ravel().tolist()) & set(text_graph[i].nonzero().ravel().tolist())
        for j in common - {i}:
            b[i, j] = 1.0
    return b


def _enhanced_norm(r, b):
    """get_adj_mat: A = [[0, R], [R^T, B]], D^-1/2 A D^-1/2 with D the row sums."""
    a = torch.zeros(U + I, U + I)
    a[:U, U:] = torch.from_numpy(r.toarray()).float()
    a[U:, :U] = a[:U, U:].T
    a[U:, U:] = b
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * a * d[None, :]


def _conv_ui(adj, users, items, layers):
    ego = torch.cat([users, items])
    out = [ego]
    for _ in range(layers):
        ego = adj @ ego
        out.append(ego)
    return torch.stack(out, 1).mean(1)


def _dense_forward(model: GUME, graphs: dict, adj: torch.Tensor, layers_ii: int, layers_ui: int):
    """The authors' forward(), line by line, with dense matrices and the model's parameters."""
    r_hat = adj[:U, U:]
    item_id, user_id = model.item_embedding.weight, model.user_embedding.weight
    explicit, extended = {}, {}
    for name in ("image", "text"):
        lin1, lin2, _ = model.feature_gates[name]
        x = item_id * torch.sigmoid(F.linear(F.linear(model.feature_tables[name], lin1.weight, lin1.bias),
                                             lin2.weight, lin2.bias))
        for _ in range(layers_ii):
            x = graphs[name] @ x
        explicit[name] = torch.cat([r_hat @ x, x])
        extended[name] = _conv_ui(adj, model.extended_users[name].weight, x, layers_ui)
    extended_id = _conv_ui(adj, user_id, item_id, layers_ui)
    lin_a, _, lin_b = model.separate_coarse
    score = {n: F.linear(torch.tanh(F.linear(explicit[n], lin_a.weight, lin_a.bias)), lin_b.weight) for n in explicit}
    w = torch.softmax(torch.cat([score["image"], score["text"]], -1), -1)
    coarse = w[:, :1] * explicit["image"] + w[:, 1:] * explicit["text"]
    fine = {}
    for n in explicit:
        lin, _ = model.behavior_gates[n]
        fine[n] = torch.sigmoid(F.linear(extended_id, lin.weight, lin.bias)) * (explicit[n] - coarse)
    integration = (fine["image"] + fine["text"] + coarse) / 3
    return {"final": extended_id + integration, "integration": integration, "extended_id": extended_id,
            "extended_modal": (extended["image"] + extended["text"]) / 2,
            "explicit": (explicit["image"], explicit["text"])}


def _authors_infonce(v1, v2, t):
    v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
    pos = torch.exp((v1 * v2).sum(-1) / t)
    total = torch.exp(v1 @ v2.T / t).sum(1)
    return -torch.log(pos / total).mean()


def _own_dense_graphs():
    feats = _modalities()
    graphs = {n: _knn_sym(_build_sim(f), K) for n, f in feats.items()}
    return graphs, _enhanced_norm(_interactions(), _find_inter(graphs["image"], graphs["text"]))


# ------------------------------------------------------------------ graphs
def test_modality_graph_is_the_similarity_valued_symmetric_knn():
    feats = _modalities()
    for f in feats.values():
        torch.testing.assert_close(similarity_knn_graph(f, K).to_dense(), _knn_sym(_build_sim(f), K))


def test_agreement_edges_and_enhanced_graph_match_the_authors_construction():
    graphs, adj = _own_dense_graphs()
    rows, cols = agreement_edges(similarity_knn_graph(_modalities()["image"], K),
                                 similarity_knn_graph(_modalities()["text"], K))
    expected = _find_inter(graphs["image"], graphs["text"])
    assert expected.sum() > 0, "the toy case must have agreement edges"
    got = torch.zeros(I, I).index_put_((rows, cols), torch.ones(rows.numel()))
    torch.testing.assert_close(got, expected)
    model = _model()
    assert model.n_agreement_edges == int(expected.sum())
    torch.testing.assert_close(model.ui_graph.to_dense(), adj)
    torch.testing.assert_close(model.user_item.to_dense(), adj[:U, U:])
    for name in ("image", "text"):
        torch.testing.assert_close(model.item_graphs[name].to_dense(), graphs[name])


# ------------------------------------------------------------------ forward and loss
@pytest.mark.parametrize("mm_layers, ui_layers", [(2, 3), (1, 1), (0, 2)])
def test_forward_matches_the_dense_restatement(mm_layers, ui_layers):
    model = _model(mm_layers=mm_layers, ui_layers=ui_layers)
    graphs, adj = _own_dense_graphs()
    out = model.forward()
    expected = _dense_forward(model, graphs, adj, mm_layers, ui_layers)
    for key in ("final", "integration", "extended_id", "extended_modal"):
        assert getattr(out, key).shape == (U + I, 6)
        torch.testing.assert_close(getattr(out, key), expected[key], msg=key)
    torch.testing.assert_close(out.explicit[0], expected["explicit"][0])
    torch.testing.assert_close(out.explicit[1], expected["explicit"][1])


def test_loss_terms_match_the_authors_formulas():
    # noise_scale 0: the noisy views equal the embeddings, so every term is deterministic
    weights = dict(bm_weight=0.3, bm_temp=0.4, um_weight=0.2, um_temp=0.1, vt_weight=0.5,
                   reg_weight_1=1e-2, reg_weight_2=0.1, reg_batch_size=16)
    model = _model(noise_scale=0.0, **weights)
    users, items = bipartite_edges(_interactions())
    users, pos, neg = users[:12], items[:12], items.flip(0)[:12]
    terms = model.loss_terms(users, pos, neg)
    graphs, adj = _own_dense_graphs()
    e = _dense_forward(model, graphs, adj, 2, 3)
    fu, fi = e["final"][:U], e["final"][U:]
    u, p, n = fu[users], fi[pos], fi[neg]
    sq = lambda x: 0.5 * (x ** 2).sum()  # noqa: E731  (the authors' sq_sum)
    zu, zi, hu, hi = e["integration"][:U], e["integration"][U:], e["extended_id"][:U], e["extended_id"][U:]
    gu, gi = e["extended_modal"][:U], e["extended_modal"][U:]
    ei, et = e["explicit"]
    expected = {
        "bpr": -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean(),
        "reg_1": 1e-2 * (sq(u) + sq(p) + sq(n)) / 16,
        "vt": 0.5 * (torch.abs(torch.var(ei) - torch.var(et)) + torch.abs(torch.mean(ei) - torch.mean(et))),
        "bm": 0.3 * (_authors_infonce(zu[users], hu[users], 0.4) + _authors_infonce(zi[pos], hi[pos], 0.4)),
        "um": 0.2 * (_authors_infonce(gu[users], zu[users], 0.1) + _authors_infonce(zu[users], zu[users], 0.1)
                     + _authors_infonce(gu[users], gu[users], 0.1)),
        "reg_2": 0.1 * sq(gi[pos]) / 16,
    }
    assert set(terms) == set(expected)
    for key in expected:
        torch.testing.assert_close(terms[key], expected[key], msg=key)
    torch.testing.assert_close(model.loss(users, pos, neg), sum(expected.values()))


def test_pieces_against_plain_formulas():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(in_batch_infonce(a, b, 0.2), _authors_infonce(a, b, 0.2))
    an, bn = a.numpy().astype(np.float64), (2 * b + 1).numpy().astype(np.float64)
    expected = abs(an.var(ddof=1) - bn.var(ddof=1)) + abs(an.mean() - bn.mean())
    assert moment_alignment(a, 2 * b + 1).item() == pytest.approx(expected, rel=1e-5)


def test_perturbation_moves_every_row_by_the_scale_away_from_zero():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    noisy = perturb(x, 0.1)
    step = noisy - x
    torch.testing.assert_close(step.norm(dim=1), torch.full((50,), 0.1))
    assert bool(((step * x.sign()) >= 0).all())  # |x| grows: the noise follows each entry's sign
    assert not torch.equal(perturb(x, 0.1), noisy)  # fresh noise per view


def test_duplicate_users_share_their_noise():
    model = _model(noise_scale=0.5)
    emb = torch.randn(U, 6)
    users = torch.tensor([3, 3, 7])
    torch.manual_seed(0)
    got = model.noisy_infonce(users, emb)
    torch.manual_seed(0)
    rows = emb[torch.tensor([3, 7])]
    v1, v2 = perturb(rows, 0.5)[torch.tensor([0, 0, 1])], perturb(rows, 0.5)[torch.tensor([0, 0, 1])]
    torch.testing.assert_close(got, _authors_infonce(v1, v2, model.um_temp))


def test_a_training_step_reaches_every_parameter_and_scores_are_dot_products():
    model = _model()
    users, items = bipartite_edges(_interactions())
    model.loss(users[:10], items[:10], items.flip(0)[:10]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        final = model.forward().final
    torch.testing.assert_close(model.full_scores(torch.tensor([0, 4])), final[[0, 4]] @ final[U:].T)
    user_repr, item_repr = model.representations()
    assert user_repr.shape == (U, 6) and item_repr.shape == (I, 6)


def test_same_seed_same_loss_other_seed_other_loss():
    users, items = bipartite_edges(_interactions())
    batch = users[:10], items[:10], items.flip(0)[:10]

    def loss_for(seed):
        torch.manual_seed(seed)
        model = GUME(_modalities(), _interactions(), U, I, d=6, knn_k=K)
        return model.loss(*batch)

    assert loss_for(1).item() == loss_for(1).item()
    assert loss_for(1).item() != loss_for(2).item()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="two modalities"):
        _model(modalities=["text"])
    with pytest.raises(ValueError, match="model.um_temp"):
        _model(um_temp=0.0)
    with pytest.raises(ValueError, match="'image'"):
        GUME({"text": torch.randn(I, 4)}, _interactions(), U, I)


# ------------------------------------------------------------------ through train.py
def _mmrec_folder(folder, n_users=60, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    taste, kind = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    rows = []
    for u in range(n_users):
        logits = taste[u] @ kind.T
        p = np.exp(logits - logits.max())
        items = rng.choice(n_items, size=8, replace=False, p=p / p.sum())
        rows += [(u, int(i), 5.0, 1_000 + k, lab) for k, (i, lab) in enumerate(zip(items, [0] * 6 + [1, 2]))]
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        folder / "toy.inter", sep="\t", index=False)
    np.save(folder / "text_feat.npy", (kind @ rng.normal(size=(4, 12)) + 0.3 * rng.normal(size=(n_items, 12))).astype(np.float32))
    np.save(folder / "image_feat.npy", (kind @ rng.normal(size=(4, 20)) + rng.normal(size=(n_items, 20))).astype(np.float32))
    np.save(folder / "image_text_feat.npy", rng.normal(size=(n_items, 16)).astype(np.float32))
    return folder


def _args(folder):
    return ("dataset=mmrec", f"dataset.root={folder}", "dataset.name=toy", "dataset.user_features=null")


def test_trains_through_train_py_with_metrics_and_early_stopping(train_cfg, tmp_path):
    folder = _mmrec_folder(tmp_path / "toy")
    summary, objs = train(train_cfg(*_args(folder), "experiment=baseline_gume", "trainer.max_epochs=3"))
    assert isinstance(objs["model"], GUME) and objs["model"].hparams["item_graph"] == "own"
    assert not objs["datamodule"].has_item_graph  # own graphs: no refined graph built
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(written["test"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert len(written["history"]) == 3
    # lr ~0: validation never improves after epoch 0, so early stopping ends the run after patience + 1
    stopped, _ = train(train_cfg(*_args(folder), "experiment=baseline_gume", "model.optimizer.lr=1e-12",
                                 "callbacks.early_stopping.patience=2", "trainer.max_epochs=30"))
    assert stopped["epochs_run"] == 3 and stopped["best_epoch"] == 0


def test_same_seed_trains_to_the_same_metrics(train_cfg, tmp_path):
    folder = _mmrec_folder(tmp_path / "toy")
    first, _ = train(train_cfg(*_args(folder), "model=gume", "seed=7", "trainer.max_epochs=2"))
    second, _ = train(train_cfg(*_args(folder), "model=gume", "seed=7", "trainer.max_epochs=2"))
    other, _ = train(train_cfg(*_args(folder), "model=gume", "seed=8", "trainer.max_epochs=2"))
    assert first["history"] == second["history"] and first["test"] == second["test"]
    assert first["history"] != other["history"]


# ------------------------------------------------------------------ +GR
def test_refined_graph_replaces_both_modality_graphs_and_gives_the_item_edges():
    from mllmrec.graph import normalize_adjacency, refined_item_graph

    r = _interactions()
    refined = refined_item_graph(_modalities()["text"], r, k_s=3, alpha=0.0, k_c=2)
    torch.manual_seed(0)
    model = GUME(_modalities(), r, U, I, item_graph=refined, d=6, knn_k=K)
    assert model.hparams["item_graph"] == "refined"
    expected = normalize_adjacency(refined).to_dense()
    for name in ("image", "text"):
        torch.testing.assert_close(model.item_graphs[name].to_dense(), expected)
    # the enhanced graph's item block: GUME's agreement rule on (S*, S*) = S*'s off-diagonal edges
    b = (refined.to_dense() != 0).float()
    b.fill_diagonal_(0.0)
    assert b.sum() > 0 and model.n_agreement_edges == int(b.sum())
    torch.testing.assert_close(model.ui_graph.to_dense(), _enhanced_norm(r, b))


def test_learning_rate_decays_as_the_authors_scheduler():
    # learning_rate_scheduler [0.96, 50]: lr_t = lr_0 * 0.96 ** (t / 50), stepped once per epoch
    setup = _model(lr_decay=0.9, lr_decay_epochs=4).configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert setup["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3 * 0.9 ** (t / 4) for t in range(6)])
