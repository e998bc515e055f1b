"""The new-items table of ``python recommend.py run=<run> new_items=<table>``: items that were not in
the training data (a new catalogue season, products added after the run), to be scored by a trained
MLLMRec from their content (docs/cold_start.md).

The table has the schema of ``dataset=custom``'s items table (docs/prepare.md): an item id column, a
title, text columns (joined after the title, in order) and an image column of file paths (relative to
the table's folder, or absolute) or http(s) URLs. The column names are configured like
``dataset.item_columns``: the run's own ``dataset.item_columns`` when it was trained on a custom
dataset, else :data:`NEW_ITEM_COLUMNS`, each replaceable by ``new_items.<key>=<column>``.

Checked here, before any model is loaded: the file and the named columns exist, every row has an id,
no id repeats and none is already a catalogue item id. An image file that does not exist is not an
error: the item keeps its text, and the reasoning stage reports it as ``unreadable`` (as it does for
catalogue items).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mllmrec.data.errors import DatasetError
from mllmrec.data.text import clean_text
from mllmrec.prepare.custom import (
    ITEM_KEYS,
    TABLE_SUFFIXES,
    checked_item_columns,
    item_fields,
    read_table,
    require_columns,
)

log = logging.getLogger(__name__)

__all__ = ["NEW_ITEM_COLUMNS", "NewItems", "new_item_columns", "read_new_items"]

#: the columns of a new-items table when the run's dataset has no ``dataset.item_columns`` (the
#: layout of ``mllmrec.data.demo.export_demo_new_items`` and of docs/prepare.md's items.csv)
NEW_ITEM_COLUMNS: dict[str, Any] = {"item": "item_id", "title": "title", "text": ["description"], "image": "image"}


@dataclass(frozen=True)
class NewItems:
    """The new items of one table, in table order (N rows).

    ``ids`` [N] raw ids (strings); ``titles`` [N] (None when empty); ``texts`` [N] the item text
    (title + text columns, the custom dataset's rule); ``images`` [N] an absolute local path, an
    http(s) URL, or None.
    """

    table: Path
    ids: np.ndarray
    titles: list[str | None]
    texts: list[str]
    images: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


def new_item_columns(dataset_cfg: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The column mapping: the run's ``dataset.item_columns`` (custom datasets) or
    :data:`NEW_ITEM_COLUMNS`, with the ``new_items.<key>`` values ``given`` on top (``text`` as a
    comma-separated string or a list; ``null`` / empty = no such column)."""
    base = dict(dataset_cfg.get("item_columns") or NEW_ITEM_COLUMNS)
    for key, value in given.items():
        if key not in ITEM_KEYS:
            raise DatasetError(f"new_items.{key}: unknown key; the new-items table's columns are set with "
                               f"new_items.<{'|'.join(ITEM_KEYS)}>=<column>")
        if isinstance(value, str):
            value = None if value.strip().lower() in ("", "null", "none") else value
            if key == "text" and value is not None:
                value = [c.strip() for c in value.strip("[]").split(",") if c.strip()]
        base[key] = value
    return checked_item_columns(base, "new_items")


def _table_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"new_items={path}: no such file. Give a CSV, TSV or parquet table of new items "
                           "(item id, title, text columns, image path or URL; docs/cold_start.md).")
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        raise DatasetError(f"new_items={path}: expected a table file ending in one of {TABLE_SUFFIXES}.")
    return path


def _image_reference(value: object, folder: Path) -> str | None:
    """An image cell as a URL or an absolute path (relative paths are taken from the table's folder)."""
    text = clean_text(value)
    if not text:
        return None
    if text.startswith(("http://", "https://")):
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def read_new_items(path: str | Path, columns: Mapping[str, Any], catalogue_ids: Sequence[Any]) -> NewItems:
    """Read and check a new-items table (module docstring); ``catalogue_ids`` are the trained
    dataset's raw item ids (compared as strings). Raises :class:`DatasetError` naming the file,
    the column and the offending ids."""
    path = _table_path(path)
    id_column = columns.get("item")
    if not id_column:
        raise DatasetError("new_items.item is not set: name the item id column of the new-items table.")
    frame = read_table(path, string_columns=[id_column])
    # a default image column the table does not have means "no images"; a named one must exist
    image_column = columns.get("image")
    if image_column == NEW_ITEM_COLUMNS["image"] and image_column not in frame.columns:
        columns = {**columns, "image": None}
    wanted = {"item": id_column, "title": columns.get("title"), "image": columns.get("image"),
              **{f"text[{j}]": c for j, c in enumerate(columns["text"])}}
    require_columns(frame, wanted, "new_items", path)
    if frame.empty:
        raise DatasetError(f"new_items={path}: the table has no rows.")
    ids = frame[id_column].map(clean_text)
    if (ids == "").any():
        rows = np.flatnonzero((ids == "").to_numpy())[:5] + 2  # +2: the header line, 1-based
        raise DatasetError(f"new_items={path}: {int((ids == '').sum())} row(s) have no item id in column "
                           f"{id_column!r} (e.g. line {', '.join(map(str, rows))}). Give every new item an id.")
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        shown = ", ".join(repeated[:10]) + (" ..." if len(repeated) > 10 else "")
        raise DatasetError(f"new_items={path}: {len(repeated)} item id(s) appear more than once in column "
                           f"{id_column!r}: {shown}. Each new item needs its own id.")
    known = {str(i) for i in catalogue_ids}
    clashing = [i for i in ids if i in known]
    if clashing:
        shown = ", ".join(clashing[:10]) + (" ..." if len(clashing) > 10 else "")
        raise DatasetError(f"new_items={path}: {len(clashing)} item id(s) are already catalogue items of the "
                           f"run's dataset: {shown}. New items need ids the catalogue does not use (catalogue "
                           "items are recommended without new_items=).")
    titles, _, texts = item_fields(frame, columns)
    images = ([_image_reference(v, path.parent) for v in frame[columns["image"]]] if columns.get("image")
              else [None] * len(frame))
    log.info("new items: %d from %s (%d with an image path or URL)", len(frame), path,
             sum(i is not None for i in images))
    return NewItems(path, ids.to_numpy(dtype=object), titles, texts, images)
