"""Import a folder of MMRec's released processed data (``<name>.inter`` + features) into our format.

``python prepare.py dataset=mmrec dataset.root=<folder> dataset.name=<name>`` validates the folder
with the loaders in :mod:`mllmrec.data.mmrec` and writes ``<output_root>/processed/`` (default
``${paths.data_dir}/<name>``). The MMRec files are only read: they stay usable by MMRec and by
``train.py dataset=mmrec`` as they are. The split is MMRec's own ``x_label`` (not re-drawn).

Optional files in the folder, used when present:
    ``i_id_mapping.csv`` (tab-separated ``asin itemID``) and ``u_id_mapping.csv`` (``user_id userID``)
    give the source ids; with a raw metadata file (``prepare.meta_file``) the items also get their
    text fields and image URLs (and images, unless ``prepare.images=false``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mllmrec import __version__
from mllmrec.cache import file_lock, read_json, stable_hash
from mllmrec.data.checks import check_feature_rows, check_split_overlap
from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import interaction_data_from_frame
from mllmrec.data.mmrec import read_mmrec_inter
from mllmrec.data.processed import FORMAT_VERSION, DatasetLayout, write_processed_dataset
from mllmrec.data.validation import load_feature_matrix, require_file
from mllmrec.prepare.amazon import read_meta
from mllmrec.prepare.download import sha256_file
from mllmrec.prepare.images import fetch_images
from mllmrec.prepare.pipeline import (
    PREPARE_VERSION,
    PrepareOptions,
    PrepareOutcome,
    build_items,
    image_urls,
    manifest_key_matches,
    present_images,
)

log = logging.getLogger(__name__)

ITEM_MAPPING = ("i_id_mapping.csv", "asin", "itemID")
USER_MAPPING = ("u_id_mapping.csv", "user_id", "userID")

__all__ = ["import_mmrec", "read_id_mapping", "ITEM_MAPPING", "USER_MAPPING"]


def read_id_mapping(path: Path, source_col: str, id_col: str, n: int) -> np.ndarray:
    """Read an MMRec id map (tab-separated, header ``<source_col> <id_col>``) into an array
    ``source id per new id`` [n] (None where the map has no entry).

    Raises :class:`DatasetError` naming the file and line for a wrong header, non-integer,
    out-of-range or repeated ids.
    """
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot parse as a tab-separated table ({err}).") from err
    if list(frame.columns[:2]) != [source_col, id_col]:
        raise DatasetError(
            f"{path}: header must be '{source_col}<TAB>{id_col}' (MMRec's id map), found {list(frame.columns)}."
        )
    ids = pd.to_numeric(frame[id_col], errors="coerce")
    bad = ids.isna() | (ids != np.floor(ids)) | (ids < 0) | (ids >= n)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"{path}: line {row + 2}: {id_col} {frame[id_col].iloc[row]!r} is not an id in 0..{n - 1} "
            f"({int(bad.sum())} bad lines). Is this map from another dataset than the .inter file?"
        )
    ids = ids.to_numpy().astype(np.int64)
    repeated = pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DatasetError(f"{path}: line {row + 2}: {id_col} {ids[row]} appears twice; ids must be unique.")
    names = np.full(n, None, dtype=object)
    names[ids] = frame[source_col].to_numpy(dtype=object)
    if len(ids) < n:
        log.warning("%s: maps %d of %d ids; the others get a null source_id", path, len(ids), n)
    return names


def _ratings(path: Path, n_rows: int) -> np.ndarray:
    """The ``rating`` column of the .inter file (float32); 1.0 when the file has none."""
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    if "rating" not in header:
        return np.ones(n_rows, dtype=np.float32)
    ratings = pd.read_csv(path, sep="\t", usecols=["rating"], dtype=str, keep_default_na=False)["rating"]
    return pd.to_numeric(ratings, errors="coerce").to_numpy(dtype=np.float32)


def import_mmrec(
    src_root: str | Path,
    name: str,
    out_root: str | Path,
    opts: PrepareOptions,
    meta_file: str | Path | None = None,
    display_name: str | None = None,
    feature_files: dict[str, str | None] | None = None,
) -> PrepareOutcome:
    """Validate an MMRec folder and write it in the processed format under ``out_root``.

    ``feature_files`` (``{"item": name, "user": name}``, the dataset config's ``item_features`` /
    ``user_features``) are checked when present: one finite row per item / user. They are not
    copied: training reads them from the MMRec folder.
    """
    src = Path(src_root)
    frame, inter_path = read_mmrec_inter(src, name)
    # the same checks train.py dataset=mmrec applies: non-empty valid and test splits, ids
    data = interaction_data_from_frame(frame, name=name, source=src, origin=str(inter_path))
    # what train.py would silently suffer from: masked valid/test pairs, degenerate feature rows
    check_split_overlap(data, str(inter_path))
    for kind, fname in (feature_files or {}).items():
        if not fname:
            continue
        if (src / fname).is_file():
            rows = data.n_items if kind == "item" else data.n_users
            report = check_feature_rows(load_feature_matrix(src / fname, rows, kind), kind, str(src / fname))
            log.info("%s: %s features %s: %d rows, finite, %d degenerate (zero, constant or duplicated)",
                     name, kind, fname, rows, report.degenerate)
        else:
            log.info("%s: no %s feature file %s (train.py dataset=mmrec would need it)", name, kind, src / fname)
    if meta_file is not None:
        meta_file = require_file(Path(meta_file), "prepare.meta_file",
                                 "Point it at the category's raw meta_<Cat>.json.gz, or set it to null.")
    n_users = int(frame["user"].max()) + 1
    n_items = int(frame["item"].max()) + 1
    inputs = {p.name: sha256_file(p) for p in [inter_path, src / ITEM_MAPPING[0], src / USER_MAPPING[0]]
              if p.is_file()}
    if meta_file is not None:
        inputs[Path(meta_file).name] = sha256_file(meta_file)
    layout = DatasetLayout(out_root)
    key = stable_hash({
        "prepare_version": PREPARE_VERSION, "mllmrec": __version__, "format_version": FORMAT_VERSION,
        "name": name, "display_name": display_name, "kind": "mmrec-import", "inputs": inputs,
        "images": bool(opts.images) and meta_file is not None,
    })
    layout.root.mkdir(parents=True, exist_ok=True)
    with file_lock(layout.root / ".prepare"):
        if not opts.force and manifest_key_matches(layout, key):
            log.info("%s: up to date (%s; key %s). Use prepare.force=true to rebuild.", name, layout.processed, key)
            return PrepareOutcome(layout, False, read_json(layout.manifest))
        item_source = (read_id_mapping(src / ITEM_MAPPING[0], ITEM_MAPPING[1], ITEM_MAPPING[2], n_items)
                       if (src / ITEM_MAPPING[0]).is_file() else np.full(n_items, None, dtype=object))
        user_source = (read_id_mapping(src / USER_MAPPING[0], USER_MAPPING[1], USER_MAPPING[2], n_users)
                       if (src / USER_MAPPING[0]).is_file() else np.full(n_users, None, dtype=object))
        meta: dict[str, dict] = {}
        if meta_file is not None:
            if (src / ITEM_MAPPING[0]).is_file():
                meta, bad = read_meta(meta_file, wanted={a for a in item_source if a}, progress=opts.progress)
                bad.report("metadata")
                log.info("%s: metadata found for %d of %d items", name, len(meta), n_items)
            else:
                log.warning("prepare.meta_file is set but %s has no %s: items cannot be matched to metadata",
                            src, ITEM_MAPPING[0])
        urls = image_urls(item_source, meta, "listed")
        if opts.images and any(urls):
            paths = fetch_images(urls, layout.images, workers=int(opts.image_workers),
                                 timeout_s=float(opts.image_timeout_s), retries=int(opts.image_retries),
                                 backoff_s=float(opts.backoff_s), progress=opts.progress).paths
        else:
            paths = present_images(layout, urls)
        items = build_items(item_source, meta, urls, paths)
        users = pd.DataFrame({"user_id": np.arange(n_users, dtype=np.int64), "source_id": user_source})
        timestamp = frame["timestamp"].to_numpy()
        interactions = pd.DataFrame({
            "user_id": frame["user"].to_numpy(np.int64), "item_id": frame["item"].to_numpy(np.int64),
            "rating": _ratings(inter_path, len(frame)),
            "timestamp": np.round(timestamp).astype(np.int64), "x_label": frame["x_label"].to_numpy(np.int8),
        })
        manifest = {
            "name": name,
            "display_name": display_name or name,
            "key": key,
            "source": {"dataset": "mmrec", "root": str(src.resolve()),
                       "files": {f: {"sha256": d} for f, d in inputs.items()}},
            "split": {"rule": "mmrec", "mode": "as released (x_label of the .inter file)", "seed": None},
            "items": {"with_source_id": int(sum(a is not None for a in item_source)),
                      "with_metadata": len(meta), "with_image": len(paths)},
            "code": {"mllmrec": __version__, "prepare": PREPARE_VERSION},
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_processed_dataset(layout.root, interactions, items, users, manifest)
        log.info("%s: imported %s (%s users, %s items, %s interactions) into %s", name, inter_path,
                 f"{n_users:,}", f"{n_items:,}", f"{len(interactions):,}", layout.processed)
        return PrepareOutcome(layout, True, read_json(layout.manifest))
