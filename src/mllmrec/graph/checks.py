"""The one argument check of the graph package: every public function validates here, once, at its entry.

Each argument name has exactly one rule (:data:`_RULES`); the public functions call :func:`check_args`
with the arguments they take and then hand the checked values to unchecked internals, so no parameter
is validated twice on one call path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["check_args"]


def _integer(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    return check


def _cosine_threshold(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(value)
        or not -1.0 <= value <= 1.0
    ):
        raise ValueError(f"{name} must be a real number in [-1, 1] (a cosine similarity), got {value!r}")
    return float(value)


def _features(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.layout != torch.strided:
        raise ValueError(f"{name} must be a dense torch.Tensor [I, d], got {type(value).__name__}")
    if value.dim() != 2 or value.shape[1] == 0:
        raise ValueError(f"{name} must have shape [I, d] with d >= 1, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return value


def _binary_interactions(name: str, value: Any) -> sp.csr_matrix:
    """Canonical binary CSR copy: every stored non-zero counts as one interaction.

    Duplicate entries are merged and explicit zeros dropped, so a rating matrix, a COO list with
    repeated pairs and a clean 0/1 matrix with the same support give the same result (and cache key).
    """
    if not sp.issparse(value):
        raise ValueError(
            f"{name} must be a scipy.sparse matrix [U, I] (dense U x I matrices are not accepted), "
            f"got {type(value).__name__}"
        )
    if len(value.shape) != 2:
        raise ValueError(f"{name} must be 2-D [U, I], got shape {value.shape}")
    csr = sp.csr_matrix(value, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data = np.ones_like(csr.data, dtype=np.int32)
    csr.sort_indices()
    return sp.csr_matrix((csr.data, csr.indices, csr.indptr), shape=csr.shape, dtype=np.int32)


# function-level imports: graph.ann builds on graph.knn, which checks its arguments here
def _knn_method(name: str, value: Any) -> str:
    from mllmrec.graph.ann import KNN_METHODS

    if value not in KNN_METHODS:
        raise ValueError(f"{name} must be one of {', '.join(KNN_METHODS)}, got {value!r}")
    return str(value)


def _ann_params(name: str, value: Any) -> Any:
    from mllmrec.graph.ann import AnnParams

    if value is None:
        return AnnParams()
    if not isinstance(value, AnnParams):
        raise ValueError(f"{name} must be a mllmrec.graph.AnnParams or None, got {type(value).__name__}")
    return value


# One rule per argument name. k_c = 0 is "no co-occurrence graph" (the ablation) everywhere.
_RULES: dict[str, Callable[[str, Any], Any]] = {
    "features": _features,
    "interactions": _binary_interactions,
    "k_s": _integer(1),
    "alpha": _cosine_threshold,
    "k_c": _integer(0),
    "layers": _integer(0),
    "chunk_size": _integer(1),
    "knn_method": _knn_method,
    "ann": _ann_params,
}


def check_args(**arguments: Any) -> dict[str, Any]:
    """Checked, canonical values of the graph functions' ``arguments`` (same names, same order).

    ``features`` -> the tensor itself (dense, floating, finite, ``[I, d]``); ``interactions`` -> a
    binary int32 CSR copy ``[U, I]``; ``k_s >= 1``, ``k_c >= 0``, ``layers >= 0``, ``chunk_size >= 1``
    -> ``int``; ``alpha`` in ``[-1, 1]`` -> ``float``; ``knn_method`` one of ``exact``, ``faiss``,
    ``auto``; ``ann`` an :class:`~mllmrec.graph.ann.AnnParams` (None -> the defaults). Given both,
    ``interactions`` must have as many item columns as ``features`` has rows. A bad value raises :class:`ValueError` naming the argument.
    """
    unknown = sorted(set(arguments) - set(_RULES))
    if unknown:  # a programming error inside the package, not a user input
        raise TypeError(f"check_args has no rule for {unknown}")
    checked = {name: _RULES[name](name, value) for name, value in arguments.items()}
    if "features" in checked and "interactions" in checked:
        n_items, n_columns = checked["features"].shape[0], checked["interactions"].shape[1]
        if n_columns != n_items:
            raise ValueError(
                f"interactions has {n_columns} item columns but features has {n_items} item rows; "
                "both must index the same items"
            )
    return checked
