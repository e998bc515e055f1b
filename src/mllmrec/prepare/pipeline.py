"""``python prepare.py``: raw Amazon files -> MMRec 5-core + split + item text + images -> processed format.

Steps (each explained where it is implemented):
    1. download ``<root>/raw/`` files (:mod:`mllmrec.prepare.download`), hash them;
    2. compare a key of (input hashes, parameters, code version) with the present manifest: equal
       means "up to date" and nothing else runs;
    3. read + dropna + dedup + k-core + re-index (:mod:`~mllmrec.prepare.amazon`, :mod:`~mllmrec.prepare.kcore`);
    4. MMRec's split (:func:`mllmrec.data.mmrec_split`);
    5. item text from the metadata (:func:`mllmrec.data.mmrec_item_text`);
    6. images (:mod:`mllmrec.prepare.images`);
    7. :func:`mllmrec.data.write_processed_dataset` (atomic: a killed run leaves the old dataset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mllmrec import __version__
from mllmrec.cache import file_lock, read_json, stable_hash
from mllmrec.data.errors import DatasetError
from mllmrec.data.processed import FORMAT_VERSION, DatasetLayout, write_processed_dataset
from mllmrec.data.split import SPLIT_MODES, mmrec_split
from mllmrec.data.text import mmrec_item_text
from mllmrec.prepare.amazon import item_fields, read_interactions, read_meta
from mllmrec.prepare.download import ensure_file
from mllmrec.prepare.images import fetch_images, large_image_url, read_sources
from mllmrec.prepare.kcore import FilteredInteractions, encode_interactions, mmrec_filter

log = logging.getLogger(__name__)

# bump when the processing changes what is written (the key then differs and datasets rebuild)
PREPARE_VERSION = 1
IMAGE_VARIANTS = ("listed", "large")
DEFAULT_BASE_URL_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
DEFAULT_BASE_URL_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"

__all__ = [
    "PREPARE_VERSION",
    "PrepareOptions",
    "AmazonSource",
    "PrepareOutcome",
    "prepare_amazon",
    "manifest_key_matches",
    "build_items",
    "image_urls",
    "present_images",
]


@dataclass(frozen=True)
class PrepareOptions:
    """The ``prepare:`` config block (see ``conf/prepare.yaml`` for each key's meaning)."""

    download: bool = True
    base_url_2014: str = DEFAULT_BASE_URL_2014
    base_url_2018: str = DEFAULT_BASE_URL_2018
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 2.0
    k_core: int = 5
    split_mode: str = "random"
    images: bool = True
    image_workers: int = 16
    image_timeout_s: float = 30.0
    image_retries: int = 3
    force: bool = False
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PrepareOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known - {"output_root", "meta_file"})
        if unknown:
            raise DatasetError(f"prepare: unknown key(s) {unknown}; known keys: {sorted(known)}.")
        opts = cls(**{k: v for k, v in cfg.items() if k in known})
        opts.validate()
        return opts

    def validate(self) -> None:
        """Reject bad values before anything is downloaded or read."""
        if self.split_mode not in SPLIT_MODES:
            raise DatasetError(f"prepare.split_mode must be one of {SPLIT_MODES}, got {self.split_mode!r}.")
        if int(self.k_core) < 1:
            raise DatasetError(f"prepare.k_core must be >= 1 (MMRec uses 5), got {self.k_core}.")
        if int(self.image_workers) < 1:
            raise DatasetError(f"prepare.image_workers must be >= 1, got {self.image_workers}.")
        if int(self.retries) < 0 or int(self.image_retries) < 0:
            raise DatasetError("prepare.retries and prepare.image_retries must be >= 0.")

    def download_kwargs(self) -> dict[str, Any]:
        return {"timeout_s": float(self.timeout_s), "retries": int(self.retries),
                "backoff_s": float(self.backoff_s), "progress": bool(self.progress)}


def _join_url(base: str, name: str) -> str:
    return base if base.endswith("/") and not name else base.rstrip("/") + "/" + name.lstrip("/")


