"""Per-user split rules: MMRec's 8:1:1 (seeded; MMRec's own shuffle was unseeded), the same counts in
time order, and leave-one-out."""

from __future__ import annotations

import numpy as np

from mllmrec.data.interactions import TEST, TRAIN, VALID

__all__ = ["SPLIT_MODES", "split_sizes", "leave_one_out_sizes", "mmrec_split"]

#: ``prepare.split_mode``: random (MMRec), chronological (MMRec's counts, latest in test), leave_one_out
SPLIT_MODES = ("random", "chronological", "leave_one_out")


def split_sizes(n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) counts by MMRec's rule.

    n < 10: n-2 train, 1 valid, 1 test; otherwise vt = int(0.2 n), valid = vt // 2,
    test = vt - valid, the rest train.  (Users with n < 3 get what is left: a 5-core never has them.)
    """
    n = np.asarray(n, dtype=np.int64)
    vt = np.where(n < 10, 2, (0.2 * n).astype(np.int64))
    valid = np.where(n < 10, 1, vt // 2)
    test = vt - valid
    valid = np.minimum(valid, np.maximum(n - 1, 0))
    test = np.minimum(test, np.maximum(n - 1 - valid, 0))
    return n - valid - test, valid, test


def leave_one_out_sizes(n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) counts of leave-one-out: the last interaction is the test item,
    the one before it the validation item (users with 2 interactions: no validation item; 1: train only).
    """
    n = np.asarray(n, dtype=np.int64)
    test = (n >= 2).astype(np.int64)
    valid = (n >= 3).astype(np.int64)
    return n - valid - test, valid, test


def mmrec_split(
    users: np.ndarray, timestamps: np.ndarray, seed: int = 999, mode: str = "random"
) -> np.ndarray:
    """x_label (0 train / 1 valid / 2 test) for each interaction row.

    ``mode="random"``: each user's rows are shuffled (seeded) and the first ``n_train`` go to train,
    the next ``n_valid`` to valid, the rest to test (MMRec). ``mode="chronological"``: same counts,
    rows ordered by timestamp so the latest interactions are the test set. ``mode="leave_one_out"``:
    rows ordered by timestamp, the latest one is test and the one before it valid
    (:func:`leave_one_out_sizes`). Equal timestamps keep file order.

    Shapes: users, timestamps [N] -> labels int8 [N].
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    users = np.asarray(users, dtype=np.int64)
    n_rows = len(users)
    rng = np.random.default_rng(seed)
    if mode == "random":
        key = rng.permutation(n_rows)
    else:
        # ties between equal timestamps broken by file order (stable)
        key = np.argsort(np.asarray(timestamps), kind="stable").argsort()
    order = np.lexsort((key, users))  # group by user, within user by key
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, n_rows])
    n_train, n_valid, _ = (leave_one_out_sizes if mode == "leave_one_out" else split_sizes)(counts)
    rank = np.arange(n_rows) - np.repeat(starts, counts)  # position within the user's rows
    tr = np.repeat(n_train, counts)
    va = np.repeat(n_valid, counts)
    sorted_labels = np.where(rank < tr, TRAIN, np.where(rank < tr + va, VALID, TEST)).astype(np.int8)
    labels = np.empty(n_rows, dtype=np.int8)
    labels[order] = sorted_labels
    return labels
