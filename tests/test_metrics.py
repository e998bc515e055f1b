"""Golden and reference tests for MMRec's full-ranking protocol in :mod:`mllmrec.metrics`.

Hand-computed values use the discounts 1/log2(i + 1) of ranks i = 1, 2, 3, ...:
    d1 = 1, d2 = 1/log2(3) = 0.630930, d3 = 1/log2(4) = 0.5, d4 = 1/log2(5) = 0.430677,
    d5 = 1/log2(6) = 0.386853, d6 = 1/log2(7) = 0.356207.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.metrics import RankingMetrics, evaluate_full_ranking, per_user_metrics, topk_metrics

D1, D2, D3, D4, D5, D6 = (1 / math.log2(i + 1) for i in range(1, 7))


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """0/1 CSR matrix whose row u holds the items rows[u]."""
    u = [i for i, r in enumerate(rows) for _ in r]
    c = [j for r in rows for j in r]
    return sp.csr_matrix((np.ones(len(c)), (u, c)), shape=(len(rows), n_items))


# ---------------------------------------------------------------------------------------------
# golden example: 4 users, 6 items, nothing excluded
#   user 0 ranks items 0,1,2,3,4,5; truth {1}         (|T| = 1 < K = 3)
#   user 1 ranks items 0,1,2,3,4,5; truth {0, 2, 5}   (|T| = 3 = K)
#   user 2 ranks items 3,1,0,5,4,2; truth {1, 2, 3, 4} (|T| = 4 > K)
#   user 3 has no truth: never counted in the mean
# ---------------------------------------------------------------------------------------------
GOLDEN_SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.7, 0.8, 0.1, 0.9, 0.2, 0.3],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ]
)
GOLDEN_TRUTH = csr([[1], [0, 2, 5], [1, 2, 3, 4], []], 6)
NOTHING = csr([[], [], [], []], 6)


def test_golden_recall_ndcg_at_3() -> None:
    # user 0: top-3 = 0,1,2, hit at rank 2.  recall = 1/1 = 1
    #         ndcg = d2 / IDCG(min(|T|=1, K=3) = 1) = 0.630930 / 1 = 0.630930
    #         (an IDCG over K positions would give 0.630930 / 2.130930 = 0.296)
    # user 1: top-3 = 0,1,2, hits at ranks 1, 3. recall = 2/3 = 0.666667
    #         ndcg = (d1 + d3) / (d1 + d2 + d3) = 1.5 / 2.130930 = 0.703918
    # user 2: top-3 = 3,1,0, hits at ranks 1, 2. recall = 2/|T| = 2/4 = 0.5 (NOT 2/min(K,|T|) = 2/3)
    #         ndcg = (d1 + d2) / (d1 + d2 + d3)  [min(4, 3) = 3 ideal positions] = 1.630930 / 2.130930
    #              = 0.765360
    # user 3: no truth -> not in the mean (would pull recall to 2.166667 / 4 = 0.541667)
    # recall@3 = (1 + 0.666667 + 0.5) / 3 = 0.722222
    # ndcg@3  = (0.630930 + 0.703918 + 0.765360) / 3 = 0.700069
    ndcg_u = [D2 / D1, (D1 + D3) / (D1 + D2 + D3), (D1 + D2) / (D1 + D2 + D3)]
    got = topk_metrics(GOLDEN_SCORES, NOTHING, GOLDEN_TRUTH, ks=(3,))
    assert list(got) == ["recall@3", "ndcg@3"]
    assert got["recall@3"] == pytest.approx((1 + 2 / 3 + 2 / 4) / 3, abs=1e-9)
    assert got["recall@3"] == pytest.approx(0.722222, abs=1e-6)
    assert got["ndcg@3"] == pytest.approx(sum(ndcg_u) / 3, abs=1e-9)
    assert got["ndcg@3"] == pytest.approx(0.700069, abs=1e-6)


def test_golden_k1_and_key_order() -> None:
    # K = 1: user 0's top item 0 is not truth -> 0, 0; user 1's top item 0 is truth -> recall 1/3,
    # ndcg 1/1; user 2's top item 3 is truth -> recall 1/4, ndcg 1.
    # recall@1 = (0 + 1/3 + 1/4) / 3 = 0.194444; ndcg@1 = (0 + 1 + 1) / 3 = 0.666667
    # K = 3 as in test_golden_recall_ndcg_at_3, computed in the same call (one shared top-K)
    got = topk_metrics(GOLDEN_SCORES, NOTHING, GOLDEN_TRUTH, ks=(1, 3))
    assert list(got) == ["recall@1", "ndcg@1", "recall@3", "ndcg@3"]
    assert got["recall@1"] == pytest.approx((1 / 3 + 1 / 4) / 3, abs=1e-9)
    assert got["ndcg@1"] == pytest.approx(2 / 3, abs=1e-9)
    assert got["recall@3"] == pytest.approx(0.722222, abs=1e-6)


def test_k_larger_than_n_items_ranks_all_items() -> None:
    # K = 50 > I = 6: the ranking has only 6 positions, so every truth item is a hit (recall 1) and
    # NDCG@50 = NDCG@6.
    # user 0: truth {1} at rank 2                     -> d2 / d1 = 0.630930
    # user 1: truth {0, 2, 5} at ranks 1, 3, 6        -> (d1 + d3 + d6) / (d1 + d2 + d3) = 0.871045
    # user 2: truth {3, 1, 4, 2} at ranks 1, 2, 5, 6  -> (d1 + d2 + d5 + d6) / (d1 + d2 + d3 + d4)
    #                                                  = 2.373990 / 2.561606 = 0.926758
    expected_ndcg = (
        D2
        + (D1 + D3 + D6) / (D1 + D2 + D3)
        + (D1 + D2 + D5 + D6) / (D1 + D2 + D3 + D4)
    ) / 3
    got = topk_metrics(GOLDEN_SCORES, NOTHING, GOLDEN_TRUTH, ks=(5, 50))
    assert got["recall@50"] == pytest.approx(1.0, abs=1e-12)
    assert got["ndcg@50"] == pytest.approx(expected_ndcg, abs=1e-9)
    at6 = topk_metrics(GOLDEN_SCORES, NOTHING, GOLDEN_TRUTH, ks=(6,))
    assert got["ndcg@50"] == pytest.approx(at6["ndcg@6"], abs=1e-12)
    # K = 5 in the same call still cuts at 5: user 1 loses the rank-6 hit (recall 2/3), user 2 keeps
    # ranks 1, 2, 5 (recall 3/4); recall@5 = (1 + 2/3 + 3/4) / 3 = 0.805556
    assert got["recall@5"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-9)


def test_users_without_truth_are_not_averaged() -> None:
    # adding more users without truth (with any scores) must not change the mean
    scores = torch.cat([GOLDEN_SCORES, torch.rand(5, 6)])
    truth = sp.vstack([GOLDEN_TRUTH, sp.csr_matrix((5, 6))]).tocsr()
    got = topk_metrics(scores, sp.csr_matrix((9, 6)), truth, ks=(3,))
    assert got["recall@3"] == pytest.approx(0.722222, abs=1e-6)
    assert RankingMetrics(sp.csr_matrix((9, 6)), truth).eval_users().tolist() == [0, 1, 2]


def test_excluded_items_are_never_ranked() -> None:
    # 2 users, 4 items, K = 1, 3.
    # user 0: scores 0.9, 0.8, 0.7, 0.1; items 0 and 1 (the two best) are excluded, truth {2}.
    #         Ranking = 2, 3 -> item 2 at rank 1: recall@1 = 1, ndcg@1 = 1.
    #         (unmasked, item 2 would be rank 3: recall@1 = 0)
    # user 1: scores 0.9, 0.1, 0.2, 0.3; item 0 is excluded AND truth, truth {0, 3}.
    #         Ranking = 3, 2, 1 (item 0 gone): item 3 at rank 1 -> recall@1 = 1/2 (|T| counts the
    #         excluded truth item), ndcg@1 = d1 / d1 = 1; K = 3: one hit of two,
    #         recall@3 = 1/2, ndcg@3 = d1 / (d1 + d2) = 1 / 1.630930 = 0.613147.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.9, 0.1, 0.2, 0.3]])
    exclude = csr([[0, 1], [0]], 4)
    truth = csr([[2], [0, 3]], 4)
    got = topk_metrics(scores, exclude, truth, ks=(1, 3))
    assert got["recall@1"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-9)
    assert got["ndcg@1"] == pytest.approx(1.0, abs=1e-9)
    assert got["recall@3"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-9)
    assert got["ndcg@3"] == pytest.approx((1 + D1 / (D1 + D2)) / 2, abs=1e-9)
    unmasked = topk_metrics(scores, csr([[], []], 4), truth, ks=(1,))
    assert unmasked["recall@1"] == pytest.approx((0 + 1 / 2) / 2, abs=1e-9)


def test_excluded_truth_item_is_no_hit_when_too_few_items_remain() -> None:
    # 1 user, 3 items, K = 3: items 0 and 1 are excluded, so the top-3 must still contain them
    # (at -inf) after item 2. Item 0 is also truth; it must not count as a hit.
    # truth {0, 2}: hit only at rank 1 -> recall@3 = 1/2, ndcg@3 = d1 / (d1 + d2) = 0.613147
    scores = torch.tensor([[0.5, 0.4, 0.1]])
    got = topk_metrics(scores, csr([[0, 1]], 3), csr([[0, 2]], 3), ks=(3,))
    assert got["recall@3"] == pytest.approx(0.5, abs=1e-9)
    assert got["ndcg@3"] == pytest.approx(D1 / (D1 + D2), abs=1e-9)
    assert got["ndcg@3"] == pytest.approx(0.613147, abs=1e-6)


def test_sparse_values_are_binarised() -> None:
    # Same case as above, but exclude holds 2s (train + valid overlapping) and truth stores an
    # explicit 0 for item 1: a 2 is still "excluded" (item 0 is no hit), a stored 0 is no truth item
    # (|T| stays 2). Expected as above: recall@3 = 1/2, ndcg@3 = 0.613147.
    scores = torch.tensor([[0.5, 0.4, 0.1]])
    exclude = csr([[0, 1]], 3) * 2
    truth = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 3))
    got = topk_metrics(scores, exclude, truth, ks=(3,))
    assert got["recall@3"] == pytest.approx(0.5, abs=1e-9)
    assert got["ndcg@3"] == pytest.approx(D1 / (D1 + D2), abs=1e-9)


def test_exclude_train_plus_valid_changes_test_metrics() -> None:
    # 1 user, 4 items: item 0 train (score 1.0), item 1 valid (0.9), item 2 test (0.8), item 3 (0.7).
    # MMRec (exclude = train): ranking 1, 2, 3 -> test item at rank 2:
    #     recall@1 = 0, ndcg@1 = 0, recall@2 = 1, ndcg@2 = d2 / d1 = 0.630930
    # RecBole (exclude = train + valid): ranking 2, 3 -> test item at rank 1:
    #     recall@1 = 1, ndcg@1 = 1, ndcg@2 = 1
    scores = torch.tensor([[1.0, 0.9, 0.8, 0.7]])
    train, valid, test = csr([[0]], 4), csr([[1]], 4), csr([[2]], 4)
    mmrec = topk_metrics(scores, train, test, ks=(1, 2))
    assert mmrec == pytest.approx({"recall@1": 0.0, "ndcg@1": 0.0, "recall@2": 1.0, "ndcg@2": D2})
    recbole = topk_metrics(scores, train + valid, test, ks=(1, 2))
    assert recbole == pytest.approx({"recall@1": 1.0, "ndcg@1": 1.0, "recall@2": 1.0, "ndcg@2": 1.0})
    # overlapping train and valid entries sum to 2 in train + valid: still just "excluded"
    overlap = topk_metrics(scores, train + valid + valid, test, ks=(1, 2))
    assert overlap == recbole


def test_per_user_metrics_formula() -> None:
    # hits at ranks 2 and 4 of a top-4, |T| = 5, K = 4:
    #   recall = 2/5; ndcg = (d2 + d4) / (d1 + d2 + d3 + d4) = 1.061606 / 2.561606 = 0.414430
    # hits at rank 1, |T| = 1, K = 2 (ideal over min(1, 2) = 1): recall 1, ndcg 1
    hits = torch.tensor([[False, True, False, True], [True, False, False, False]])
    n_truth = torch.tensor([5, 1])
    disc = 1.0 / torch.log2(torch.arange(2, 6, dtype=torch.float64))
    out = per_user_metrics(hits, n_truth, (2, 4), disc)
    assert out["recall@4"].tolist() == pytest.approx([2 / 5, 1.0])
    assert out["ndcg@4"].tolist() == pytest.approx([(D2 + D4) / (D1 + D2 + D3 + D4), 1.0])
    assert out["recall@2"].tolist() == pytest.approx([1 / 5, 1.0])
    assert out["ndcg@2"].tolist() == pytest.approx([D2 / (D1 + D2), 1.0])


# ---------------------------------------------------------------------------------------------
# random data against a plain dense reference
# ---------------------------------------------------------------------------------------------
def reference(
    scores: np.ndarray, exclude: np.ndarray, truth: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    """Plain per-user loop over dense arrays: MMRec's protocol written out directly."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    n_eval = 0
    for u in range(scores.shape[0]):
        n_t = int(truth[u].sum())
        if n_t == 0:
            continue
        n_eval += 1
        s = scores[u].astype(np.float64).copy()
        s[exclude[u]] = -np.inf
        order = np.argsort(-s, kind="stable")
        rankable = ~exclude[u][order]
        hit = truth[u][order] & rankable
        for k in ks:
            h = hit[:k]
            dcg = sum(1.0 / math.log2(i + 2) for i in np.flatnonzero(h))
            idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_t, k)))
            sums[f"recall@{k}"] += h.sum() / n_t
            sums[f"ndcg@{k}"] += dcg / idcg
    return {name: v / n_eval for name, v in sums.items()}


