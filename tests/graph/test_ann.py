"""mllmrec.graph.ann: the approximate semantic kNN (graph.knn=faiss) against the exact search."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
import torch

from mllmrec.errors import ConfigError
from mllmrec.graph import GraphSpec, ann, build_refined_item_graph, knn
from mllmrec.graph.ann import AnnParams, approximate_semantic_knn

from .references import assert_graph_format, dense_cosine, random_features, random_interactions

CHUNK = 256


def clustered_features(n: int, d: int, clusters: int, seed: int) -> torch.Tensor:
    """Items around ``clusters`` random centres (noise as large as the centre): kNN lists are real
    neighbourhoods that an IVF search can miss at cluster borders."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=generator)
    labels = torch.randint(clusters, (n,), generator=generator)
    return centres[labels] + torch.randn(n, d, generator=generator)


def neighbour_sets(found: knn.Knn, k: int) -> list[set[int]]:
    return [set(row) for row in found.cols.view(-1, k).tolist()]


def recall(approximate: knn.Knn, exact: knn.Knn, k: int) -> float:
    """Mean over items of |approximate top-k & exact top-k| / k (the item itself included in both)."""
    pairs = zip(neighbour_sets(approximate, k), neighbour_sets(exact, k))
    return float(np.mean([len(a & b) / k for a, b in pairs]))


@pytest.fixture(scope="module")
def clustered():
    return clustered_features(3000, 24, 60, seed=5)


def uneven_clusters(n: int, d: int, seed: int) -> torch.Tensor:
    """The benchmark's kind of features (bench/graph.py), hard for IVF: ~n/40 centres with Pareto-sized
    clusters and a noise scale of 0.5-1.5 per item. Inside a big cluster the most similar items are its
    low-noise members, which k-means spreads over several lists: a scan of the item's own probed lists
    misses some, and the neighbours' lists (probed from elsewhere) hold them."""
    rng = np.random.default_rng(seed)
    clusters = n // 40
    centres = rng.standard_normal((clusters, d))
    weight = rng.pareto(1.5, clusters) + 1.0
    labels = rng.choice(clusters, size=n, p=weight / weight.sum())
    scale = rng.uniform(0.5, 1.5, size=(n, 1))
    return torch.from_numpy((centres[labels] + scale * rng.standard_normal((n, d))).astype(np.float32))


@pytest.fixture(scope="module")
def uneven():
    return uneven_clusters(3000, 64, seed=0)


