"""The project's processed dataset format (written by ``prepare.py`` and the demo generator).

Layout of one dataset folder (``<data_dir>/<dataset>/``)::

    processed/                   replaced as a whole (temp dir + rename), so never half-written
        manifest.json            format version, name, counts, split rule + seed, source checksums, code version
        interactions.parquet     user_id int64, item_id int64, rating float32, timestamp int64, x_label int8
        items.parquet            item_id, source_id (e.g. ASIN), title, brand, categories (list<str>:
                                 the first category path), description, image_url, image_path
                                 (relative to the dataset folder, null when absent), text (MMRec item text)
        users.parquet            user_id, source_id
    images/                      item images (download cache; resumable)
    reasoning/<mllm>/            MLLM outputs: image_descriptions.parquet, item_descriptions.parquet,
                                 user_profiles.parquet (+ generation shards and a manifest)
    cache/                       derived artefacts keyed by content hash (embeddings, graphs)
    raw/                         downloaded source files

Ids are 0-based contiguous; ``x_label`` 0 train / 1 valid / 2 test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mllmrec.cache import _umask, atomic_write_json, read_json
from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import InteractionData, interaction_data_from_frame
from mllmrec.data.validation import require_file, validate_interaction_frame

FORMAT_NAME = "mllmrec-processed"
FORMAT_VERSION = 1

INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp", "x_label"]
ITEM_COLUMNS = [
    "item_id", "source_id", "title", "brand", "categories", "description", "image_url",
    "image_path", "text",
]
USER_COLUMNS = ["user_id", "source_id"]

__all__ = [
    "DatasetLayout",
    "FORMAT_VERSION",
    "INTERACTION_COLUMNS",
    "ITEM_COLUMNS",
    "USER_COLUMNS",
    "write_processed_dataset",
    "load_processed_dataset",
    "read_items",
    "read_manifest",
    "is_processed",
]


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset folder (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def manifest(self) -> Path:
        return self.processed / "manifest.json"

    @property
    def interactions(self) -> Path:
        return self.processed / "interactions.parquet"

    @property
    def items(self) -> Path:
        return self.processed / "items.parquet"

    @property
    def users(self) -> Path:
        return self.processed / "users.parquet"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def reasoning(self, mllm: str, history: str = "train") -> Path:
        """Folder of one MLLM's outputs. Profiles built from all interactions (the authors' leaky
        reproduction switch ``reason.history=all``) live apart so they are never picked by mistake."""
        if history not in ("train", "all"):
            raise ValueError(f"history must be 'train' or 'all', got {history!r}")
        key = mllm if history == "train" else f"{mllm}__history-all"
        return self.root / "reasoning" / key


def is_processed(root: str | Path) -> bool:
    return DatasetLayout(root).manifest.is_file()


@contextlib.contextmanager
def _staging_dir(final: Path) -> Iterator[Path]:
    """A temp dir beside ``final`` that replaces ``final`` on success and vanishes on failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; `final` should read like a plain mkdir
    trash = None
    try:
        yield tmp
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, trash / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            # put the previous version back rather than leave no `final` at all
            if trash is not None and (trash / final.name).exists() and not final.exists():
                os.replace(trash / final.name, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        # the old version is dropped only once `final` is in place (new or restored)
        if trash is not None and final.exists():
            shutil.rmtree(trash, ignore_errors=True)


def _check_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing}; has {list(frame.columns)}")


def write_processed_dataset(
    root: str | Path,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    manifest: dict,
) -> DatasetLayout:
    """Write ``<root>/processed/`` atomically (staging dir + rename).

    ``manifest`` is extended with the format name/version and the counts. Extra columns in the frames
    are kept (documented columns first).
    """
    layout = DatasetLayout(root)
    _check_columns(interactions, INTERACTION_COLUMNS, "interactions")
    _check_columns(items, ITEM_COLUMNS, "items")
    _check_columns(users, USER_COLUMNS, "users")
    inter = interactions.astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float32", "timestamp": "int64",
         "x_label": "int8"}
    )
    counts = inter["x_label"].value_counts().reindex([0, 1, 2], fill_value=0)
    full_manifest = {
        **manifest,
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "n_users": int(inter["user_id"].max()) + 1,
        "n_items": int(inter["item_id"].max()) + 1,
        "n_interactions": int(len(inter)),
        "split_counts": {"train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2])},
    }
    with _staging_dir(layout.processed) as tmp:
        inter.to_parquet(tmp / layout.interactions.name, index=False)
        items.sort_values("item_id").to_parquet(tmp / layout.items.name, index=False)
        users.sort_values("user_id").to_parquet(tmp / layout.users.name, index=False)
        atomic_write_json(tmp / layout.manifest.name, full_manifest)
    return layout


def read_manifest(root: str | Path) -> dict:
    layout = DatasetLayout(root)
    path = require_file(
        layout.manifest, "processed dataset",
        f"Create it with `python prepare.py dataset=<name>` (data folder {layout.root}).",
    )
    try:
        manifest = read_json(path)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetError(
            f"{path}: not valid JSON ({err}); re-run `python prepare.py` to rebuild it."
        ) from err
    if not isinstance(manifest, dict):
        raise DatasetError(
            f"{path}: expected a JSON object, found {type(manifest).__name__}; re-run "
            "`python prepare.py` to rebuild it."
        )
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
            f"{FORMAT_NAME!r} v{FORMAT_VERSION}; re-run `python prepare.py` to rebuild it."
        )
    return manifest


def load_processed_dataset(root: str | Path, name: str | None = None) -> InteractionData:
    """Load ``<root>/processed`` as :class:`InteractionData` (features are attached by the caller)."""
    layout = DatasetLayout(root)
    manifest = read_manifest(root)
    frame = pd.read_parquet(layout.interactions)
    columns = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "x_label": "x_label"}
    checked = validate_interaction_frame(frame, layout.interactions, columns)
    data = interaction_data_from_frame(
        checked, name=name or manifest.get("name", layout.root.name), source=layout.root,
        origin=str(layout.interactions),
    )
    data.extras["manifest"] = manifest
    return data


def read_items(root: str | Path, n_items: int | None = None) -> pd.DataFrame:
    """The items table, indexed by contiguous ``item_id`` (checked against ``n_items``)."""
    layout = DatasetLayout(root)
    require_file(layout.items, "items table", "Re-run `python prepare.py` for this dataset.")
    items = pd.read_parquet(layout.items)
    ids = items["item_id"].to_numpy()
    expected = n_items if n_items is not None else len(items)
    if len(items) != expected or not np.array_equal(ids, np.arange(expected)):
        raise DatasetError(
            f"{layout.items}: item_id must be exactly 0..{expected - 1} (one row per item); found "
            f"{len(items)} rows. Re-run `python prepare.py` for this dataset."
        )
    return items