def random_case(
    seed: int, n_users: int = 57, n_items: int = 40, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, sp.csr_matrix, sp.csr_matrix, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    exclude = rng.random((n_users, n_items)) < 0.25
    exclude[3] = True  # a user with every item excluded (its truth can never be hit)
    truth = (rng.random((n_users, n_items)) < 0.12) & ~exclude
    truth[rng.random((n_users, n_items)) < 0.02] = True  # a few truth items that are also excluded
    truth[3, :2] = True
    truth[::5] = False  # every fifth user has no truth
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items))).to(dtype)
    return scores, sp.csr_matrix(exclude), sp.coo_matrix(truth), exclude, truth


KS = (1, 5, 10, 20, 50)  # 50 > n_items = 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_topk_metrics_matches_reference(seed: int, dtype: torch.dtype) -> None:
    scores, exclude, truth, exclude_d, truth_d = random_case(seed, dtype=dtype)
    expected = reference(scores.numpy(), exclude_d, truth_d, KS)
    got = topk_metrics(scores, exclude, truth, ks=KS)
    assert list(got) == list(expected)
    assert got == pytest.approx(expected, abs=1e-6)
    assert 0 < got["recall@5"] < got["recall@50"]  # the case is not degenerate


@pytest.mark.parametrize("batch_size", [1, 7, 16, 43, 1000])  # 43 eval users: 7, 16 do not divide it
def test_evaluate_full_ranking_matches_reference(batch_size: int) -> None:
    scores, exclude, truth, exclude_d, truth_d = random_case(2)
    expected = reference(scores.numpy(), exclude_d, truth_d, KS)
    calls: list[int] = []

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        calls.append(len(users))
        return scores[users]

    got = evaluate_full_ranking(score_fn, exclude, truth, ks=KS, batch_size=batch_size)
    assert got == pytest.approx(expected, abs=1e-6)
    n_eval = int((truth_d.sum(1) > 0).sum())
    assert n_eval == 43
    assert sum(calls) == n_eval and max(calls) == min(batch_size, n_eval)


