"""mllmrec.graph.refined: S* = S~ + C~ (Eq. 10), the statistics of its build and its cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllmrec.graph import (
    GraphBuildStatistics,
    build_refined_item_graph,
    cached_refined_item_graph,
    knn,
    refined,
    refined_item_graph,
    semantic_graph,
)

from .references import (
    FEATURES,
    INTERACTIONS,
    assert_graph_format,
    dense,
    random_features,
    random_interactions,
    reference_cooccurrence,
    reference_semantic,
)


@pytest.mark.parametrize(("n", "users", "k_s", "alpha", "k_c"), [(20, 30, 3, 0.2, 2), (45, 60, 6, -0.1, 5)])
def test_refined_item_graph_is_the_sum_of_both_directed_graphs(n, users, k_s, alpha, k_c):
    features = random_features(n, 6, seed=n)
    interactions = random_interactions(users, n, 0.1, seed=n)
    adj = refined_item_graph(features, interactions, k_s, alpha, k_c)
    expected = reference_semantic(features, k_s, alpha)[0] + reference_cooccurrence(interactions, k_c)
    assert_graph_format(adj, n)
    np.testing.assert_allclose(dense(adj), expected, rtol=1e-6)
    assert not np.array_equal(expected, expected.T)  # directed: nothing symmetrised


def test_refined_item_graph_without_cooccurrence_is_the_semantic_graph():
    features = random_features(25, 5, seed=14)
    interactions = random_interactions(30, 25, 0.2, seed=14)
    adj = refined_item_graph(features, interactions, k_s=4, alpha=0.1, k_c=0)
    semantic = semantic_graph(features, k_s=4, alpha=0.1)
    assert torch.equal(adj.indices(), semantic.indices()) and torch.equal(adj.values(), semantic.values())


# ----------------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def build_counter(monkeypatch):
    """Records the parameters of every semantic kNN search (each graph build starts with exactly one)."""
    calls = []
    real = knn.semantic_knn

    def counting(features, k_s, chunk_size):
        calls.append(k_s)
        return real(features, k_s, chunk_size)

    monkeypatch.setattr(knn, "semantic_knn", counting)
    return calls


def forbid_knn_search(monkeypatch) -> None:
    """Make both kNN searches raise: what runs afterwards must not search (e.g. a cache hit)."""

    def no_search(*args, **kwargs):
        raise AssertionError("a kNN search ran although the graph was cached")

    monkeypatch.setattr(knn, "semantic_knn", no_search)
    monkeypatch.setattr(knn, "cooccurrence_knn", no_search)


def same_graph(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())


def same_statistics(a: GraphBuildStatistics, b: GraphBuildStatistics) -> bool:
    return (a.counts() == b.counts() and (a.k_s, a.alpha, a.k_c) == (b.k_s, b.alpha, b.k_c)
            and a.knn_similarities.dtype == b.knn_similarities.dtype
            and np.array_equal(a.knn_similarities, b.knn_similarities))


def test_cache_hit_returns_the_same_graph_without_rebuilding(tmp_path, build_counter):
    features = random_features(30, 6, seed=21)
    interactions = random_interactions(40, 30, 0.15, seed=21)
    first = cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    second = cached_refined_item_graph(features.clone(), interactions.copy(), 4, 0.2, 3, tmp_path)
    assert len(build_counter) == 1
    assert_graph_format(second, 30)
    assert same_graph(first, second)
    direct = refined_item_graph(features, interactions, 4, 0.2, 3)
    assert same_graph(second, direct)
    assert len(list(tmp_path.glob("*.pt"))) == 1 and len(list(tmp_path.glob("*.pt.meta.json"))) == 1


def test_cache_rebuilds_when_an_input_or_the_code_version_changes(tmp_path, build_counter, monkeypatch):
    features = random_features(30, 6, seed=22)
    interactions = random_interactions(40, 30, 0.15, seed=22)
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    changed_features = features.clone()
    changed_features[5, 2] += 1e-3
    changed_interactions = interactions.tolil()
    changed_interactions[0, 0] = 1 - changed_interactions[0, 0]
    variants = [
        (changed_features, interactions, 4, 0.2, 3),
        (features, changed_interactions.tocsr(), 4, 0.2, 3),
        (features, interactions, 5, 0.2, 3),
        (features, interactions, 4, 0.3, 3),
        (features, interactions, 4, 0.2, 0),
    ]
    for f, r, k_s, alpha, k_c in variants:
        before = len(build_counter)
        graph_ = cached_refined_item_graph(f, r, k_s, alpha, k_c, tmp_path)
        assert len(build_counter) == before + 1
        direct = refined_item_graph(f, r, k_s, alpha, k_c)
        assert torch.equal(graph_.to_dense(), direct.to_dense())
    monkeypatch.setattr(refined, "GRAPH_CODE_VERSION", "a-different-graph-code")
    before = len(build_counter)
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    assert len(build_counter) == before + 1
    # and the entry built under this code version is now a hit
    cached_refined_item_graph(features, interactions, 4, 0.2, 3, tmp_path)
    assert len(build_counter) == before + 1


def test_a_cache_hit_reads_the_statistics_back_and_does_no_knn_search(tmp_path, monkeypatch):
    features = random_features(40, 6, seed=24)
    interactions = random_interactions(50, 40, 0.1, seed=24)
    built = build_refined_item_graph(features, interactions, 5, 0.15, 3, tmp_path)
    forbid_knn_search(monkeypatch)
    hit = build_refined_item_graph(features.clone(), interactions.copy(), 5, 0.15, 3, tmp_path)
    assert same_graph(hit.graph, built.graph)
    assert same_statistics(hit.statistics, built.statistics)
    assert hit.statistics.knn_similarities.dtype == np.float32
    # graph and statistics are one cache entry: one data file, one meta file
    assert len(list(tmp_path.glob("*.pt"))) == 1 and len(list(tmp_path.glob("*.pt.meta.json"))) == 1
    # a miss (other parameters) does search, so the forbidding above is effective
    with pytest.raises(AssertionError, match="kNN search ran"):
        build_refined_item_graph(features, interactions, 5, 0.25, 3, tmp_path)


def test_the_statistics_of_a_cached_build_equal_those_of_an_uncached_one(tmp_path):
    features = random_features(35, 5, seed=25)
    interactions = random_interactions(45, 35, 0.12, seed=25)
    uncached = build_refined_item_graph(features, interactions, 4, 0.1, 2)
    miss = build_refined_item_graph(features, interactions, 4, 0.1, 2, tmp_path)
    hit = build_refined_item_graph(features, interactions, 4, 0.1, 2, tmp_path)
    for other in (miss, hit):
        assert same_graph(other.graph, uncached.graph)
        assert same_statistics(other.statistics, uncached.statistics)


def test_the_cache_entry_is_written_atomically(tmp_path, monkeypatch):
    features = random_features(20, 4, seed=26)
    interactions = random_interactions(25, 20, 0.2, seed=26)

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(refined.torch, "save", crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        build_refined_item_graph(features, interactions, 3, 0.2, 2, tmp_path)
    assert list(tmp_path.glob("*.pt")) == [] and list(tmp_path.glob(".*tmp*")) == []
    monkeypatch.undo()
    built = build_refined_item_graph(features, interactions, 3, 0.2, 2, tmp_path)
    assert same_graph(built.graph, refined_item_graph(features, interactions, 3, 0.2, 2))


# ----------------------------------------------------------------------------------------------------
# statistics (a by-product of the build)


def statistics(features, interactions, k_s, alpha, k_c) -> dict:
    built = build_refined_item_graph(features, interactions, k_s, alpha, k_c)
    return {**built.statistics.counts(), "knn_similarities": built.statistics.knn_similarities}


def test_graph_statistics_count_every_refinement_step():
    n, k_s, alpha, k_c = 40, 6, 0.15, 4
    features = random_features(n, 6, seed=23)
    features[7] = 0.0  # no self-loop, empty semantic row (alpha > 0)
    interactions = random_interactions(50, n, 0.1, seed=23)
    semantic, knn_matrix = reference_semantic(features, k_s, alpha)
    cooccurrence = reference_cooccurrence(interactions, k_c)
    final = semantic + cooccurrence
    built = build_refined_item_graph(features, interactions, k_s, alpha, k_c)
    stats = {**built.statistics.counts(), "knn_similarities": built.statistics.knn_similarities}

    assert (built.statistics.k_s, built.statistics.alpha, built.statistics.k_c) == (k_s, alpha, k_c)
    assert stats["items"] == n
    assert stats["knn_edges"] == n * k_s == np.count_nonzero(~np.isnan(knn_matrix))
    assert stats["alpha_kept"] == np.count_nonzero(semantic)
    assert stats["alpha_pruned"] == n * k_s - np.count_nonzero(semantic) > 0
    assert stats["self_loops"] == n - 1 == np.count_nonzero(np.diag(final))
    assert stats["cooccurrence_edges"] == np.count_nonzero(cooccurrence)
    assert stats["overlap_edges"] == np.count_nonzero((semantic > 0) & (cooccurrence > 0)) > 0
    assert stats["final_edges"] == np.count_nonzero(final)
    out_degree = np.count_nonzero(final, axis=1)
    assert stats["out_degree_min"] == out_degree.min()
    assert stats["out_degree_max"] == out_degree.max()
    assert stats["out_degree_mean"] == pytest.approx(out_degree.mean())
    # Fig. 1b: similarities of the top-K_s edges, self-loops excluded, before pruning
    off_diagonal = ~np.isnan(knn_matrix) & ~np.eye(n, dtype=bool)
    assert stats["knn_similarities"].dtype == np.float32
    np.testing.assert_allclose(np.sort(stats["knn_similarities"]), np.sort(knn_matrix[off_diagonal]), atol=1e-6)
    # the statistics describe the graph this very build returned
    assert built.graph._nnz() == stats["final_edges"]


def test_graph_statistics_without_cooccurrence():
    stats = statistics(FEATURES, INTERACTIONS, 3, 0.2, 0)
    assert stats["cooccurrence_edges"] == 0 and stats["overlap_edges"] == 0
    assert stats["final_edges"] == stats["alpha_kept"]


def test_graph_statistics_with_k_larger_than_the_number_of_items():
    stats = statistics(FEATURES, INTERACTIONS, 50, -1.0, 50)
    assert stats["knn_edges"] == stats["alpha_kept"] == 100 and stats["alpha_pruned"] == 0
    assert stats["knn_similarities"].shape == (90,)
    assert stats["final_edges"] == 100 and stats["overlap_edges"] == stats["cooccurrence_edges"]
