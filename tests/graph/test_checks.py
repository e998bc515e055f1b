"""mllmrec.graph.checks: every public function rejects a bad argument with an error naming it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.graph import (
    SparseOperator,
    build_refined_item_graph,
    cooccurrence_graph,
    knn,
    normalize_adjacency,
    propagate,
    refined_item_graph,
    semantic_graph,
)
from mllmrec.graph.checks import check_args

from .references import (
    FEATURES,
    INTERACTIONS,
    assert_graph_format,
)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: semantic_graph(FEATURES, 0, 0.5), "k_s must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, -3, 0.5), "k_s must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, 2.5, 0.5), "k_s must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, True, 0.5), "k_s must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES, 3, 1.01), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, -1.5), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, float("nan")), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, "0.5"), r"alpha must be a real number in \[-1, 1\]"),
        (lambda: semantic_graph(FEATURES, 3, 0.5, chunk_size=0), "chunk_size must be an integer >= 1"),
        (lambda: semantic_graph(FEATURES[0], 3, 0.5), r"features must have shape \[I, d\]"),
        (lambda: semantic_graph(FEATURES[:, :0], 3, 0.5), r"features must have shape \[I, d\] with d >= 1"),
        (lambda: semantic_graph(FEATURES.numpy(), 3, 0.5), "features must be a dense torch.Tensor"),
        (lambda: semantic_graph(FEATURES.long(), 3, 0.5), "features must be a floating-point tensor"),
        (lambda: semantic_graph(FEATURES * float("nan"), 3, 0.5), "NaN or infinite"),
        (lambda: cooccurrence_graph(INTERACTIONS, -1), "k_c must be an integer >= 0"),
        (lambda: cooccurrence_graph(INTERACTIONS, 2.0), "k_c must be an integer >= 0"),
        (lambda: cooccurrence_graph(INTERACTIONS, 3, chunk_size=-1), "chunk_size must be an integer >= 1"),
        (lambda: cooccurrence_graph(INTERACTIONS.toarray(), 3), "interactions must be a scipy.sparse matrix"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 0, 0.5, 3), "k_s must be an integer >= 1"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 3, 2.0, 3), r"alpha must be a real number"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS, 3, 0.5, -1), "k_c must be an integer >= 0"),
        (lambda: refined_item_graph(FEATURES, INTERACTIONS[:, :9], 3, 0.5, 2), "9 item columns"),
        (lambda: normalize_adjacency(torch.eye(3)), "adj must be a torch sparse COO or CSR"),
        (lambda: normalize_adjacency(torch.ones(2, 3).to_sparse()), r"adj must be square"),
        (lambda: normalize_adjacency(-torch.eye(3).to_sparse()), "negative sums"),
        (lambda: propagate(torch.eye(3).to_sparse(), torch.ones(3, 2), -1), "layers must be an integer >= 0"),
        (lambda: propagate(torch.eye(3).to_sparse(), torch.ones(4, 2), 1), r"x must be a tensor \[I, d\]"),
        (lambda: propagate(torch.eye(3), torch.ones(3, 2), 1), "adj_norm must be a torch sparse"),
        (lambda: propagate(torch.eye(3).to_sparse(), torch.ones(3, 2), 1, reduce="max"), "reduce must be one of"),
        (lambda: propagate(SparseOperator(torch.eye(3).to_sparse()), torch.ones(4, 2), 1),
         r"x must be a tensor \[I, d\] with I = 3"),
    ],
)
def test_invalid_arguments_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_an_empty_catalogue_gives_an_empty_graph():
    adj = refined_item_graph(torch.zeros(0, 4), sp.csr_matrix((3, 0)), 3, 0.5, 2)
    assert_graph_format(adj, 0)
    assert propagate(normalize_adjacency(adj), torch.zeros(0, 4), 2).shape == (0, 4)


def test_boundary_arguments_are_accepted():
    assert semantic_graph(FEATURES, 1, -1.0)._nnz() == 10  # k = 1: only the self-loops
    assert semantic_graph(FEATURES, np.int64(2), np.float64(1.0))._nnz() == 10
    assert refined_item_graph(FEATURES, INTERACTIONS, 1, 1.0, 0)._nnz() == 10
    # k_c = 0 means "no co-occurrence graph" for both builders (one rule for k_c)
    assert cooccurrence_graph(INTERACTIONS, 0)._nnz() == 0
    assert cooccurrence_graph(INTERACTIONS, 0).shape == (10, 10)


def test_each_argument_has_one_rule_shared_by_every_builder():
    # the same bad k_s / alpha / k_c gives the same message from every function that takes it
    bad_k_s = (
        lambda: semantic_graph(FEATURES, 0, 0.5),
        lambda: refined_item_graph(FEATURES, INTERACTIONS, 0, 0.5, 1),
        lambda: build_refined_item_graph(FEATURES, INTERACTIONS, 0, 0.5, 1),
    )
    bad_alpha = (
        lambda: semantic_graph(FEATURES, 2, 1.5),
        lambda: refined_item_graph(FEATURES, INTERACTIONS, 2, 1.5, 1),
    )
    bad_k_c = (
        lambda: cooccurrence_graph(INTERACTIONS, -2),
        lambda: refined_item_graph(FEATURES, INTERACTIONS, 2, 0.5, -2),
    )
    for calls, message in (
        (bad_k_s, r"^k_s must be an integer >= 1, got 0$"),
        (bad_alpha, r"^alpha must be a real number in \[-1, 1\]"),
        (bad_k_c, r"^k_c must be an integer >= 0, got -2$"),
    ):
        for call in calls:
            with pytest.raises(ValueError, match=message):
                call()
    checked = check_args(k_s=np.int64(3), alpha=np.float32(0.5), k_c=0, layers=2)
    assert checked == {"k_s": 3, "alpha": 0.5, "k_c": 0, "layers": 2}
    assert [type(v) for v in checked.values()] == [int, float, int, int]
    with pytest.raises(TypeError, match="no rule"):
        check_args(k=3)


def test_bad_arguments_are_rejected_before_any_knn_work(monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("kNN search started before the arguments were checked")

    monkeypatch.setattr(knn, "semantic_knn", no_search)
    monkeypatch.setattr(knn, "cooccurrence_knn", no_search)
    with pytest.raises(ValueError, match="k_c must be"):
        build_refined_item_graph(FEATURES, INTERACTIONS, 3, 0.5, -1)
    with pytest.raises(ValueError, match="9 item columns"):
        build_refined_item_graph(FEATURES, INTERACTIONS[:, :9], 3, 0.5, 2)