def test_ranking_metrics_streaming_any_order_and_batches() -> None:
    scores, exclude, truth, exclude_d, truth_d = random_case(3)
    expected = reference(scores.numpy(), exclude_d, truth_d, KS)
    metrics = RankingMetrics(exclude, truth, ks=KS)
    # all users (those without truth are ignored), shuffled, in uneven batches of 10
    users = torch.randperm(scores.shape[0], generator=torch.Generator().manual_seed(0))
    for batch in users.split(10):
        metrics.update(batch, scores[batch])
    assert metrics.compute() == pytest.approx(expected, abs=1e-6)
    # a user updated twice keeps its last result, it is not double counted
    metrics.update(users[:4], scores[users[:4]])
    assert metrics.compute() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("width", [1, 7, 19, 40])  # 40 = one block; 7 and 19 leave a short last block
def test_update_blocks_matches_the_reference(width: int) -> None:
    scores, exclude, truth, exclude_d, truth_d = random_case(5)
    expected = reference(scores.numpy(), exclude_d, truth_d, KS)
    metrics = RankingMetrics(exclude, truth, ks=KS)
    users = torch.randperm(scores.shape[0], generator=torch.Generator().manual_seed(1))
    buffer = torch.empty(10 * width)  # one reused block buffer, as PrecomputedScores does

    def blocks(batch: torch.Tensor):
        for start in range(0, scores.shape[1], width):
            block = scores[batch, start : start + width]
            out = buffer[: block.numel()].view(block.shape)
            yield start, out.copy_(block)

    for batch in users.split(10):
        metrics.update_blocks(batch, blocks(batch))
    assert metrics.compute() == pytest.approx(expected, abs=1e-6)


