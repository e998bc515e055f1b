"""Checks on raw interaction tables and feature files, run before any heavy work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mllmrec.data.errors import DatasetError, did_you_mean

__all__ = ["validate_interaction_frame", "load_feature_matrix", "require_file"]


def require_file(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise DatasetError(f"{what}: folder {path.parent} (for {path.name}) does not exist. {hint}")
    if not path.is_file():
        present = sorted(p.name for p in path.parent.iterdir())[:20]
        raise DatasetError(
            f"{what}: file {path} does not exist{did_you_mean(path.name, present)}. "
            f"Folder holds: {present}. {hint}"
        )
    return path


def validate_interaction_frame(
    frame: pd.DataFrame, path: Path, columns: dict[str, str]
) -> pd.DataFrame:
    """Check and rename an interactions table to ``user, item, timestamp, x_label``.

    ``columns`` maps our names to the file's column names (e.g. ``{"user": "userID", ...}``).
    Raises :class:`DatasetError` naming the file and column for missing/misspelled columns,
    non-integer or negative ids and labels outside {0, 1, 2}.
    """
    missing = [col for col in columns.values() if col not in frame.columns]
    if missing:
        hints = "; ".join(f"{m!r}{did_you_mean(m, frame.columns)}" for m in missing)
        raise DatasetError(
            f"{path}: missing column(s) {hints}. Found columns {list(frame.columns)}; "
            f"expected {list(columns.values())} (header line, tab-separated)."
        )
    if len(frame) == 0:
        raise DatasetError(f"{path}: no interaction rows.")
    out = {}
    for ours, theirs in columns.items():
        col = frame[theirs]
        if ours == "timestamp":
            values = pd.to_numeric(col, errors="coerce")
            if values.isna().any():
                bad = int(values.isna().sum())
                raise DatasetError(f"{path}: column {theirs!r} has {bad} non-numeric values.")
            out[ours] = values.to_numpy()
            continue
        values = pd.to_numeric(col, errors="coerce")
        # inf passes the floor test and huge values overflow the int64 cast: both are not ids
        non_int = (
            values.isna() | ~np.isfinite(values) | (values.abs() >= 2**63) | (values != np.floor(values))
        )
        if non_int.any():
            row = int(np.flatnonzero(non_int.to_numpy())[0])
            raise DatasetError(
                f"{path}: column {theirs!r} must hold integers; row {row + 1} has {col.iloc[row]!r} "
                f"({int(non_int.sum())} bad rows). Ids must be 0-based contiguous integers."
            )
        values = values.to_numpy().astype(np.int64)
        if ours == "x_label":  # before the id check, so -1 gets this message rather than "ids must..."
            bad = ~np.isin(values, (0, 1, 2))
            if bad.any():
                raise DatasetError(
                    f"{path}: column {theirs!r} must be 0 (train), 1 (valid) or 2 (test); found "
                    f"{sorted(set(values[bad].tolist()))[:5]} in {int(bad.sum())} rows."
                )
        if (values < 0).any():
            row = int(np.flatnonzero(values < 0)[0])
            raise DatasetError(
                f"{path}: column {theirs!r} has negative value {values[row]} at row {row + 1}; "
                "ids must be 0-based non-negative integers."
            )
        out[ours] = values
    return pd.DataFrame(out)


def load_feature_matrix(path: Path, n_rows: int, what: str) -> np.ndarray:
    """Load a ``.npy`` feature matrix [n_rows, d], cast to float32, with shape and finiteness checks.

    The shape is checked through a memory map before the data are read.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{what} features: file {path} does not exist. Set the file name in the dataset config "
            "or produce it (reason/encode stages)."
        )
    if path.stat().st_size == 0:
        raise DatasetError(f"{what} features: {path} is empty (0 bytes): an interrupted copy or export? "
                           "Copy or recompute the file.")
    try:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DatasetError(f"{what} features: {path} is not a plain .npy array ({err}).") from err
    except (EOFError, OSError) as err:  # truncated header or data: the memory map cannot cover it
        raise DatasetError(f"{what} features: {path} is truncated or corrupt ({type(err).__name__}: {err}). "
                           "Copy or recompute the file.") from err
    if mm.ndim != 2:
        raise DatasetError(f"{what} features: {path} must be 2-D [rows, dim], has shape {mm.shape}.")
    if mm.shape[0] != n_rows:
        raise DatasetError(
            f"{what} features: {path} has {mm.shape[0]} rows but the dataset has {n_rows} {what}s "
            "(row i must be id i). Was it made for another dataset or another id mapping?"
        )
    if not np.issubdtype(mm.dtype, np.floating):
        raise DatasetError(f"{what} features: {path} has dtype {mm.dtype}; expected float32/float64.")
    features = np.array(mm, dtype=np.float32)  # a writable in-memory copy, not the read-only map
    bad_rows = ~np.isfinite(features).all(axis=1)
    if bad_rows.any():
        raise DatasetError(
            f"{what} features: {path} has NaN/inf in {int(bad_rows.sum())} of {n_rows} rows "
            f"(first: row {int(np.flatnonzero(bad_rows)[0])}). Recompute or impute them."
        )
    return features
