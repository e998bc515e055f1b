"""The in-memory dataset: interaction splits as sparse matrices plus each user's training history."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mllmrec.data.checks import check_id_ranges
from mllmrec.data.errors import DatasetError

log = logging.getLogger(__name__)

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}

__all__ = ["InteractionData", "TRAIN", "VALID", "TEST", "SPLIT_NAMES", "interaction_data_from_frame"]


@dataclass
class InteractionData:
    """One dataset in memory.

    Attributes:
        name: dataset name (used in prompts and logs).
        n_users, n_items: max id + 1 over all splits (MMRec's rule).
        train, valid, test: binary ``scipy.sparse.csr_matrix`` [n_users, n_items], float32.
        history_indptr, history_items: each user's *training* items in chronological order
            (timestamp, ties by file order), CSR-style: user u's items are
            ``history_items[history_indptr[u]:history_indptr[u + 1]]``.
        item_features, user_features: optional float32 [n_items, d] / [n_users, d].
        source: the folder it was loaded from.
    """

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    history_indptr: np.ndarray
    history_items: np.ndarray
    item_features: np.ndarray | None = None
    user_features: np.ndarray | None = None
    source: Path | None = None
    extras: dict = field(default_factory=dict)

    def history(self, user: int) -> np.ndarray:
        """Chronological training items of ``user`` (int64 [n])."""
        return self.history_items[self.history_indptr[user] : self.history_indptr[user + 1]]

    @property
    def n_train(self) -> int:
        return int(self.train.nnz)

    def users_with_training(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.train.indptr) > 0)

    def summary(self) -> str:
        density = self.train.nnz + self.valid.nnz + self.test.nnz
        density /= max(1, self.n_users * self.n_items)
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, "
            f"train/valid/test {self.train.nnz:,}/{self.valid.nnz:,}/{self.test.nnz:,} "
            f"(density {density:.4%})"
        )


def _binary_csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    mat = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=shape, dtype=np.float32
    )
    mat.sum_duplicates()
    mat.data[:] = 1.0  # repeated (user, item) pairs count once
    return mat


def interaction_data_from_frame(
    frame: pd.DataFrame, name: str, source: Path | None = None, origin: str = "interactions"
) -> InteractionData:
    """Build :class:`InteractionData` from a validated frame.

    ``frame`` has integer columns ``user``, ``item``, ``x_label`` and ``timestamp`` (any sortable
    number), already checked for types and ranges. Follows MMRec: n = max id + 1; valid/test rows of
    users with no training interaction are dropped (one warning with the count).
    """
    users = frame["user"].to_numpy(np.int64)
    items = frame["item"].to_numpy(np.int64)
    labels = frame["x_label"].to_numpy(np.int64)
    check_id_ranges(users, items, origin)  # before anything is sized by max id + 1
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    shape = (n_users, n_items)

    is_train = labels == TRAIN
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[is_train]] = True
    eval_rows = ~is_train
    orphan = eval_rows & ~has_train[users]
    if orphan.any():
        n_orphan_users = len(np.unique(users[orphan]))
        log.warning(
            "%s: %d users have valid/test interactions but none in train; their %d valid/test rows "
            "are dropped from evaluation (as MMRec does)", origin, n_orphan_users, int(orphan.sum())
        )
    keep = ~orphan
    splits = {}
    for label in (TRAIN, VALID, TEST):
        rows = keep & (labels == label)
        splits[label] = _binary_csr(users[rows], items[rows], shape)
    for label in (VALID, TEST):
        if splits[label].nnz == 0:
            raise DatasetError(
                f"{origin}: the {SPLIT_NAMES[label]} split is empty (no rows with x_label={label} "
                "for users that have training data). Re-split the data so every split has rows, "
                "e.g. with `python prepare.py`."
            )

    # chronological training histories: stable sort by (user, timestamp) keeps file order on ties
    train_rows = np.flatnonzero(is_train)
    ts = frame["timestamp"].to_numpy()[train_rows]
    order = np.lexsort((np.arange(len(train_rows)), ts, users[train_rows]))
    hist_users = users[train_rows][order]
    hist_items = items[train_rows][order]
    # a repeated (user, item) keeps its first occurrence only
    pair = hist_users * n_items + hist_items
    _, first = np.unique(pair, return_index=True)
    first.sort()
    hist_users, hist_items = hist_users[first], hist_items[first]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.add.at(indptr, hist_users + 1, 1)
    np.cumsum(indptr, out=indptr)

    return InteractionData(
        name=name,
        n_users=n_users,
        n_items=n_items,
        train=splits[TRAIN],
        valid=splits[VALID],
        test=splits[TEST],
        history_indptr=indptr,
        history_items=hist_items.astype(np.int64),
        source=source,
    )