def test_update_blocks_must_cover_every_item_in_order() -> None:
    scores, exclude, truth, _, _ = random_case(5)
    metrics = RankingMetrics(exclude, truth, ks=(5,))
    users = torch.arange(4)
    with pytest.raises(ValueError, match="covered items \\[0, 20\\) of \\[0, 40\\)"):
        metrics.update_blocks(users, [(0, scores[:4, :20].clone())])
    with pytest.raises(ValueError, match="expected start 20, got 25"):
        metrics.update_blocks(users, [(0, scores[:4, :20].clone()), (25, scores[:4, 25:].clone())])


def test_update_does_not_modify_scores() -> None:
    scores, exclude, truth, _, _ = random_case(4)
    before = scores.clone()
    metrics = RankingMetrics(exclude, truth, ks=(5,))
    metrics.update(torch.arange(scores.shape[0]), scores)
    assert torch.equal(scores, before)


def test_update_inplace_masks_the_given_scores() -> None:
    scores, exclude, truth, exclude_d, _ = random_case(4)
    expected = topk_metrics(scores, exclude, truth, ks=(5,))
    work = scores.clone()
    metrics = RankingMetrics(exclude, truth, ks=(5,))
    metrics.update(torch.arange(scores.shape[0]), work, inplace=True)
    assert metrics.compute() == expected
    # exactly the excluded entries became -inf, every other entry is unchanged
    assert torch.equal(torch.isinf(work), torch.from_numpy(exclude_d))
    assert torch.equal(work[~torch.from_numpy(exclude_d)], scores[~torch.from_numpy(exclude_d)])


