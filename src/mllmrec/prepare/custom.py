"""``python prepare.py dataset=custom``: your own interactions file (+ an optional items table).

Steps:
    1. check the files and the configured column names (before anything heavy);
    2. compare a key of (the files' sha256, column mapping, k-core, split rule + seed, code version)
       with the present manifest: equal means "up to date";
    3. drop rows missing user/item/time and repeated (user, item, time) rows, k-core
       (``prepare.k_core``), 0-based ids in order of first appearance (:mod:`~mllmrec.prepare.kcore`);
    4. split by ``prepare.split_mode`` (random = MMRec's rule, chronological, leave_one_out), seeded
       by ``dataset.split_seed``;
    5. the items table: title + text fields -> the item text; images from local files (copied into
       ``<root>/images/``) or URLs (downloaded like Amazon's);
    6. :func:`mllmrec.data.write_processed_dataset` (atomic). The raw user and item ids are kept as
       ``source_id`` in ``users.parquet`` / ``items.parquet``: the id maps every output uses.

Items without any text or image give every item the same features in models that read content
(MLLMRec, VBPR): this module names the missing or empty column when it prepares the data, and
``train.py`` refuses to train such a model on identical features.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mllmrec import __version__
from mllmrec.cache import file_lock, read_json, stable_hash
from mllmrec.data.errors import DatasetError
from mllmrec.data.processed import FORMAT_VERSION, DatasetLayout, write_processed_dataset
from mllmrec.data.split import mmrec_split
from mllmrec.data.text import clean_text, mmrec_item_text
from mllmrec.prepare.download import sha256_file
from mllmrec.prepare.images import fetch_images, is_valid_image
from mllmrec.prepare.kcore import FilteredInteractions, encode_interactions, mmrec_filter
from mllmrec.prepare.pipeline import PREPARE_VERSION, PrepareOptions, PrepareOutcome, manifest_key_matches

log = logging.getLogger(__name__)

__all__ = ["CustomSource", "prepare_custom", "read_table", "timestamps_as_int", "checked_item_columns", "require_columns",
           "item_fields", "ITEM_KEYS", "TABLE_SUFFIXES"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")
INTERACTION_KEYS = ("user", "item", "timestamp", "rating")
ITEM_KEYS = ("item", "title", "text", "image")


@dataclass(frozen=True)
class CustomSource:
    """The ``dataset=custom`` config: files and the column names in them (``conf/dataset/custom.yaml``).

    ``columns``: ``user``, ``item``, ``timestamp`` (required), ``rating`` (or None). ``item_columns``:
    ``item`` (required when there is an items table), ``title`` (or None), ``text`` (a list of text
    columns joined in order after the title), ``image`` (a column of image file paths, relative to the
    items file, or http(s) URLs; or None).
    """

    interactions: Path
    items: Path | None
    columns: Mapping[str, str | None]
    item_columns: Mapping[str, Any]

    @classmethod
    def from_config(cls, ds: Mapping[str, Any]) -> CustomSource:
        """Check the files exist and the column keys are known (not yet what the files hold)."""
        hint = ("Point it at your interactions file (CSV, TSV or parquet with user, item and timestamp "
                "columns): python prepare.py dataset=custom dataset.interactions=/path/to/interactions.csv "
                "(docs/prepare.md, 'Bring your own data').")
        if not ds.get("interactions"):
            raise DatasetError(f"dataset.interactions is not set. {hint}")
        interactions = _existing_table(ds["interactions"], "dataset.interactions", hint)
        items = None
        if ds.get("items"):
            items = _existing_table(ds["items"], "dataset.items",
                                    "Point it at your items table, or set dataset.items=null.")
        columns = dict(ds.get("columns") or {})
        item_columns = dict(ds.get("item_columns") or {})
        unknown = sorted(set(columns) - set(INTERACTION_KEYS))
        if unknown:
            raise DatasetError(f"dataset.columns has unknown key(s) {unknown}; known keys: {list(INTERACTION_KEYS)}.")
        item_columns = checked_item_columns(item_columns, "dataset.item_columns")
        for key in ("user", "item", "timestamp"):
            if not columns.get(key):
                raise DatasetError(f"dataset.columns.{key} is not set: name the {key} column of {interactions}.")
        if items is not None and not item_columns.get("item"):
            raise DatasetError(f"dataset.item_columns.item is not set: name the item id column of {items}.")
        return cls(interactions, items, columns, item_columns)

    def identity(self) -> dict[str, Any]:
        """What the prepared data depends on besides parameters: file contents and the column mapping."""
        files = {"interactions": sha256_file(self.interactions)}
        if self.items is not None:
            files["items"] = sha256_file(self.items)
        return {"files": files, "columns": dict(self.columns), "item_columns": dict(self.item_columns)}


def _existing_table(path: str | Path, key: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{key}={path}: no such file. {hint}")
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        raise DatasetError(f"{key}={path}: expected a table file ending in one of {TABLE_SUFFIXES}.")
    return path


def read_table(path: Path, string_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV / TSV (optionally gzipped) or parquet file; ``string_columns`` are read as text so that
    ids such as ``007`` keep their form."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame = pd.read_parquet(path)
            for col in string_columns:
                if col in frame.columns:
                    frame[col] = frame[col].astype("string")
            return frame
        sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
        return pd.read_csv(path, sep=sep, dtype={c: "string" for c in string_columns})
    except (ValueError, OSError, pa.ArrowException) as err:  # parse errors, unreadable files
        raise DatasetError(f"{path}: cannot be read as a table ({err}).") from err


def checked_item_columns(item_columns: Mapping[str, Any], node: str) -> dict[str, Any]:
    """An items table's column mapping (``item``, ``title``, ``text``, ``image``) with its keys checked
    (an unknown one is a DatasetError naming ``<node>``) and ``text`` as a list of column names."""
    unknown = sorted(set(item_columns) - set(ITEM_KEYS))
    if unknown:
        raise DatasetError(f"{node} has unknown key(s) {unknown}; known keys: {list(ITEM_KEYS)}.")
    checked = dict(item_columns)
    text = checked.get("text") or []
    checked["text"] = [text] if isinstance(text, str) else list(text)
    return checked


def require_columns(frame: pd.DataFrame, wanted: Mapping[str, str | None], node: str, path: Path) -> None:
    """DatasetError naming ``<node>.<key>`` (e.g. ``dataset.columns.user``) for each configured column
    the file lacks, with the file's columns."""
    for key, column in wanted.items():
        if column and column not in frame.columns:
            raise DatasetError(
                f"{node}.{key}={column!r} is not a column of {path} (its columns: "
                f"{list(frame.columns)}). Set {node}.{key}=<column name>"
                + (" or null." if key not in ("user", "item", "timestamp") else ".")
            )


