"""PrecomputedScores ranks large catalogues in item blocks (issue 16): same metrics as whole rows."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.metrics import RankingMetrics, topk_metrics
from mllmrec.models import base
from mllmrec.models.base import PrecomputedScores


class TwoTowers(PrecomputedScores):
    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__()
        self._eval_users, self._eval_items = users, items


def test_blocks_concatenate_to_the_full_scores_and_rank_the_same(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    model = TwoTowers(torch.randn(30, 8, generator=generator), torch.randn(100, 8, generator=generator))
    assert model.score_blocks(torch.arange(5)) is None  # 100 items <= EVAL_BLOCK_ITEMS: whole rows
    monkeypatch.setattr(base, "EVAL_BLOCK_ITEMS", 16)
    users = torch.tensor([3, 0, 17, 29])
    starts, blocks = [], []
    for start, block in model.score_blocks(users):  # the buffer is reused: copy each block
        starts.append(start)
        blocks.append(block.clone())
    assert starts == list(range(0, 100, 16)) and blocks[-1].shape == (4, 4)
    torch.testing.assert_close(torch.cat(blocks, dim=1), model.full_scores(users), rtol=0, atol=1e-5)

    rng = np.random.default_rng(0)
    exclude = sp.csr_matrix(rng.random((30, 100)) < 0.2)
    truth = sp.csr_matrix((rng.random((30, 100)) < 0.1) & ~exclude.toarray())
    expected = topk_metrics(model.full_scores(torch.arange(30)), exclude, truth)
    metrics = RankingMetrics(exclude, truth)
    for batch in torch.arange(30).split(7):
        metrics.update_blocks(batch, model.score_blocks(batch))
    assert metrics.compute() == pytest.approx(expected, abs=1e-9)



def test_mllmrec_ranks_in_blocks_with_the_same_scores(monkeypatch):
    """MLLMRec is not a PrecomputedScores model (with profiles its user side is computed per batch),
    so it has its own score_blocks: the blocks must be its full_scores, with and without profiles."""
    from mllmrec.graph import refined_item_graph
    from mllmrec.models.mllmrec import MLLMRec

    generator = torch.Generator().manual_seed(1)
    features, profiles = torch.randn(100, 6, generator=generator), torch.randn(30, 6, generator=generator)
    rng = np.random.default_rng(1)
    train = sp.csr_matrix((rng.random((30, 100)) < 0.1).astype(np.float32))
    graph = refined_item_graph(features, train, 5, 0.0, 3)
    monkeypatch.setattr(base, "EVAL_BLOCK_ITEMS", 32)
    for model in (MLLMRec(item_features=features, user_features=profiles, item_graph=graph, d=4),
                  MLLMRec(item_features=features, user_features=None, item_graph=graph, n_users=30, d=4)):
        model.eval()
        with torch.no_grad():
            model.prepare_eval()
            users = torch.tensor([0, 7, 29])
            blocks = [(start, block.clone()) for start, block in model.score_blocks(users)]
            assert [start for start, _ in blocks] == [0, 32, 64, 96]
            torch.testing.assert_close(torch.cat([b for _, b in blocks], dim=1), model.full_scores(users),
                                       rtol=0, atol=1e-5)