@dataclass(frozen=True)
class AmazonSource:
    """Where one Amazon category's files come from and what they should give.

    ``interactions_file`` / ``meta_file`` are names inside ``<root>/raw/``; ``sha256`` maps such a
    name to its expected digest; ``expected`` holds MMRec's counts (users, items, interactions).
    """

    release: int
    category: str
    interactions_file: str
    meta_file: str
    interactions_url: str
    meta_url: str
    sha256: Mapping[str, str] = field(default_factory=dict)
    expected: Mapping[str, int] | None = None
    image_variant: str = "listed"

    @classmethod
    def from_config(cls, source: Mapping[str, Any], opts: PrepareOptions) -> AmazonSource:
        """Build from a dataset's ``source:`` block; file names and URLs default per release.

        2014: ``ratings_<Cat>.csv`` and ``meta_<Cat>.json.gz`` under ``prepare.base_url_2014``.
        2018: ``<Cat>_5.json.gz`` under ``<base_url_2018>categoryFilesSmall/`` and
        ``meta_<Cat>.json.gz`` under ``<base_url_2018>metaFiles2/``.
        """
        release = source.get("release")
        try:
            release = int(release)
        except (TypeError, ValueError):
            release = None
        if release not in (2014, 2018):
            raise DatasetError(
                f"dataset.source.release must be 2014 or 2018, got {source.get('release')!r}."
            )
        category = source.get("category")
        if not category or not isinstance(category, str):
            raise DatasetError(
                "dataset.source.category is missing: the Amazon category file name part, e.g. Baby, "
                "Sports_and_Outdoors, Clothing_Shoes_and_Jewelry (2014) or Gift_Cards (2018)."
            )
        if release == 2014:
            inter = source.get("interactions_file") or f"ratings_{category}.csv"
            meta = source.get("meta_file") or f"meta_{category}.json.gz"
            inter_url = _join_url(opts.base_url_2014, inter)
            meta_url = _join_url(opts.base_url_2014, meta)
        else:
            inter = source.get("interactions_file") or f"{category}_5.json.gz"
            meta = source.get("meta_file") or f"meta_{category}.json.gz"
            inter_url = _join_url(_join_url(opts.base_url_2018, "categoryFilesSmall"), inter)
            meta_url = _join_url(_join_url(opts.base_url_2018, "metaFiles2"), meta)
        variant = source.get("image_variant") or ("listed" if release == 2014 else "large")
        if variant not in IMAGE_VARIANTS:
            raise DatasetError(
                f"dataset.source.image_variant must be one of {IMAGE_VARIANTS}, got {variant!r}."
            )
        expected = source.get("expected")
        if expected is not None:
            expected = {k: int(v) for k, v in dict(expected).items()}
            extra = set(expected) - {"users", "items", "interactions"}
            if extra:
                raise DatasetError(
                    f"dataset.source.expected has unknown key(s) {sorted(extra)}; use users, items, interactions."
                )
        return cls(
            release=release, category=category, interactions_file=inter, meta_file=meta,
            interactions_url=source.get("interactions_url") or inter_url,
            meta_url=source.get("meta_url") or meta_url,
            sha256={str(k): str(v) for k, v in dict(source.get("sha256") or {}).items() if v},
            expected=expected, image_variant=variant,
        )


@dataclass
class PrepareOutcome:
    """What a prepare call did: ``built`` is False when the dataset was already up to date."""

    layout: DatasetLayout
    built: bool
    manifest: dict


def manifest_key_matches(layout: DatasetLayout, key: str) -> bool:
    """Whether a complete processed dataset with this key is present."""
    try:
        return read_json(layout.manifest).get("key") == key
    except (OSError, ValueError):
        return False


def _banner(lines: list[str]) -> str:
    bar = "!" * 78
    return "\n" + "\n".join([bar, *lines, bar])


def _check_expected(counts: dict[str, int], expected: Mapping[str, int] | None, what: str) -> bool | None:
    """Warn loudly when the 5-core counts differ from the reference; None when nothing is expected."""
    if not expected:
        return None
    diffs = [f"  {k}: expected {expected[k]:,}, got {counts[k]:,}" for k in expected if expected[k] != counts[k]]
    if diffs:
        log.warning("%s", _banner([
            f"{what}: the 5-core counts DIFFER from MMRec's published ones:", *diffs,
            "Results will not be comparable with the paper. Check the raw file (checksum warning above?)"
            " and prepare.k_core.",
        ]))
        return False
    log.info("%s: counts match MMRec's (%s)", what, ", ".join(f"{k} {v:,}" for k, v in expected.items()))
    return True


