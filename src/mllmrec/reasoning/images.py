"""Finding, checking and hashing item images before any model is loaded.

Every image is read, hashed (the hash is part of the generation cache key, so a replaced image is
described again) and fully decoded once up front: an unreadable or corrupt file is reported per
item and the item keeps its text, instead of failing a whole batch inside the engine later.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mllmrec.data.errors import DatasetError
from mllmrec.reasoning.backends.base import ImagePart
from mllmrec.reasoning.outputs import IMAGE_STATUSES, NO_IMAGE, SKIPPED_LIMIT, TEXT_ONLY_MODEL, UNREADABLE

log = logging.getLogger(__name__)

__all__ = ["ItemImage", "ImageScan", "IMAGE_STATUSES", "scan_images", "scan_image_files", "read_image",
           "outside_image_folder"]

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


IMAGE_FOLDER = "images"  # the dataset's image folder, relative to its root (DatasetLayout.images)


def outside_image_folder(root: Path, image_path: str) -> bool:
    """Whether ``image_path`` (as stored in the items table) points outside ``<root>/images``.

    Lexical, on the path as written: an absolute path or one that climbs out with ``..`` is outside;
    a symbolic link the dataset's owner placed inside the folder is followed as usual.
    """
    if Path(image_path).is_absolute():
        return True
    folder = os.path.normpath(root / IMAGE_FOLDER)
    target = os.path.normpath(root / image_path)
    return os.path.commonpath([folder, target]) != folder


def scan_images(
    root: Path,
    items: pd.DataFrame,
    vision: bool,
    limit_items: int | None = None,
    workers: int = 8,
    allow_outside: bool = False,
) -> ImageScan:
    """Plan the image step for every item (``items`` indexed 0..n-1 with an ``image_path`` column).

    Image paths must stay inside the dataset's image folder ``<root>/images``: an absolute or ``../``
    path in a dataset would otherwise read any file of the machine and, with a remote backend, send it
    to a server. Such items are ``unreadable`` (they keep their text, with a warning) unless
    ``allow_outside`` (``reason.allow_outside_images=true``) is set.

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

    outside = pd.Series(False, index=paths.index)
    if not allow_outside:
        outside = has_path & paths.map(lambda p: p is not None and outside_image_folder(root, str(p)))
        if outside.any():
            shown = ", ".join(repr(str(p)) for p in paths[outside][:3])
            log.warning("%d item image paths point outside %s (e.g. %s): those items keep their text only. "
                        "Set reason.allow_outside_images=true to read them anyway.", int(outside.sum()),
                        root / IMAGE_FOLDER, shown)
        has_path = has_path & ~outside
        if not has_path.any():
            return ImageScan(tuple(
                ItemImage(int(i), "unreadable", error=f"image path {paths.iloc[k]!r} is outside {root / IMAGE_FOLDER}")
                if outside.iloc[k] else ItemImage(int(i), "no_image") for k, i in enumerate(ids)), None)
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
        if outside.iloc[pos]:
            out[item_id] = ItemImage(item_id, UNREADABLE,
                                     error=f"image path {str(path)!r} is outside {root / IMAGE_FOLDER}")
        elif not present:
            out[item_id] = ItemImage(item_id, NO_IMAGE)
        elif limit_items is not None and pos >= limit_items:
            out[item_id] = ItemImage(item_id, SKIPPED_LIMIT)
        else:
            chosen.append((item_id, root / str(path)))
    out.update(_check_images(chosen, workers))
    images = tuple(out[int(i)] for i in ids)
    _warn_unreadable(images)
    return ImageScan(images, None)


def _check_images(chosen: list[tuple[int, Path]], workers: int) -> dict[int, ItemImage]:
    # decoding releases the GIL: a few threads make the scan of a large catalogue I/O bound
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return {image.item_id: image for image in pool.map(lambda a: _check_image(*a), chosen)}


def _warn_unreadable(images: tuple[ItemImage, ...]) -> None:
    bad = [im for im in images if im.status == UNREADABLE]
    if bad:
        shown = "; ".join(f"item {im.item_id}: {im.error}" for im in bad[:5])
        log.warning("%d item images are unreadable and keep their text only (%s%s)", len(bad), shown,
                    " ..." if len(bad) > 5 else "")


def scan_image_files(paths: list[Path | None], vision: bool, workers: int = 8) -> ImageScan:
    """Plan the image step for items given by image file (``paths[i]`` for item ``i``, None = no
    image): the new items of ``recommend.py new_items=``, whose files the user named on the command
    line (no dataset image folder applies). A file that does not exist or does not decode is
    ``unreadable`` (the item keeps its text), as in :func:`scan_images`."""
    if not vision:
        reason = "the MLLM is text-only (mllm.vision=false): items keep their text, no image is described"
        return ImageScan(tuple(ItemImage(i, TEXT_ONLY_MODEL) for i in range(len(paths))), reason)
    out = {i: ItemImage(i, NO_IMAGE) for i, p in enumerate(paths) if p is None}
    out.update(_check_images([(i, p) for i, p in enumerate(paths) if p is not None], workers))
    images = tuple(out[i] for i in range(len(paths)))
    _warn_unreadable(images)
    return ImageScan(images, None if any(p is not None for p in paths) else "no item has an image path")


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

