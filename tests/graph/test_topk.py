"""mllmrec.graph.topk: per-row top-K with lowest-id ties, running merges and column candidates, against
plain Python sorting."""

from __future__ import annotations

import math

import pytest
import torch

from mllmrec.graph.topk import column_candidates, merge_topk, to_sparse, topk_lowest_index


def reference_topk(row: list[float], k: int) -> list[int]:
    """Columns of the ``k`` largest values of ``row``; among equal values the lower column first."""
    return sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]


def tie_heavy_scores(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Scores drawn from a handful of values, so that most rows tie at their K-th value."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (rows, cols), generator=generator).to(torch.float32) / 4


@pytest.mark.parametrize(("rows", "cols", "k"), [(1, 1, 1), (5, 8, 3), (20, 30, 7), (7, 12, 12), (9, 40, 1)])
def test_topk_lowest_index_breaks_ties_by_lowest_column(rows, cols, k):
    scores = tie_heavy_scores(rows, cols, seed=rows * cols)
    values, indices = topk_lowest_index(scores, k)
    assert values.shape == indices.shape == (rows, k)
    for r in range(rows):
        expected = reference_topk(scores[r].tolist(), k)
        assert sorted(indices[r].tolist()) == sorted(expected)
        assert torch.equal(values[r].sort(descending=True).values, scores[r, expected].sort(descending=True).values)


def test_merge_topk_keeps_the_best_of_old_and_new_candidates():
    best_values = torch.full((3, 2), -math.inf)
    best_indices = torch.zeros((3, 2), dtype=torch.int64)
    merge_topk(best_values, best_indices, slice(0, 3), torch.tensor([[5.0, 1.0], [2.0, 0.5], [9.0, 8.0]]),
               torch.tensor([[10, 11], [12, 13], [14, 15]]))
    merge_topk(best_values, best_indices, slice(1, 3), torch.tensor([[3.0, 0.1], [7.0, 6.0]]),
               torch.tensor([[20, 21], [22, 23]]))
    assert best_values.tolist() == [[5.0, 1.0], [3.0, 2.0], [9.0, 8.0]]
    assert best_indices.tolist() == [[10, 11], [20, 12], [14, 15]]


@pytest.mark.parametrize(("rows", "cols", "width", "seed"), [(6, 5, 2, 0), (30, 9, 4, 1), (3, 12, 5, 2)])
def test_column_candidates_are_each_columns_best_entries_above_its_threshold(rows, cols, width, seed):
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(rows, cols, generator=generator)
    threshold = torch.randn(cols, generator=generator)
    values, row_ids = column_candidates(block, threshold, width)
    assert values.shape == row_ids.shape == (cols, width)
    for c in range(cols):
        passing = [r for r in range(rows) if block[r, c] > threshold[c]]
        expected = sorted(passing, key=lambda r: -block[r, c].item())[:width]
        # best first; what follows the passing entries (padding or lower entries) can never enter a top list
        assert row_ids[c, : len(expected)].tolist() == expected
        assert torch.equal(values[c, : len(expected)], block[expected, c])


def test_to_sparse_is_a_coalesced_float32_square_matrix():
    values = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    adj = to_sparse(4, torch.tensor([2, 0, 1]), torch.tensor([3, 1, 1]), values)
    assert adj.is_coalesced() and adj.dtype == torch.float32 and adj.shape == (4, 4)
    assert adj.indices().tolist() == [[0, 1, 2], [1, 1, 3]]
    assert adj.values().tolist() == [1.0, 2.0, 0.5]