def build_items(
    item_source: np.ndarray, meta: Mapping[str, dict], image_urls: list[str | None],
    image_paths: Mapping[int, str],
) -> pd.DataFrame:
    """The items table (processed.py's ITEM_COLUMNS) from the raw ids and their metadata."""
    rows = []
    for item_id, asin in enumerate(item_source):
        fields = item_fields(meta.get(asin))
        rows.append({
            "item_id": item_id,
            "source_id": asin,
            "title": fields["title"],
            "brand": fields["brand"],
            "categories": fields["categories"],
            "description": fields["description"],
            "image_url": image_urls[item_id],
            "image_path": image_paths.get(item_id),
            "text": mmrec_item_text(fields["title"], fields["brand"], fields["categories"], fields["description"]),
        })
    return pd.DataFrame(rows, columns=[
        "item_id", "source_id", "title", "brand", "categories", "description", "image_url", "image_path", "text",
    ])


def image_urls(item_source: np.ndarray, meta: Mapping[str, dict], variant: str) -> list[str | None]:
    """Each item's image URL from its metadata, in the chosen variant (``listed`` or ``large``)."""
    urls = [item_fields(meta.get(a))["image_url"] for a in item_source]
    if variant == "large":
        urls = [large_image_url(u) if u else None for u in urls]
    return urls


def present_images(layout: DatasetLayout, urls: list[str | None]) -> dict[int, str]:
    """Image paths of files already on disk (used when prepare.images=false).

    A file recorded in ``images/sources.tsv`` as fetched from another URL belongs to an earlier
    input whose ids differed: it is not used.
    """
    if not layout.images.is_dir():
        return {}
    sources = read_sources(layout.images)
    present = {p.name for p in layout.images.glob("*.jpg")}
    return {
        i: f"images/{i}.jpg" for i, url in enumerate(urls)
        if f"{i}.jpg" in present and sources.get(i, url) == url
    }


def _filter(
    layout: DatasetLayout, source: AmazonSource, k: int
) -> tuple[FilteredInteractions, dict[str, Any]]:
    """Read the interactions file, then MMRec's dropna / dedup / k-core / re-index."""
    path = layout.raw / source.interactions_file
    t0 = time.perf_counter()
    table, bad = read_interactions(path, source.release)
    bad.report("ratings" if source.release == 2014 else "review")
    encoded = encode_interactions(table)
    del table
    filtered = mmrec_filter(encoded, k)
    stats = {
        "rows_read": encoded.n_read, "malformed_lines": bad.count,
        "rows_missing_fields": encoded.n_missing, "duplicate_rows": encoded.n_duplicates,
        "rounds": filtered.rounds, "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "%s: %s rows read, %s malformed lines skipped, %s rows with a missing user/item/time, "
        "%s duplicate (user, item, time) rows; %d-core in %d rounds (%.1f s)",
        path.name, f"{encoded.n_read:,}", f"{bad.count:,}", f"{encoded.n_missing:,}",
        f"{encoded.n_duplicates:,}", k, filtered.rounds, stats["seconds"],
    )
    if len(filtered.users) == 0:
        raise DatasetError(
            f"{path}: nothing survives the {k}-core: of {encoded.n_read:,} rows "
            f"({len(encoded.users):,} after dropping missing and duplicate rows), no set of users and "
            f"items has {k}+ interactions each. Is this the right (complete) file? A truncated "
            f"download or a wrong category gives this; delete the file and re-run, or lower prepare.k_core."
        )
    return filtered, stats