def reference_refinement(features: torch.Tensor, cols: np.ndarray, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """NN-descent's local join written out row by row in float64. Each pass, from the previous lists:
    ``N(i)`` = row ``i`` without ``i``; ``R(i)`` = the ``k - 1`` most similar items whose row holds
    ``i`` (cosine descending, id ascending); the new row ``i`` is ``[i] + the k - 1 best of
    G(i) ∪ N(G(i)) minus i`` with ``G(i) = N(i) ∪ R(i)``. Returns the lists and their cosines."""
    x = features.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, k = cols.shape
    for _ in range(passes):
        listed_by: list[list[int]] = [[] for _ in range(n)]
        for j, row in enumerate(cols):
            for i in row[1:]:
                listed_by[i].append(j)
        new = np.empty_like(cols)
        for i, row in enumerate(cols):
            reverse = sorted(listed_by[i], key=lambda j: (-float(x[i] @ x[j]), j))[: k - 1]
            near = set(row[1:].tolist()) | set(reverse)
            candidates = (near | {c for j in near for c in cols[j].tolist()}) - {i}
            ranked = sorted(candidates, key=lambda j: (-float(x[i] @ x[j]), j))
            new[i] = [i, *ranked[: k - 1]]
        cols = new
    return cols, np.einsum("id,ijd->ij", x, x[cols])


def test_recall_against_the_exact_search_on_clustered_features(clustered):
    exact = knn.semantic_knn(clustered, 10, CHUNK)
    approximate = approximate_semantic_knn(clustered, 10, AnnParams(), CHUNK)  # the defaults
    few_probes = approximate_semantic_knn(clustered, 10, AnnParams(probes=1), CHUNK)
    assert recall(approximate, exact, 10) >= 0.97
    # the search is really approximate (one probed list misses neighbours) and probes buy recall
    assert recall(few_probes, exact, 10) < recall(approximate, exact, 10)


def test_refinement_finds_neighbours_the_list_scan_missed(uneven):
    exact = knn.semantic_knn(uneven, 10, CHUNK)
    plain = approximate_semantic_knn(uneven, 10, AnnParams(probes=2, refine=0), CHUNK)
    refined = approximate_semantic_knn(uneven, 10, AnnParams(probes=2, refine=2), CHUNK)
    assert recall(plain, exact, 10) < 0.9  # the case is hard for the list scan alone
    assert recall(refined, exact, 10) >= recall(plain, exact, 10) + 0.04
    # and no row gets worse: its old neighbours stay candidates (sum of cosines, self excluded)
    before = plain.scores.view(-1, 10)[:, 1:].sum(dim=1)
    after = refined.scores.view(-1, 10)[:, 1:].sum(dim=1)
    assert torch.all(after >= before - 1e-5) and torch.any(after > before + 1e-3)


def test_refinement_passes_equal_a_row_by_row_reference(uneven):
    """Two passes (the second recomputes only rows whose candidates changed) against the reference
    that recomputes every row from the plain search's lists, reverse neighbours included."""
    features = uneven[:1500]
    start = approximate_semantic_knn(features, 8, AnnParams(probes=2, refine=0), CHUNK).cols.view(-1, 8).numpy()
    found = approximate_semantic_knn(features, 8, AnnParams(probes=2, refine=2), CHUNK)
    expected_cols, expected_scores = reference_refinement(features, start, 2)
    cols, scores = found.cols.view(-1, 8).numpy(), found.scores.view(-1, 8).numpy()
    differ = np.flatnonzero((cols != expected_cols).any(axis=1))
    assert differ.size <= 2  # float32 vs float64 rounding may swap a near-tie, nothing more
    np.testing.assert_allclose(scores[differ].sum(axis=1), expected_scores[differ].sum(axis=1), atol=1e-5)
    same = np.setdiff1d(np.arange(1500), differ)
    np.testing.assert_allclose(scores[same], expected_scores[same], atol=1e-5)
    assert (cols != start).any(axis=1).sum() > 50  # the passes did change rows


def test_probing_every_list_finds_the_exact_neighbours(clustered):
    features = clustered[:600]
    params = AnnParams(lists=15, probes=15)
    exact = knn.semantic_knn(features, 7, CHUNK)
    approximate = approximate_semantic_knn(features, 7, params, CHUNK)
    assert torch.equal(approximate.rows, exact.rows)
    assert torch.equal(approximate.cols, exact.cols)
    torch.testing.assert_close(approximate.scores, exact.scores, rtol=0, atol=1e-5)


def test_same_seed_same_graph(clustered):
    params = AnnParams(probes=4, seed=3, refine=2)
    first = approximate_semantic_knn(clustered, 10, params, CHUNK)
    second = approximate_semantic_knn(clustered.clone(), 10, params, CHUNK)
    assert torch.equal(first.cols, second.cols) and torch.equal(first.scores, second.scores)
    other_seed = approximate_semantic_knn(clustered, 10, AnnParams(probes=4, seed=4, refine=2), CHUNK)
    assert not torch.equal(first.cols, other_seed.cols)  # the seed is really used


def test_every_item_ranks_itself_first_with_cosine_one(clustered):
    found = approximate_semantic_knn(clustered, 10, AnnParams(probes=2), CHUNK)
    cols, scores = found.cols.view(-1, 10), found.scores.view(-1, 10)
    assert torch.equal(cols[:, 0], torch.arange(3000))
    assert torch.all(scores[:, 0] == 1.0)
    # and nowhere else in its row (no duplicate neighbour either)
    assert all(len(set(row)) == 10 for row in cols.tolist())


def test_scores_are_exact_cosines_and_alpha_applies_to_them(clustered, monkeypatch):
    """The index's own scores are distorted here: the kNN values (and so the alpha threshold) must
    still be the exact cosines of the returned pairs."""
    real_knn = faiss.knn

    def distorted(xq, xb, k, metric=faiss.METRIC_L2, metric_arg=0.0):
        scores, ids = real_knn(xq, xb, k, metric=metric, metric_arg=metric_arg)
        return scores * 0.5 - 0.3, ids  # same order, wrong values

    monkeypatch.setattr(faiss, "knn", distorted)
    features = clustered[:800]
    found = approximate_semantic_knn(features, 6, AnnParams(probes=4), CHUNK)
    cosine, _ = dense_cosine(features)
    rows, cols = found.rows.numpy(), found.cols.numpy()
    expected = np.where(rows == cols, 1.0, cosine[rows, cols])
    np.testing.assert_allclose(found.scores.numpy(), expected, rtol=0, atol=1e-5)

    alpha = float(np.quantile(expected[rows != cols], 0.5))
    graph = build_refined_item_graph(features, random_interactions(50, 800, 0.01, seed=1), 6, alpha, 0,
                                     knn_method="faiss", ann_params=AnnParams(probes=4)).graph
    assert_graph_format(graph, 800)
    kept = {(int(r), int(c)) for r, c, s in zip(rows, cols, expected) if s >= alpha}
    assert set(map(tuple, graph.indices().T.tolist())) == kept
    assert graph.values().eq(1.0).all()


def test_zero_feature_rows_get_the_exact_row(clustered):
    features = clustered[:500].clone()
    features[[3, 200]] = 0.0
    exact = knn.semantic_knn(features, 5, CHUNK)
    approximate = approximate_semantic_knn(features, 5, AnnParams(probes=2), CHUNK)
    for item in (3, 200):
        rows = slice(item * 5, item * 5 + 5)
        assert torch.equal(approximate.cols[rows], exact.cols[rows])  # the 5 lowest ids, cosine 0
        assert torch.equal(approximate.scores[rows], exact.scores[rows])


def test_k_at_least_the_number_of_items_links_everything():
    features = random_features(6, 4, seed=2)
    found = approximate_semantic_knn(features, 10, AnnParams(), CHUNK)
    assert found.cols.numel() == 36 and set(zip(found.rows.tolist(), found.cols.tolist())) == {
        (a, b) for a in range(6) for b in range(6)
    }


# ----------------------------------------------------------------------------------------------------
# method choice, cache key, config


@pytest.fixture
def searches(monkeypatch):
    """Records which semantic search every graph build ran."""
    calls = []
    real_exact, real_approximate = knn.semantic_knn, ann.approximate_semantic_knn

    def exact(*args, **kwargs):
        calls.append("exact")
        return real_exact(*args, **kwargs)

    def approximate(*args, **kwargs):
        calls.append("faiss")
        return real_approximate(*args, **kwargs)

    monkeypatch.setattr(knn, "semantic_knn", exact)
    monkeypatch.setattr(ann, "approximate_semantic_knn", approximate)
    return calls


def test_auto_picks_the_approximate_search_from_min_items_on(searches):
    features, interactions = random_features(200, 8, seed=3), random_interactions(30, 200, 0.05, seed=3)
    build_refined_item_graph(features, interactions, 4, 0.1, 2, knn_method="auto",
                             ann_params=AnnParams(min_items=201))
    built = build_refined_item_graph(features, interactions, 4, 0.1, 2, knn_method="auto",
                                     ann_params=AnnParams(min_items=200))
    assert searches == ["exact", "faiss"]
    assert built.statistics.knn == "faiss"


def test_ann_parameters_are_part_of_the_cache_key(tmp_path, searches):
    features, interactions = random_features(300, 8, seed=4), random_interactions(40, 300, 0.05, seed=4)

    def build(method: str, **params) -> None:
        build_refined_item_graph(features, interactions, 4, 0.1, 2, tmp_path, knn_method=method,
                                 ann_params=AnnParams(**params))

    build("faiss", probes=2)
    build("faiss", probes=2, min_items=5)  # min_items only steers auto: same graph, a hit
    assert searches == ["faiss"]
    for changed in ({"probes": 3}, {"probes": 2, "lists": 5}, {"probes": 2, "seed": 1}, {"probes": 2, "refine": 0},
                    {"probes": 2, "refine": 2}):
        before = len(searches)
        build("faiss", **changed)
        assert searches[before:] == ["faiss"], changed
    build("exact")
    build("auto", min_items=10_000)  # auto resolves to exact: the exact entry, a hit
    build("auto", min_items=300, probes=2)  # auto resolves to faiss with the first parameters: a hit
    assert searches == ["faiss"] * 6 + ["exact"]
    assert len(list(tmp_path.glob("*.pt"))) == 7


def test_a_cached_approximate_graph_equals_a_fresh_build(tmp_path):
    features, interactions = random_features(300, 8, seed=6), random_interactions(40, 300, 0.05, seed=6)
    params = AnnParams(probes=3)
    first = build_refined_item_graph(features, interactions, 5, 0.0, 2, tmp_path, knn_method="faiss", ann_params=params)
    hit = build_refined_item_graph(features, interactions, 5, 0.0, 2, tmp_path, knn_method="faiss", ann_params=params)
    assert torch.equal(first.graph.indices(), hit.graph.indices())
    assert hit.statistics.knn == "faiss" and hit.statistics.counts() == first.statistics.counts()


def test_graph_spec_takes_the_ann_settings_as_a_mapping():
    spec = GraphSpec(knn="faiss", ann={"probes": 4, "lists": 50})
    assert spec.ann == AnnParams(lists=50, probes=4)
    assert GraphSpec().knn == "auto" and GraphSpec().ann == AnnParams()
    with pytest.raises(ConfigError, match="graph.ann.probes must be an integer >= 1, got 0"):
        GraphSpec(ann={"probes": 0})
    with pytest.raises(ConfigError, match="graph.ann.refine must be an integer >= 0, got -1"):
        GraphSpec(ann={"refine": -1})
    with pytest.raises(ConfigError, match="graph.ann.prob is not a setting"):
        GraphSpec(ann={"prob": 3})
    with pytest.raises(ConfigError, match="graph.knn='hnsw': knn_method must be one of exact, faiss, auto"):
        GraphSpec(knn="hnsw")


def test_without_faiss_the_error_says_how_to_install_it(monkeypatch, searches):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mllmrec\[ann\]'"):
        GraphSpec(knn="faiss")
    features, interactions = random_features(50, 4, seed=1), random_interactions(10, 50, 0.1, seed=1)
    with pytest.raises(ImportError, match="or set graph.knn=exact") as err:
        build_refined_item_graph(features, interactions, 3, 0.1, 1, knn_method="auto",
                                 ann_params=AnnParams(min_items=10))
    assert isinstance(err.value, ConfigError)  # a user error: train.py prints it and exits 2
    assert searches == []  # refused before any search
    GraphSpec(knn="auto")  # auto may still resolve to exact: no error before the size is known


def test_rows_whose_probed_lists_hold_too_few_items_are_searched_exactly(monkeypatch):
    """50 lists of ~4 items and one probe: most rows find fewer than K_s candidates. Those rows must be
    the exact search's (no padding id -1, no missing neighbour)."""
    features = random_features(200, 8, seed=9)
    redone = []
    real_rows = knn._semantic_rows

    def recording(unit, nonzero, items, *args):
        redone.append(items.clone())
        return real_rows(unit, nonzero, items, *args)

    monkeypatch.setattr(knn, "_semantic_rows", recording)
    found = approximate_semantic_knn(features, 6, AnnParams(lists=50, probes=1), CHUNK)
    monkeypatch.setattr(knn, "_semantic_rows", real_rows)
    exact = knn.semantic_knn(features, 6, CHUNK)
    assert len(redone) == 1 and 0 < redone[0].numel() < 200
    rows = (redone[0].unsqueeze(1) * 6 + torch.arange(6)).reshape(-1)
    assert torch.equal(found.cols[rows], exact.cols[rows])
    assert found.cols.min() >= 0 and all(len(set(r)) == 6 for r in found.cols.view(-1, 6).tolist())
