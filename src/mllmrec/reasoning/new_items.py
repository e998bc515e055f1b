"""The reasoning stage for items that were not in the dataset (``recommend.py new_items=``).

A new item is described exactly as a catalogue item: Prompt 1 on its image through the run's MLLM
(Eq. 1, the same :class:`~mllmrec.reasoning.pipeline.Reasoner`, prompt and cache key), then the
multimodal description ``text ⊕ image description`` (Eq. 2, :func:`multimodal_description`). The
generations go into the dataset's generation store for that MLLM (``reasoning/<mllm>/generations``,
keyed by model, prompt, image content hash, sampling and template version), so a rerun generates
nothing again, an interrupted one continues, and an image identical to a catalogue item's is not
described twice. Images are named by the user (absolute paths, or URLs downloaded first), so no
dataset image folder applies; a missing or undecodable file is reported as ``unreadable`` and the
item keeps its text.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mllmrec.reasoning.backends import Backend
from mllmrec.reasoning.images import scan_image_files
from mllmrec.reasoning.outputs import ITEM_TEXT_SOURCES, OK
from mllmrec.reasoning.pipeline import Reasoner
from mllmrec.reasoning.prompts import multimodal_description
from mllmrec.reasoning.settings import ReasonSettings

log = logging.getLogger(__name__)

__all__ = ["NewItemDescriptions", "describe_new_items", "download_images"]


@dataclass(frozen=True)
class NewItemDescriptions:
    """Per new item (N): ``text`` (the item text), ``image_description`` and its ``image_status``
    (:data:`~mllmrec.reasoning.outputs.IMAGE_STATUSES`), ``image_error`` (why unreadable, else None)
    and ``description`` (Eq. 2): the columns of item_descriptions.parquet."""

    text: list[str]
    image_description: list[str]
    image_status: list[str]
    image_error: list[str | None]
    description: list[str]

    def item_texts(self, source: str) -> list[str]:
        """The texts a run encodes for ``data.item_text_source`` (description | text | image_description)."""
        if source not in ITEM_TEXT_SOURCES:
            raise ValueError(f"item_text_source must be one of {ITEM_TEXT_SOURCES}, got {source!r}")
        return list(getattr(self, source))


def download_images(images: Sequence[str | None], folder: Path) -> list[Path | None]:
    """Local files for ``images`` (absolute paths kept; http(s) URLs downloaded into
    ``folder/images/<row>.jpg`` by the prepare stage's fetcher, reused when present). A failed
    download gives the path it would have had, so the scan reports it as unreadable."""
    urls = [i if i is not None and i.startswith(("http://", "https://")) else None for i in images]
    paths: list[Path | None] = [None if i is None or u is not None else Path(i) for i, u in zip(images, urls)]
    if any(urls):
        from mllmrec.prepare.images import fetch_images

        report = fetch_images(urls, folder / "images", workers=8, progress=False)
        for row, url in enumerate(urls):
            if url is not None:
                paths[row] = folder / report.paths.get(row, f"images/{row}.jpg")
        if report.failures:
            log.warning("%d new item image(s) could not be downloaded (see %s); they keep their text",
                        len(report.failures), folder / "images" / "failures.csv")
    return paths


def describe_new_items(cfg: DictConfig | Mapping[str, Any], texts: Sequence[str], images: Sequence[str | None],
                       download_dir: Path, backend: Backend | None = None) -> NewItemDescriptions:
    """Describe new items with the MLLM of ``cfg`` (``reason``, ``mllm``, ``dataset``: see
    :func:`mllmrec.reasoning.stage.reason_config_for_run`).

    ``texts`` [N] the item texts; ``images`` [N] an absolute image path, an http(s) URL or None.
    ``backend`` replaces the one ``reason.backend`` builds (not closed here).
    """
    settings: ReasonSettings = ReasonSettings.from_config(cfg)
    # one process describes them all: no shards, no item limit
    settings = replace(settings, shard=0, num_shards=1, shard_wait_s=0.0, limit_items=None)
    paths = download_images(images, download_dir) if settings.mllm.vision else [None] * len(images)
    scan = scan_image_files(paths, settings.mllm.vision, settings.image_workers)
    if scan.skipped_reason:
        log.info("new items: image step skipped: %s", scan.skipped_reason)
    reasoner = Reasoner(settings, backend)
    try:
        _, image_text, image_status = reasoner.describe_images(scan)
    finally:
        reasoner.close()
    log.info("new items: image descriptions %s (%s via %s)", dict(Counter(image_status)), settings.mllm.identity,
             settings.backend)
    text = [str(t) for t in texts]
    return NewItemDescriptions(
        text=text,
        image_description=list(image_text),
        image_status=list(image_status),
        image_error=[im.error if im.status != OK else None for im in scan.images],
        description=[multimodal_description(t, d, settings.separator) for t, d in zip(text, image_text)],
    )