def prepare_amazon(
    name: str,
    root: str | Path,
    source: AmazonSource,
    split_seed: int,
    opts: PrepareOptions,
    display_name: str | None = None,
) -> PrepareOutcome:
    """Build (or confirm up to date) one Amazon dataset under ``root``. See the module docstring."""
    layout = DatasetLayout(root)
    opts.validate()
    layout.root.mkdir(parents=True, exist_ok=True)
    # one prepare per dataset folder at a time; a second waits, then finds it up to date
    with file_lock(layout.root / ".prepare"):
        files = {}
        for fname, url in ((source.interactions_file, source.interactions_url), (source.meta_file, source.meta_url)):
            dest = layout.raw / fname
            digest = ensure_file(url, dest, sha256=source.sha256.get(fname), download=opts.download,
                                 **opts.download_kwargs())
            expected = source.sha256.get(fname)
            files[fname] = {"sha256": digest, "bytes": dest.stat().st_size, "url": url,
                            "expected_sha256": expected,
                            "sha256_matches": None if not expected else digest == expected.lower()}
        key = stable_hash({
            "prepare_version": PREPARE_VERSION, "mllmrec": __version__, "format_version": FORMAT_VERSION,
            "name": name, "display_name": display_name, "release": source.release, "category": source.category,
            "inputs": {f: v["sha256"] for f, v in files.items()},
            "k": int(opts.k_core), "split": {"mode": opts.split_mode, "seed": int(split_seed)},
            "images": {"enabled": bool(opts.images), "variant": source.image_variant},
        })
        if not opts.force and manifest_key_matches(layout, key):
            log.info("%s: up to date (%s; inputs and parameters unchanged, key %s). "
                     "Use prepare.force=true to rebuild.", name, layout.processed, key)
            return PrepareOutcome(layout, False, read_json(layout.manifest))

        k = int(opts.k_core)
        filtered, filter_stats = _filter(layout, source, k)
        counts = {"users": filtered.n_users, "items": filtered.n_items, "interactions": len(filtered.users)}
        log.info("%s %d-core: %s users, %s items, %s interactions", name, k, f"{counts['users']:,}",
                 f"{counts['items']:,}", f"{counts['interactions']:,}")
        matches = _check_expected(counts, source.expected, name)

        labels = mmrec_split(filtered.users, filtered.timestamp, seed=int(split_seed), mode=opts.split_mode)

        meta, bad_meta = read_meta(layout.raw / source.meta_file, wanted=set(filtered.item_source),
                                   progress=opts.progress)
        bad_meta.report("metadata")
        without_meta = int(sum(a not in meta for a in filtered.item_source))
        if without_meta:
            log.warning("%s: %d of %d items have no metadata line; their text fields are empty",
                        name, without_meta, filtered.n_items)
        urls = image_urls(filtered.item_source, meta, source.image_variant)

        image_stats: dict[str, Any] = {"enabled": bool(opts.images), "variant": source.image_variant}
        if opts.images:
            report = fetch_images(
                urls, layout.images, workers=int(opts.image_workers), timeout_s=float(opts.image_timeout_s),
                retries=int(opts.image_retries), backoff_s=float(opts.backoff_s), progress=opts.progress,
            )
            paths = report.paths
            image_stats.update(downloaded=report.downloaded, reused=report.reused, failed=len(report.failures),
                               failures_file="images/failures.csv")
        else:
            paths = present_images(layout, urls)
        image_stats["with_image"] = len(paths)

        items = build_items(filtered.item_source, meta, urls, paths)
        users, interactions = filtered.tables(labels)
        manifest = {
            "name": name,
            "display_name": display_name or name,
            "key": key,
            "source": {"dataset": "amazon", "release": source.release, "category": source.category,
                       "files": files},
            "filter": {"rule": "mmrec", "k": k, **filter_stats},
            "expected_counts": dict(source.expected) if source.expected else None,
            "counts_match_expected": matches,
            "split": {"rule": "mmrec" if opts.split_mode != "leave_one_out" else "leave_one_out",
                      "mode": opts.split_mode, "seed": int(split_seed)},
            "items": {"without_metadata": without_meta, "malformed_meta_lines": bad_meta.count,
                      "with_image_url": int(sum(u is not None for u in urls))},
            "images": image_stats,
            "code": {"mllmrec": __version__, "prepare": PREPARE_VERSION},
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_processed_dataset(layout.root, interactions, items, users, manifest)
        split = np.bincount(labels, minlength=3)
        log.info("%s written to %s: train/valid/test %s/%s/%s, %d of %d items with an image", name,
                 layout.processed, f"{split[0]:,}", f"{split[1]:,}", f"{split[2]:,}", len(paths), filtered.n_items)
        return PrepareOutcome(layout, True, read_json(layout.manifest))