def test_evaluate_full_ranking_never_overwrites_stored_scores_through_views() -> None:
    # topk_metrics indexes scores[users] (a copy); a score_fn returning a slice (a view) of a stored
    # matrix is masked on a copy: neither may write -inf into the stored scores
    scores, exclude, truth, exclude_d, truth_d = random_case(6)
    before = scores.clone()
    expected = reference(scores.numpy(), exclude_d, truth_d, (5,))
    assert topk_metrics(scores, exclude, truth, ks=(5,)) == pytest.approx(expected, abs=1e-6)
    assert torch.equal(scores, before)
    # all users with truth here are contiguous once users without truth are dropped: use a stored
    # matrix of the eval users' rows and return contiguous slices of it
    eval_users = np.flatnonzero(truth_d.sum(1) > 0)
    stored = scores[torch.from_numpy(eval_users)]
    stored_before = stored.clone()
    position = {u: i for i, u in enumerate(eval_users)}

    def view_fn(users: torch.Tensor) -> torch.Tensor:
        first, last = position[int(users[0])], position[int(users[-1])]
        return stored[first : last + 1]  # a view: its _base is `stored`

    got = evaluate_full_ranking(view_fn, exclude, truth, ks=(5,), batch_size=8)
    assert got == pytest.approx(expected, abs=1e-6)
    assert torch.equal(stored, stored_before)


