"""Finding, checking and hashing item images before any model is loaded.

Every image is read, hashed (the hash is part of the generation cache key, so a replaced image is
described again) and fully decoded once up front: an unreadable or corrupt file is reported per
item and the item keeps its text, instead of failing a whole batch inside the engine later.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mllmrec.data.errors import DatasetError
from mllmrec.reasoning.backends.base import ImagePart
from mllmrec.reasoning.outputs import IMAGE_STATUSES, NO_IMAGE, SKIPPED_LIMIT, TEXT_ONLY_MODEL, UNREADABLE

log = logging.getLogger(__name__)

__all__ = ["ItemImage", "ImageScan", "IMAGE_STATUSES", "scan_images", "read_image"]

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
         "BMP": "image/bmp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class ItemImage:
    """One item's image as found on disk. ``status`` is ``pending`` when it should be described."""

    item_id: int
    status: str
    path: Path | None = None
    sha256: str | None = None
    mime: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ImageScan:
    images: tuple[ItemImage, ...]
    #: why the image step does nothing at all (text-only model, no image paths), else None
    skipped_reason: str | None

    def counts(self) -> dict[str, int]:
        return dict(Counter(im.status for im in self.images))

    @property
    def pending(self) -> list[ItemImage]:
        return [im for im in self.images if im.status == "pending"]


def _check_image(item_id: int, path: Path) -> ItemImage:
    """Read, hash and decode one image; failures become an ``unreadable`` entry."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        return ItemImage(item_id, UNREADABLE, path, error=f"cannot read {path}: {exc.strerror or exc}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            img.load()  # a full decode: truncated files pass Image.open but fail here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return ItemImage(item_id, UNREADABLE, path, error=f"cannot decode {path}: {exc}")
    mime = _MIME.get(fmt.upper(), "image/png")
    return ItemImage(item_id, "pending", path, hashlib.sha256(data).hexdigest(), mime)


def scan_images(
    root: Path,
    items: pd.DataFrame,
    vision: bool,
    limit_items: int | None = None,
    workers: int = 8,
) -> ImageScan:
    """Plan the image step for every item (``items`` indexed 0..n-1 with an ``image_path`` column).

    Raises :class:`DatasetError` when items name images but the folder(s) holding them do not
    exist: that is a dataset that was never downloaded, not a few broken files.
    """
    ids = items["item_id"].to_numpy()
    paths = items["image_path"] if "image_path" in items.columns else pd.Series([None] * len(items))
    has_path = paths.notna() & (paths.astype(str).str.strip() != "")
    if not vision:
        reason = "the MLLM is text-only (mllm.vision=false): items keep their text, no image is described"
        return ImageScan(tuple(ItemImage(int(i), TEXT_ONLY_MODEL) for i in ids), reason)
    if not has_path.any():
        reason = "no item of this dataset has an image path: the image step is skipped"
        return ImageScan(tuple(ItemImage(int(i), NO_IMAGE) for i in ids), reason)

    folders = sorted({(root / str(p)).parent for p in paths[has_path]})
    missing = [f for f in folders if not f.is_dir()]
    if len(missing) == len(folders):
        raise DatasetError(
            f"the images folder {missing[0]} does not exist ({int(has_path.sum())} items of {root} "
            "name an image in it). Download the images first (`python prepare.py dataset=<name>`), or "
            "run with a text-only mllm."
        )
    chosen: list[tuple[int, Path]] = []
    out: dict[int, ItemImage] = {}
    for pos, (item_id, path, present) in enumerate(zip(ids, paths, has_path)):
        item_id = int(item_id)
        if not present:
            out[item_id] = ItemImage(item_id, NO_IMAGE)
        elif limit_items is not None and pos >= limit_items:
            out[item_id] = ItemImage(item_id, SKIPPED_LIMIT)
        else:
            chosen.append((item_id, root / str(path)))
    # decoding releases the GIL: a few threads make the scan of a large catalogue I/O bound
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for image in pool.map(lambda a: _check_image(*a), chosen):
            out[image.item_id] = image
    images = tuple(out[int(i)] for i in ids)
    bad = [im for im in images if im.status == UNREADABLE]
    if bad:
        shown = "; ".join(f"item {im.item_id}: {im.error}" for im in bad[:5])
        log.warning("%d item images are unreadable and keep their text only (%s%s)", len(bad), shown,
                    " ..." if len(bad) > 5 else "")
    return ImageScan(images, None)


def read_image(image: ItemImage) -> ImagePart:
    """The bytes of a scanned image, checked against the hash taken at scan time."""
    if image.path is None or image.sha256 is None or image.mime is None:
        raise ValueError(f"item {image.item_id} has no readable image (status {image.status})")
    data = image.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != image.sha256:
        raise DatasetError(f"{image.path} changed while the run was going (hash {digest[:12]} != "
                           f"{image.sha256[:12]}); rerun to describe the new image")
    return ImagePart(data=data, mime=image.mime, sha256=digest)

