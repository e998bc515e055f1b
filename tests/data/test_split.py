"""MMRec's per-user split rule: counts, seeding and the chronological mode."""

from __future__ import annotations

import numpy as np
import pytest

from mllmrec.data import TEST, TRAIN, VALID, mmrec_split, split_sizes


def _rule(n: int) -> tuple[int, int, int]:
    """The rule as the issue states it, written independently of the implementation."""
    if n < 10:
        return n - 2, 1, 1
    vt = int(0.2 * n)
    valid = vt // 2
    return n - vt, valid, vt - valid


@pytest.mark.parametrize(
    ("n", "expected"),
    [(5, (3, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (14, (12, 1, 1)), (15, (12, 1, 2)),
     (19, (16, 1, 2)), (20, (16, 2, 2)), (37, (30, 3, 4)), (100, (80, 10, 10)), (101, (81, 10, 10))],
)
def test_split_sizes_worked_examples(n, expected):
    train, valid, test = split_sizes(n)
    assert (int(train), int(valid), int(test)) == expected


def test_split_sizes_match_the_rule_for_every_n_and_are_vectorised():
    n = np.arange(3, 2001)
    train, valid, test = split_sizes(n)
    assert train.shape == valid.shape == test.shape == n.shape
    expected = np.array([_rule(int(k)) for k in n])
    np.testing.assert_array_equal(np.stack([train, valid, test], axis=1), expected)
    np.testing.assert_array_equal(train + valid + test, n)


def _five_core_table(seed: int = 0, n_users: int = 150):
    """A synthetic table where each user has 5..60 interactions, rows interleaved across users."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 61, size=n_users)
    users = np.repeat(np.arange(n_users), counts)
    perm = rng.permutation(len(users))
    users = users[perm]
    timestamps = rng.integers(0, 10**6, size=len(users))  # may tie
    return users, timestamps, counts


def test_counts_per_user_follow_the_rule():
    users, timestamps, counts = _five_core_table()
    for mode in ("random", "chronological"):
        labels = mmrec_split(users, timestamps, seed=3, mode=mode)
        assert labels.dtype == np.int8 and labels.shape == users.shape
        assert set(np.unique(labels).tolist()) == {TRAIN, VALID, TEST}
        for u, n in enumerate(counts):
            mine = labels[users == u]
            got = tuple(int((mine == x).sum()) for x in (TRAIN, VALID, TEST))
            assert got == _rule(int(n)), (mode, u, n)


def test_totals_follow_the_rule():
    users, timestamps, counts = _five_core_table(seed=1)
    labels = mmrec_split(users, timestamps, seed=0)
    expected = np.array([_rule(int(n)) for n in counts]).sum(axis=0)
    got = [int((labels == x).sum()) for x in (TRAIN, VALID, TEST)]
    assert got == expected.tolist()


def test_same_seed_same_split_different_seed_different_split():
    users, timestamps, _ = _five_core_table()
    a = mmrec_split(users, timestamps, seed=7)
    b = mmrec_split(users.copy(), timestamps.copy(), seed=7)
    c = mmrec_split(users, timestamps, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).sum() > 0.1 * len(a)  # not just a handful of rows


def test_random_mode_ignores_timestamps_and_shuffles_within_users():
    users, timestamps, _ = _five_core_table()
    a = mmrec_split(users, timestamps, seed=11)
    b = mmrec_split(users, timestamps[::-1].copy(), seed=11)
    np.testing.assert_array_equal(a, b)
    # over many seeds every row of a user lands in test at least once (a shuffle, not a fixed cut)
    u_rows = np.flatnonzero(users == users[0])
    ever_test = np.zeros(len(u_rows), dtype=bool)
    for seed in range(200):
        ever_test |= mmrec_split(users, timestamps, seed=seed)[u_rows] == TEST
    assert ever_test.all()


def test_chronological_puts_the_latest_interactions_in_test_then_valid():
    users, _, counts = _five_core_table(seed=2)
    rng = np.random.default_rng(5)
    timestamps = rng.permutation(len(users)) * 10  # distinct
    labels = mmrec_split(users, timestamps, seed=0, mode="chronological")
    for u in range(len(counts)):
        rows = users == u
        ts, lab = timestamps[rows], labels[rows]
        assert ts[lab == TRAIN].max() < ts[lab == VALID].min()
        assert ts[lab == VALID].max() < ts[lab == TEST].min()
    # the seed does not matter in chronological mode
    np.testing.assert_array_equal(labels, mmrec_split(users, timestamps, seed=99, mode="chronological"))


def test_chronological_ties_go_by_file_order():
    users = np.zeros(6, dtype=np.int64)
    timestamps = np.array([5, 5, 5, 5, 5, 5])
    labels = mmrec_split(users, timestamps, mode="chronological")
    # 6 < 10 rows: 4 train, 1 valid, 1 test, in file order
    assert labels.tolist() == [TRAIN, TRAIN, TRAIN, TRAIN, VALID, TEST]


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="chronological"):
        mmrec_split(np.zeros(5, dtype=np.int64), np.arange(5), mode="temporal")


def test_leave_one_out_puts_each_users_last_item_in_test_and_the_one_before_in_valid():
    rng = np.random.default_rng(5)
    users = rng.integers(0, 30, size=400)
    timestamps = rng.integers(0, 50, size=400)  # many ties: file order must break them
    labels = mmrec_split(users, timestamps, seed=1, mode="leave_one_out")
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        # plain reference: sort the user's rows by (timestamp, file position)
        by_time = sorted(rows, key=lambda r: (timestamps[r], r))
        expected = np.full(len(rows), TRAIN)
        if len(rows) >= 2:
            expected[-1] = TEST
        if len(rows) >= 3:
            expected[-2] = VALID
        got = labels[by_time]
        np.testing.assert_array_equal(got, expected, err_msg=f"user {u}")
    # the seed does not matter: no shuffle is involved
    np.testing.assert_array_equal(labels, mmrec_split(users, timestamps, seed=2, mode="leave_one_out"))