def test_compute_before_all_users_updated_raises_and_reset_clears() -> None:
    scores, exclude, truth, _, truth_d = random_case(5)
    metrics = RankingMetrics(exclude, truth)
    eval_users = torch.from_numpy(metrics.eval_users())
    assert eval_users.tolist() == np.flatnonzero(truth_d.sum(1) > 0).tolist()  # sorted, 44 users
    metrics.update(eval_users[:-1], scores[eval_users[:-1]])
    with pytest.raises(RuntimeError, match="1 of 44 evaluated users were never updated"):
        metrics.compute()
    metrics.update(eval_users[-1:], scores[eval_users[-1:]])
    full = metrics.compute()
    metrics.reset()
    with pytest.raises(RuntimeError, match="44 of 44"):
        metrics.compute()
    metrics.update(eval_users, scores[eval_users])
    assert metrics.compute() == full


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_empty_truth_raises() -> None:
    with pytest.raises(ValueError, match="truth has no interactions"):
        topk_metrics(GOLDEN_SCORES, NOTHING, NOTHING)
    with pytest.raises(ValueError, match="truth has no interactions"):
        RankingMetrics(NOTHING, sp.csr_matrix((4, 6)))


@pytest.mark.parametrize("ks", [(), (0,), (10, -1), (2.5,), (True,)])
def test_bad_ks_raise(ks: tuple) -> None:
    with pytest.raises(ValueError, match="ks must"):
        topk_metrics(GOLDEN_SCORES, NOTHING, GOLDEN_TRUTH, ks=ks)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="exclude has shape"):
        RankingMetrics(csr([[]], 6), GOLDEN_TRUTH)
    with pytest.raises(ValueError, match="truth must be a scipy.sparse"):
        RankingMetrics(NOTHING, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="scores has shape"):
        topk_metrics(GOLDEN_SCORES[:, :5], NOTHING, GOLDEN_TRUTH)
    metrics = RankingMetrics(NOTHING, GOLDEN_TRUTH)
    with pytest.raises(ValueError, match="scores has shape"):
        metrics.update(torch.arange(3), GOLDEN_SCORES)
    with pytest.raises(ValueError, match="users must lie in"):
        metrics.update(torch.tensor([0, 4]), GOLDEN_SCORES[:2])
    with pytest.raises(ValueError, match="floating-point"):
        metrics.update(torch.arange(4), (GOLDEN_SCORES * 10).long())
    nan_scores = GOLDEN_SCORES.clone()
    nan_scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metrics.update(torch.arange(4), nan_scores)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_full_ranking(lambda u: GOLDEN_SCORES[u], NOTHING, GOLDEN_TRUTH, batch_size=0)


def test_synchronize_merges_ranks_like_one_process():
    """Two 'ranks' each rank half of the users (one user on both, as a padded distributed sampler
    does); merging with an all_gather gives exactly the single-process result."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from mllmrec.metrics import RankingMetrics, topk_metrics

    rng = np.random.default_rng(3)
    n_users, n_items = 30, 25
    exclude = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr")
    truth = sp.random(n_users, n_items, density=0.15, random_state=2, format="csr")
    truth = truth - truth.multiply(exclude.astype(bool))
    scores = torch.from_numpy(rng.normal(size=(n_users, n_items)))
    expected = topk_metrics(scores, exclude, truth, ks=(5, 10))

    ranks = [RankingMetrics(exclude, truth, ks=(5, 10)) for _ in range(2)]
    users = torch.arange(n_users)
    shares = [users[:16], users[15:]]  # user 15 on both ranks
    for metrics, share in zip(ranks, shares):
        metrics.update(share, scores[share])
    with pytest.raises(RuntimeError, match="never updated"):
        ranks[0].compute()  # a single rank alone is incomplete
    snapshot = [{name: v.clone() for name, v in r._values.items()} for r in ranks]
    seen = [r._seen.clone() for r in ranks]

    # what each rank would contribute, in the order synchronize() gathers: metric tensors, then seen
    per_rank = [[*s.values(), sn.to(torch.uint8)] for s, sn in zip(snapshot, seen)]

    def fake_all_gather():
        position = iter(range(len(per_rank[0])))

        def gather(_tensor):
            i = next(position)
            return torch.stack([contrib[i] for contrib in per_rank])

        return gather

    for metrics in ranks:
        metrics.synchronize(fake_all_gather())
        assert metrics.compute() == pytest.approx(expected, abs=1e-12)