def item_fields(rows: pd.DataFrame, item_columns: Mapping[str, Any]) -> tuple[list[str | None], list[str | None], list[str]]:
    """Per row of an items table: (title, description, item text).

    title = the ``title`` column cleaned; description = the ``text`` columns cleaned and joined with
    spaces, in order; item text = ``mmrec_item_text(title, None, [], description)`` (MMRec's
    concatenation: title then the text fields). Empty values are None in title and description.
    Used for the custom dataset's items and for the new items of ``recommend.py new_items=``.
    """
    n = len(rows)
    titles = rows[item_columns["title"]].map(clean_text).tolist() if item_columns.get("title") else [""] * n
    texts = [rows[c].map(clean_text).tolist() for c in item_columns["text"]]
    descriptions = [" ".join(t for t in parts if t) for parts in zip(*texts)] if texts else [""] * n
    item_texts = [mmrec_item_text(t or None, None, [], d or None) for t, d in zip(titles, descriptions)]
    return [t or None for t in titles], [d or None for d in descriptions], item_texts


def timestamps_as_int(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Timestamps as nullable int64: numbers as they are (rounded), text as dates -> unix seconds.

    Unparseable values become missing (their rows are dropped and counted like MMRec's dropna).
    """
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() >= values.notna().sum():
        return numeric.round().astype("Int64")
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    if parsed.notna().sum() == 0:
        raise DatasetError(
            f"{path}: column {column!r} (dataset.columns.timestamp) holds neither numbers nor dates, "
            f"e.g. {values.dropna().iloc[0]!r}. Use unix seconds or ISO 8601 dates."
        )
    seconds = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype("Int64")


def _interaction_table(source: CustomSource) -> pa.Table:
    """The interactions as the k-core's input: user, item (string), rating (float), timestamp (int)."""
    cols = source.columns
    frame = read_table(source.interactions, string_columns=[cols["user"], cols["item"]])
    require_columns(frame, cols, "dataset.columns", source.interactions)
    rating = (pd.to_numeric(frame[cols["rating"]], errors="coerce") if cols.get("rating")
              else pd.Series(np.nan, index=frame.index))
    return pa.table({
        "user": pa.array(frame[cols["user"]].astype("string"), type=pa.string(), from_pandas=True),
        "item": pa.array(frame[cols["item"]].astype("string"), type=pa.string(), from_pandas=True),
        "rating": pa.array(rating.astype("float32"), type=pa.float32(), from_pandas=True),
        "timestamp": pa.array(timestamps_as_int(frame[cols["timestamp"]], source.interactions,
                                                cols["timestamp"]), type=pa.int64(), from_pandas=True),
    })


def _image_paths(values: pd.Series, items_file: Path, layout: DatasetLayout, opts: PrepareOptions,
                 ) -> tuple[dict[int, str], list[str | None], int]:
    """Images of each item id (the index of ``values``): local files are copied into
    ``<root>/images/<id><suffix>``, URLs are downloaded (when ``prepare.images``). Returns
    (relative paths of present images, the URLs, number of local paths that are missing or unreadable)."""
    urls: list[str | None] = [None] * len(values)
    paths: dict[int, str] = {}
    missing = 0
    layout.images.mkdir(parents=True, exist_ok=True)
    for item_id, value in values.items():
        value = clean_text(value)
        if not value:
            continue
        if value.startswith(("http://", "https://")):
            urls[item_id] = value
            continue
        src = Path(value) if Path(value).is_absolute() else items_file.parent / value
        if not src.is_file() or not is_valid_image(src):
            missing += 1
            continue
        dest = layout.images / f"{item_id}{src.suffix.lower() or '.jpg'}"
        shutil.copyfile(src, dest)
        paths[item_id] = f"images/{dest.name}"
    if any(urls):
        if opts.images:
            report = fetch_images(urls, layout.images, workers=int(opts.image_workers),
                                  timeout_s=float(opts.image_timeout_s), retries=int(opts.image_retries),
                                  backoff_s=float(opts.backoff_s), progress=opts.progress)
            paths.update(report.paths)
        else:
            log.warning("%d items have image URLs and prepare.images=false: they are not downloaded",
                        sum(u is not None for u in urls))
    return paths, urls, missing


def build_custom_items(
    source: CustomSource, filtered: FilteredInteractions, layout: DatasetLayout, opts: PrepareOptions,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The items table (processed.py's ITEM_COLUMNS) and what it lacks (for the manifest and logs).

    Item text = ``title`` then each ``text`` column, cleaned and joined with spaces (MMRec's
    concatenation; no brand or category path unless you list those columns under ``text``).
    """
    n_items = filtered.n_items
    raw_ids = pd.Series(filtered.item_source.astype(str))
    ic = source.item_columns
    rows = pd.DataFrame(index=range(n_items))
    image_values = pd.Series([None] * n_items, dtype=object)
    report: dict[str, Any] = {"table": str(source.items) if source.items else None,
                              "columns": {k: ic.get(k) for k in ITEM_KEYS}, "empty_columns": []}
    if source.items is None:
        log.warning(
            "dataset.items is not set: items have no title, text or image. BPR and LightGCN train on ids "
            "alone; MLLMRec and VBPR read item content and train.py refuses to run them on identical "
            "features. Set dataset.items=<items table> with a title and/or text columns."
        )
        report["items_without_row"] = n_items
    else:
        frame = read_table(source.items, string_columns=[ic["item"]])
        wanted = {"item": ic["item"], "title": ic.get("title"), "image": ic.get("image"),
                  **{f"text[{j}]": c for j, c in enumerate(ic["text"])}}
        require_columns(frame, wanted, "dataset.item_columns", source.items)
        repeated = int(frame[ic["item"]].duplicated().sum())
        if repeated:
            log.warning("%s: %d rows repeat an item id (column %r); the first row of each id is used",
                        source.items, repeated, ic["item"])
        frame = frame.drop_duplicates(ic["item"], keep="first").set_index(ic["item"])
        rows = frame.reindex(raw_ids.to_numpy())
        without_row = int((~rows.index.isin(frame.index)).sum())
        report["items_without_row"] = without_row
        if without_row:
            log.warning("%s: %d of %d items of the interactions have no row (column %r); their text is "
                        "empty", source.items, without_row, n_items, ic["item"])
        rows = rows.reset_index(drop=True)
        if ic.get("image"):
            image_values = rows[ic["image"]]
        for key, column in (("title", ic.get("title")), *(("text", c) for c in ic["text"]),
                            ("image", ic.get("image"))):
            if column and rows[column].map(clean_text).eq("").all():
                report["empty_columns"].append(column)
                log.warning("%s: column %r (dataset.item_columns.%s) is empty for every item",
                            source.items, column, key)
    fields = (ic if source.items is not None else {"title": None, "text": []})
    titles, descriptions, texts = item_fields(rows, fields)
    paths, urls, missing_images = _image_paths(image_values, source.items or source.interactions, layout, opts)
    if missing_images:
        log.warning("%s: %d image paths (column %r) name no readable image file", source.items,
                    missing_images, ic.get("image"))
    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64),
        "source_id": raw_ids,
        "title": titles,
        "brand": None,
        "categories": [[] for _ in range(n_items)],
        "description": descriptions,
        "image_url": urls,
        "image_path": [paths.get(i) for i in range(n_items)],
        "text": texts,
    })
    report["without_text"] = int((items["text"] == "").sum())
    report["with_image"] = len(paths)
    report["missing_image_files"] = missing_images
    if report["without_text"] == n_items and not paths:
        log.warning("%s", _no_content_message(report))
    return items, report


def _no_content_message(report: Mapping[str, Any]) -> str:
    """Which column to fill when no item has any text or image."""
    if report.get("table") is None:
        return ("no item has any text or image: dataset.items is not set. Content models (MLLMRec, VBPR) "
                "would see identical features for every item; set dataset.items=<items table>.")
    columns = report.get("columns", {})
    named = [c for c in [columns.get("title"), *(columns.get("text") or []), columns.get("image")] if c]
    if not named:
        return (f"no item has any text or image: dataset.item_columns names no title, text or image column "
                f"of {report['table']}. Set dataset.item_columns.title / .text / .image.")
    return (f"no item has any text or image: the columns {named} of {report['table']} are empty for "
            "every item of the interactions (or their item ids do not match). Fill them or point "
            "dataset.item_columns at the right columns.")


def prepare_custom(
    name: str, root: str | Path, source: CustomSource, split_seed: int, opts: PrepareOptions,
    display_name: str | None = None,
) -> PrepareOutcome:
    """Build (or confirm up to date) a custom dataset under ``root``. See the module docstring.

    No published counts are compared (that check is for the paper's datasets only).
    """
    layout = DatasetLayout(root)
    opts.validate()
    layout.root.mkdir(parents=True, exist_ok=True)
    with file_lock(layout.root / ".prepare"):
        identity = source.identity()
        key = stable_hash({
            "prepare_version": PREPARE_VERSION, "mllmrec": __version__, "format_version": FORMAT_VERSION,
            "kind": "custom", "name": name, "display_name": display_name, **identity,
            "k": int(opts.k_core), "split": {"mode": opts.split_mode, "seed": int(split_seed)},
            "images": bool(opts.images),
        })
        if not opts.force and manifest_key_matches(layout, key):
            log.info("%s: up to date (%s; inputs and parameters unchanged, key %s). "
                     "Use prepare.force=true to rebuild.", name, layout.processed, key)
            return PrepareOutcome(layout, False, read_json(layout.manifest))

        t0 = time.perf_counter()
        encoded = encode_interactions(_interaction_table(source))
        k = int(opts.k_core)
        filtered = mmrec_filter(encoded, k)
        if len(filtered.users) == 0:
            raise DatasetError(
                f"{source.interactions}: nothing survives the {k}-core ({encoded.n_read:,} rows, "
                f"{len(encoded.users):,} after dropping missing and duplicate rows): no set of users and "
                f"items has {k}+ interactions each. Lower prepare.k_core (e.g. prepare.k_core=2)."
            )
        log.info("%s: %s rows read, %s with a missing user/item/time, %s duplicate (user, item, time) rows; "
                 "%d-core: %s users, %s items, %s interactions", source.interactions.name,
                 f"{encoded.n_read:,}", f"{encoded.n_missing:,}", f"{encoded.n_duplicates:,}", k,
                 f"{filtered.n_users:,}", f"{filtered.n_items:,}", f"{len(filtered.users):,}")
        labels = mmrec_split(filtered.users, filtered.timestamp, seed=int(split_seed), mode=opts.split_mode)
        items, item_report = build_custom_items(source, filtered, layout, opts)
        users, interactions = filtered.tables(labels)
        manifest = {
            "name": name,
            "display_name": display_name or name,
            "key": key,
            "source": {"dataset": "custom", "interactions": str(source.interactions.resolve()),
                       "items": str(source.items.resolve()) if source.items else None, **identity},
            "filter": {"rule": "k-core", "k": k, "rows_read": encoded.n_read,
                       "rows_missing_fields": encoded.n_missing, "duplicate_rows": encoded.n_duplicates,
                       "rounds": filtered.rounds, "seconds": round(time.perf_counter() - t0, 2)},
            "expected_counts": None,
            "counts_match_expected": None,
            "split": {"rule": "leave_one_out" if opts.split_mode == "leave_one_out" else "mmrec",
                      "mode": opts.split_mode, "seed": int(split_seed)},
            "items": item_report,
            "code": {"mllmrec": __version__, "prepare": PREPARE_VERSION},
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_processed_dataset(layout.root, interactions, items, users, manifest)
        split = np.bincount(labels, minlength=3)
        log.info("%s written to %s: train/valid/test %s/%s/%s, %d of %d items with text, %d with an image",
                 name, layout.processed, f"{split[0]:,}", f"{split[1]:,}", f"{split[2]:,}",
                 filtered.n_items - item_report["without_text"], filtered.n_items, item_report["with_image"])
        return PrepareOutcome(layout, True, read_json(layout.manifest))
