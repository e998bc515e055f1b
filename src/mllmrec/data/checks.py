"""Start-up checks of a loaded dataset: inputs that train without error but give a silently wrong result.

Run by the datamodule at setup, after the (cheap, sparse) interactions are loaded and before any
encoding, graph or model is built; ``prepare.py``'s MMRec import runs them too. Each check logs one
warning with counts when part of the input is suspect and raises :class:`DatasetError` (naming the
file and the fix) when the input cannot give a meaningful result:

* :func:`check_id_ranges`: ids far beyond the number of distinct ids (one stray ``10^7`` id would
  size every user/item table by it);
* :func:`check_split_overlap`: (user, item) pairs in train and in valid/test. Evaluation masks
  training items, so such a truth item can never be hit; a split where every truth item is masked
  is unreachable (Recall 0 whatever the model);
* :func:`check_feature_rows`: all-zero, constant and duplicated feature rows;
* :func:`check_texts`: empty item texts (they all encode to the same vector).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from mllmrec.data.errors import DatasetError

if TYPE_CHECKING:  # interactions.py imports this module (check_id_ranges)
    from mllmrec.data.interactions import InteractionData

log = logging.getLogger(__name__)

# an id range is "far beyond" the ids in use when more than this many ids AND more than half of the
# range are unused (MMRec ids are contiguous; a few users dropped by k-core filtering are fine)
UNUSED_IDS_TOLERATED = 1000

__all__ = ["check_id_ranges", "check_split_overlap", "check_feature_rows", "check_texts",
           "FeatureRowReport", "feature_row_report", "check_loaded_dataset"]


def check_id_ranges(users: np.ndarray, items: np.ndarray, origin: str) -> None:
    """Raise when the largest user/item id is far beyond the number of distinct ids.

    ``n = max id + 1`` sizes every embedding table, adjacency and feature check, so one stray id of
    ``10^7`` in a file of a few thousand users means gigabytes of memory for rows no one uses. Cheap:
    it looks at the id columns only, before anything is allocated from ``n``.

    Shapes: users [N], items [N] (the id columns of the interaction file).
    """
    for what, ids in (("user", users), ("item", items)):
        if len(ids) == 0:
            continue
        n_range = int(ids.max()) + 1
        n_used = len(np.unique(ids))
        unused = n_range - n_used
        if unused > UNUSED_IDS_TOLERATED and unused > n_used:
            top = np.sort(np.unique(ids))[-3:].tolist()
            raise DatasetError(
                f"{origin}: {what} ids range up to {n_range - 1:,} but only {n_used:,} distinct {what} ids "
                f"are used (largest: {top}); every {what} table would get {n_range:,} rows. Ids must be "
                "0-based and contiguous: remap them (e.g. `python prepare.py`) or remove the stray rows."
            )


def _masked_pairs(truth: sp.csr_matrix, exclude: sp.csr_matrix) -> sp.csr_matrix:
    """Truth pairs that are also in ``exclude`` (element-wise product of the binary matrices)."""
    return truth.multiply(exclude).tocsr()


def check_split_overlap(data: InteractionData, origin: str, exclude_valid_at_test: bool = False) -> dict:
    """Warn about (user, item) pairs of valid/test that evaluation masks; raise for an unreachable split.

    Full-ranking evaluation removes a user's training items (and, with ``exclude_valid_at_test``, the
    validation items at test time) from the ranking, so a truth pair that is also in the masked set can
    never be retrieved. Returns ``{split: number of masked truth pairs}``.
    """
    exclude_test = data.train + data.valid if exclude_valid_at_test else data.train
    counts = {}
    for split, truth, exclude, masked_by in (
        ("valid", data.valid, data.train, "train"),
        ("test", data.test, (exclude_test > 0).astype(np.float32).tocsr(),
         "train and valid" if exclude_valid_at_test else "train"),
    ):
        masked = _masked_pairs(truth, exclude)
        counts[split] = int(masked.nnz)
        if masked.nnz == 0:
            continue
        reachable = truth.nnz - masked.nnz
        if reachable == 0:
            raise DatasetError(
                f"{origin}: every one of the {truth.nnz:,} {split} pairs (user, item) is also in {masked_by}. "
                f"Evaluation masks {masked_by} items, so the {split} split is unreachable (recall 0 for any "
                f"model). Re-split the data so {split} holds interactions that are not in {masked_by}."
            )
        users_all_masked = int(np.sum((np.diff(truth.indptr) > 0) & (np.diff(truth.indptr) == np.diff(masked.indptr))))
        log.warning(
            "%s: %d of %d %s pairs (user, item) are also in %s; evaluation masks them, so they can never "
            "be hit (%d users have no reachable %s item). Metrics are lower than the model deserves; "
            "de-duplicate the splits to fix it.", origin, masked.nnz, truth.nnz, split, masked_by,
            users_all_masked, split,
        )
    return counts


@dataclass(frozen=True)
class FeatureRowReport:
    """Counts of degenerate rows of a feature matrix [n, d]."""

    n_rows: int
    zero: int          # every value 0
    constant: int      # every value equal, but not 0 (carries no direction beyond the all-ones one)
    duplicated: int    # equal to an earlier row (zero and constant rows excluded)
    distinct: int      # distinct rows

    @property
    def degenerate(self) -> int:
        return self.zero + self.constant + self.duplicated

    @property
    def all_degenerate(self) -> bool:
        """Every row is zero or constant, or all rows are one and the same vector."""
        return self.n_rows > 0 and (self.zero + self.constant == self.n_rows or self.distinct <= 1)


def feature_row_report(features: np.ndarray) -> FeatureRowReport:
    """Count zero, constant and duplicated rows of ``features``.

    Shapes: features [n, d] -> counts.
    """
    x = np.ascontiguousarray(features)
    n = x.shape[0]
    if n == 0:
        return FeatureRowReport(0, 0, 0, 0, 0)
    zero = ~x.any(axis=1)
    constant = (x == x[:, :1]).all(axis=1) & ~zero
    # rows as opaque byte strings: exact duplicates, in O(n log n) without comparing row pairs
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    is_first = np.zeros(n, dtype=bool)
    is_first[first] = True
    duplicated = ~is_first & ~zero & ~constant
    return FeatureRowReport(n, int(zero.sum()), int(constant.sum()), int(duplicated.sum()), len(first))


def check_feature_rows(features: np.ndarray, what: str, origin: str) -> FeatureRowReport:
    """Warn with counts about zero / constant / duplicated rows; raise when all rows are degenerate.

    All-zero item features train (no error anywhere) to far below popularity: cosine similarities,
    the kNN graph and the item tower all collapse. Shapes: features [n, d].
    """
    report = feature_row_report(features)
    if report.all_degenerate:
        raise DatasetError(
            f"{origin}: the {what} features carry no information: of {report.n_rows:,} rows, {report.zero:,} "
            f"are all zero, {report.constant:,} constant, and there are {report.distinct:,} distinct rows. "
            "Recompute the features (a failed export or an empty text column gives this)."
        )
    if report.degenerate:
        log.warning(
            "%s: %d of %d %s feature rows are degenerate: %d all zero, %d constant, %d duplicates of another "
            "row. Those %ss are indistinguishable to the model; check how the features were made.",
            origin, report.degenerate, report.n_rows, what, report.zero, report.constant, report.duplicated, what,
        )
    return report


def check_texts(texts: list[str], what: str, origin: str) -> int:
    """Warn about empty texts (all encode to one and the same vector); raise when every text is empty.

    Returns the number of empty texts.
    """
    empty = sum(1 for t in texts if not str(t).strip())
    if texts and empty == len(texts):
        raise DatasetError(
            f"{origin}: all {len(texts):,} {what} texts are empty, so every {what} would get the same "
            "embedding. Check the text columns of the dataset (rerun prepare.py / reason.py)."
        )
    if empty:
        log.warning("%s: %d of %d %s texts are empty; those %ss all get the same embedding",
                    origin, empty, len(texts), what, what)
    return empty


def check_loaded_dataset(
    data: InteractionData, origin: str, feature_origins: dict[str, str] | None = None,
    exclude_valid_at_test: bool = False,
) -> None:
    """Split overlap of ``data`` and, for each of its feature matrices present, the degenerate-row check.

    ``origin`` names the interaction file, ``feature_origins`` (``{"item": ..., "user": ...}``) the
    feature files (default: ``origin``).
    """
    check_split_overlap(data, origin, exclude_valid_at_test)
    feature_origins = feature_origins or {}
    for what, features in (("item", data.item_features), ("user", data.user_features)):
        if features is not None:
            check_feature_rows(features, what, feature_origins.get(what, origin))
