"""MMRec's dropna / dedup / iterative 5-core / first-appearance re-index, against a slow reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mllmrec.prepare.kcore import encode_interactions, first_appearance_ids, kcore_rows, mmrec_filter

from prepare_fixtures import random_ratings, reference_mmrec


def _table(rows) -> pa.Table:
    u, i, r, t = zip(*rows)
    return pa.table({"user": pa.array(u, pa.string()), "item": pa.array(i, pa.string()),
                     "rating": pa.array(r, pa.float64()), "timestamp": pa.array(t, pa.int64())})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 5])
def test_mmrec_filter_matches_reference(seed: int, k: int) -> None:
    rows = random_ratings(seed)
    kept, uid, iid = reference_mmrec(rows, k)
    filtered = mmrec_filter(encode_interactions(_table(rows)), k)
    assert len(kept) > 0
    assert filtered.n_users == len(uid) and filtered.n_items == len(iid)
    assert list(filtered.user_source) == list(uid) and list(filtered.item_source) == list(iid)
    got = list(zip(filtered.users.tolist(), filtered.items.tolist(), filtered.timestamp.tolist()))
    want = [(uid[u], iid[i], t) for u, i, _, t in kept]
    assert got == want  # same rows, same (file) order, same ids


@pytest.mark.parametrize("seed", range(4))
def test_kcore_result_is_the_fixed_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, 600)
    items = (rng.pareto(1.2, 600) * 5).astype(int) % 60
    rows, rounds = kcore_rows(users, items, 5)
    assert rounds >= 2
    if len(rows):
        assert np.bincount(users[rows])[np.unique(users[rows])].min() >= 5
        assert np.bincount(items[rows])[np.unique(items[rows])].min() >= 5
    # maximal: every dropped row belongs to a user or item that cannot reach 5 with the kept ones
    keep = np.zeros(len(users), bool)
    keep[rows] = True
    again, _ = kcore_rows(users[keep], items[keep], 5)
    assert len(again) == keep.sum()


def test_kcore_cascades_over_rounds() -> None:
    # a solid core: users 1..5 x items 1..5 (everyone has exactly 5). User 0 rates items 1..4 and
    # item 9, which nobody else rates. Round 1 bans item 9 only (user 0 still has 5 on that
    # snapshot); round 2 bans user 0 (now 4); round 3 bans nothing. The core survives.
    core = [(u, i) for u in range(1, 6) for i in range(1, 6)]
    chain = [(0, 1), (0, 2), (0, 3), (0, 9), (0, 4)]
    users, items = map(np.array, zip(*(chain[:3] + core + chain[3:])))
    rows, rounds = kcore_rows(users, items, 5)
    assert rounds == 3
    assert sorted(zip(users[rows].tolist(), items[rows].tolist())) == sorted(core)
    assert rows.tolist() == sorted(rows.tolist())  # file order kept


def test_collapse_to_nothing_cascades() -> None:
    # items 0..3 have exactly 5 users (0..4); user 0 also rates item 4, rated by nobody else,
    # and users 1..4 have only 4 rows: round 1 bans them and item 4, then everything goes
    users = [0, 0, 0, 0, 0] + [u for u in range(1, 5) for _ in range(4)]
    items = [0, 1, 2, 3, 4] + [i for _ in range(1, 5) for i in range(4)]
    rows, rounds = kcore_rows(np.array(users), np.array(items), 5)
    assert len(rows) == 0
    assert rounds == 2  # round 1 bans users 1..4 + item 4; round 2 bans the rest; an empty table stops


def test_dropna_and_duplicates() -> None:
    rows = [("u1", "i1", 5.0, 10), ("u1", "i1", 4.0, 10), ("u1", "i1", 5.0, 11), (None, "i2", 1.0, 3),
            ("u2", None, 1.0, 3), ("u2", "i2", None, 3), ("u3", "i3", 2.0, None)]
    enc = encode_interactions(_table(rows))
    assert enc.n_read == 7
    assert enc.n_missing == 3           # a missing rating is kept (MMRec's dropna ignores it)
    assert enc.n_duplicates == 1        # (u1, i1, 10) again; (u1, i1, 11) is another day: kept
    assert enc.timestamp.tolist() == [10, 11, 3]
    assert enc.rating[0] == 5.0 and np.isnan(enc.rating[2])


def test_first_appearance_order() -> None:
    ids, uniques = first_appearance_ids(np.array([7, 3, 7, 9, 3, 1]))
    assert ids.tolist() == [0, 1, 0, 2, 1, 3]
    assert uniques.tolist() == [7, 3, 9, 1]


def test_everything_removed_gives_empty_result() -> None:
    filtered = mmrec_filter(encode_interactions(_table([("u", f"i{n}", 1.0, n) for n in range(4)])), 5)
    assert filtered.n_users == 0 and len(filtered.users) == 0


@pytest.mark.parametrize("seed", range(3))
def test_duplicate_rows_matches_pandas(seed: int) -> None:
    import pandas as pd

    from mllmrec.prepare import kcore

    rng = np.random.default_rng(seed)
    u, i, t = rng.integers(0, 5, 400), rng.integers(0, 4, 400), rng.integers(0, 3, 400) * 86400 + 10**9
    want = pd.DataFrame({"u": u, "i": i, "t": t}).duplicated(keep="first").to_numpy()
    assert (kcore.duplicate_rows(u, i, t) == want).all()
    assert want.sum() > 300  # many repeats: the keep-first order is really exercised
    # ids too large to pack into one int64 take the pandas path, with the same answer
    big = u.astype(np.int64) * 2**40
    assert (kcore.duplicate_rows(big, i, t) == want).all()
