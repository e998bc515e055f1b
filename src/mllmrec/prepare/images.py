"""Item image download: bounded concurrency, retries with backoff, resume, atomic files, a failure list.

Each item's image goes to ``<root>/images/<item_id>.jpg`` (written to a temp file and renamed, so a
present file is whole). Present files that PIL can read are not fetched again, so an interrupted
run resumes. Every item without an image ends up in ``images/failures.csv`` (item_id, url, reason);
the dataset stays usable without them (``image_path`` is null).

Item ids depend on the input (a changed ratings file renumbers items), so ``images/sources.tsv``
records the URL each file was fetched from (appended as downloads finish, so an interrupted run
keeps it). A file whose recorded URL differs from the item's current URL is stale and fetched
again; a file with no record (placed by hand) is trusted.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mllmrec.cache import atomic_path
from mllmrec.prepare.download import RETRYABLE_STATUS, backoff_delay, make_client

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.csv"
SOURCES_FILE = "sources.tsv"
# Amazon serves a 1x1 GIF for images it no longer has: not an image of the item
MIN_SIDE = 2
MAX_BYTES = 50 << 20

__all__ = [
    "FAILURES_FILE",
    "SOURCES_FILE",
    "ImageReport",
    "fetch_images",
    "image_file",
    "is_valid_image",
    "large_image_url",
    "read_sources",
]

# Amazon image URLs carry the size/crop request between the image id and the extension:
#   .../images/I/41Bb6wf%2BqUL._SX300_.jpg  or  .../I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg
# Dropping "._..._" asks for the original upload (the largest version).
_SIZE_MODIFIER = re.compile(r"\._[^/]*_(\.[A-Za-z0-9]+)$")


def large_image_url(url: str) -> str:
    """The full-size version of an Amazon image URL (the size/crop modifier removed).

    ``http://ecx.images-amazon.com/images/I/41Bb6wf%2BqUL._SX300_.jpg`` ->
    ``http://ecx.images-amazon.com/images/I/41Bb6wf%2BqUL.jpg``. Other URLs are returned unchanged.
    """
    if "/images/I/" not in url:
        return url
    return _SIZE_MODIFIER.sub(r"\1", url)


def image_file(images_dir: Path, item_id: int) -> Path:
    return images_dir / f"{item_id}.jpg"


def is_valid_image(path: Path) -> bool:
    """Whether ``path`` is a readable image file (PIL's structural check: cheap, no full decode).

    Files are only ever written after a full decode, so this guards against files damaged or
    replaced by hand rather than against our own partial writes.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for bad files; any of them means "fetch again"
        return False


@dataclass
class ImageReport:
    """Outcome of one pass: relative paths of the images present, and why the others are missing."""

    paths: dict[int, str] = field(default_factory=dict)
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    downloaded: int = 0
    reused: int = 0


class _Permanent(Exception):
    """A failure no retry will fix (404, not an image), or retries that never reached the server
    (``unreachable``)."""

    def __init__(self, reason: str, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.unreachable = unreachable


def _decode_to_jpeg(data: bytes) -> bytes:
    """Validate image bytes by a full decode; JPEG bytes are kept as they are, others re-encoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if min(img.size) < MIN_SIDE:
                raise _Permanent(f"placeholder image {img.size[0]}x{img.size[1]}")
            if img.format == "JPEG":
                return data
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
    except _Permanent:
        raise
    except Exception as err:  # PIL: UnidentifiedImageError, OSError (truncated), DecompressionBombError...
        raise _Permanent(f"not a decodable image ({type(err).__name__}: {err})") from None


def _fetch_one(client: httpx.Client, url: str, dest: Path, retries: int, backoff_s: float) -> None:
    """Fetch, validate and atomically write one image; raises _Permanent with the reason."""
    last = "no attempt made"
    connected = False
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_delay(attempt - 1, backoff_s))
        try:
            resp = client.get(url)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
            raise _Permanent(f"bad URL ({err})") from None
        except httpx.TransportError as err:
            last = f"{type(err).__name__}: {err}"
            continue
        connected = True
        if resp.status_code in RETRYABLE_STATUS:
            last = f"HTTP {resp.status_code}"
            continue
        if resp.status_code != 200:
            raise _Permanent(f"HTTP {resp.status_code}")
        if len(resp.content) > MAX_BYTES:
            raise _Permanent(f"larger than {MAX_BYTES >> 20} MiB")
        data = _decode_to_jpeg(resp.content)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data)
        return
    raise _Permanent(f"gave up after {retries + 1} attempts: {last}", unreachable=not connected)


def read_sources(images_dir: Path) -> dict[int, str]:
    """``{item_id: url}`` from ``sources.tsv`` (the last line of an item wins; a torn line is ignored)."""
    path = images_dir / SOURCES_FILE
    sources: dict[int, str] = {}
    if not path.is_file():
        return sources
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            item, sep, url = line.rstrip("\n").partition("\t")
            if sep and item.isdigit() and line.endswith("\n"):
                sources[int(item)] = url
    return sources


def _write_sources(images_dir: Path, sources: dict[int, str]) -> None:
    """Rewrite ``sources.tsv`` compactly (one line per present image)."""
    with atomic_path(images_dir / SOURCES_FILE) as tmp:
        tmp.write_text("".join(f"{i}\t{u}\n" for i, u in sorted(sources.items())), encoding="utf-8")


def _write_failures(path: Path, failures: Sequence[tuple[int, str, str]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["item_id", "url", "reason"])
            writer.writerows(sorted(failures))


def fetch_images(
    urls: Sequence[str | None],
    images_dir: str | Path,
    *,
    workers: int = 16,
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> ImageReport:
    """Download ``urls[item_id]`` to ``images_dir/<item_id>.jpg`` for every item.

    Present valid files are reused; missing URLs and failed downloads are listed (with reasons)
    in ``images_dir/failures.csv``, rewritten after each complete pass. Paths in the report are
    relative to the dataset folder (``images/<item_id>.jpg``).
    """
    from tqdm import tqdm

    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    report = ImageReport()
    sources = read_sources(images_dir)
    todo: list[tuple[int, str]] = []
    for item_id, url in enumerate(urls):
        dest = image_file(images_dir, item_id)
        recorded = sources.get(item_id)
        if dest.is_file() and recorded is not None and recorded != url:
            dest.unlink()  # fetched for another item or URL (the ids changed): never show it for this one
            sources.pop(item_id)
        if dest.is_file() and is_valid_image(dest):
            report.paths[item_id] = f"{images_dir.name}/{dest.name}"
            report.reused += 1
        elif not url:
            report.failures.append((item_id, "", "no image URL in the metadata"))
        else:
            todo.append((item_id, url))
    for item_id in [i for i in sources if i >= len(urls)]:
        sources.pop(item_id)
    log.info("images: %d present, %d to download, %d without URL", report.reused, len(todo),
             len(report.failures))
    own_client = client is None
    client = client or make_client(timeout_s, max_connections=workers)
    # offline (or the image host is gone): stop after this many failures to connect in a row with
    # no success, instead of grinding through every item's retries (hours for 23k items)
    give_up_after = max(8, 2 * workers)
    _write_sources(images_dir, sources)  # compact first: appends then never follow a torn line
    log_file = open(images_dir / SOURCES_FILE, "a", encoding="utf-8")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {
                pool.submit(_fetch_one, client, url, image_file(images_dir, item_id), retries, backoff_s): (item_id, url)
                for item_id, url in todo
            }
            try:
                unreachable_in_a_row, gave_up = 0, False
                for future in tqdm(as_completed(futures), total=len(futures), desc="images", unit="img",
                                   disable=not progress, mininterval=0.5):
                    item_id, url = futures[future]
                    try:
                        future.result()
                    except CancelledError:
                        report.failures.append((item_id, url, "not attempted: the image host was unreachable"))
                        continue
                    except _Permanent as err:
                        report.failures.append((item_id, url, str(err)))
                        unreachable_in_a_row = unreachable_in_a_row + 1 if err.unreachable else 0
                        if not gave_up and unreachable_in_a_row >= give_up_after and report.downloaded == 0:
                            gave_up = True
                            for other in futures:
                                other.cancel()  # those already running finish; the rest are skipped
                            log.warning(
                                "images: the first %d downloads could not reach the server (%s). Offline? "
                                "The remaining images are skipped and the dataset is written without them; "
                                "run prepare.py again with prepare.force=true when online (present images "
                                "are kept).", unreachable_in_a_row, err,
                            )
                        continue
                    unreachable_in_a_row = 0
                    report.paths[item_id] = f"{images_dir.name}/{image_file(images_dir, item_id).name}"
                    report.downloaded += 1
                    sources[item_id] = url
                    log_file.write(f"{item_id}\t{url}\n")
                    log_file.flush()
            except BaseException:
                # Ctrl-C: drop what has not started; finished images stay on disk for the next run
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        log_file.close()
        if own_client:
            client.close()
    _write_sources(images_dir, sources)
    _write_failures(images_dir / FAILURES_FILE, report.failures)
    if report.failures:
        log.warning("images: %d of %d items have no image (reasons in %s)", len(report.failures), len(urls),
                    images_dir / FAILURES_FILE)
    return report
