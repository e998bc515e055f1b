"""Resumable, checksummed downloads of the raw source files.

A download streams into ``<dest>.part``; an interrupted transfer is resumed with an HTTP ``Range``
request (a server that ignores it restarts the file), and only a complete file is renamed onto
``dest``, so a present ``dest`` is always a whole download. Known checksums are compared, but they
come from third parties: a mismatch is a loud warning naming both digests, never a deletion.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

import httpx

from mllmrec import __version__
from mllmrec.cache import file_lock
from mllmrec.data.errors import DatasetError

log = logging.getLogger(__name__)

USER_AGENT = f"mllmrec/{__version__} (research dataset preparation)"
# statuses worth retrying: the server may recover; any other 4xx will not
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 20

__all__ = [
    "DownloadError",
    "USER_AGENT",
    "sha256_file",
    "check_sha256",
    "download_file",
    "ensure_file",
    "make_client",
    "backoff_delay",
]


class DownloadError(DatasetError):
    """A source file could not be fetched; the message names the URL and where to put the file."""


def make_client(timeout_s: float, max_connections: int = 4) -> httpx.Client:
    """An httpx client with our user agent, redirects followed and bounded connections."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


def backoff_delay(attempt: int, base_s: float) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped at 60 s."""
    return min(60.0, base_s * (2 ** attempt))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, digest: str, expected: str | None) -> bool:
    """Compare ``digest`` (of ``path``) with ``expected``; warn loudly on a mismatch.

    Returns True when they match or nothing is expected. The file is kept either way: the
    expected values are reported by third parties and unverified.
    """
    if not expected or digest.lower() == expected.lower():
        return True
    bar = "!" * 78
    log.warning(
        "\n%s\nCHECKSUM MISMATCH for %s\n  expected sha256 %s\n  got      sha256 %s\n"
        "The expected value comes from a third party and is unverified, so the file is KEPT and used.\n"
        "If the counts printed below differ from MMRec's, delete the file and run again to re-download it.\n%s",
        bar, path, expected.lower(), digest, bar,
    )
    return False


def _offline_hint(url: str, dest: Path) -> str:
    return (
        f"If you are offline or the server is unreachable, fetch {url} by other means and place it "
        f"at {dest}, then run prepare.py again (present files are not downloaded again)."
    )


def _content_range_total(header: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/total`` or ``bytes */total``."""
    match = re.search(r"/(\d+)\s*$", header or "")
    return int(match.group(1)) if match else None


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


def _fetch_once(client: httpx.Client, url: str, dest: Path, part: Path, progress: bool) -> None:
    """One attempt: resume ``part`` from its current size, finish with a rename onto ``dest``.

    Raises httpx errors for transport problems (caller retries), :class:`DownloadError` for a
    response that no retry will fix, and ``_Retry`` for a retryable status or short body.
    """
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    # identity: byte offsets must count file bytes, not bytes of a compressed transfer
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416 and offset:
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total == offset:  # the part file already holds the whole file
                os.replace(part, dest)
                return
            part.unlink()  # the part is longer than the file (it changed on the server): restart
            raise _Retry(f"HTTP 416 for a {offset}-byte partial file; restarting from zero")
        if resp.status_code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {resp.status_code}")
        if resp.status_code not in (200, 206):
            raise DownloadError(
                f"Downloading {url} failed: HTTP {resp.status_code} {resp.reason_phrase}"
                f"{' (the file is not on the server: check source.category and the base URL)' if resp.status_code == 404 else ''}. "
                + _offline_hint(url, dest)
            )
        if resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"server resumed at byte {start}, not {offset}; restarting from zero")
            total = _content_range_total(resp.headers.get("Content-Range"))
            mode = "ab"
        else:  # 200: the server sent the whole file (no Range support or no partial file)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        received = offset
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
            mininterval=0.5,
        ) as bar:
            # raw and unchunked: every byte that arrived is on disk before a dropped connection raises
            for chunk in resp.iter_raw():
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _Retry(f"transfer ended at byte {received} of {total}")
    os.replace(part, dest)


class _Retry(Exception):
    """A failed attempt that another attempt (resuming the part file) may fix."""


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    timeout_s: float = 60.0,
    retries: int = 4,
    backoff_s: float = 2.0,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.part``, resuming and retrying.

    Transport errors, timeouts, retryable statuses (5xx, 429, 408) and short bodies are retried
    ``retries`` times with exponential backoff, each retry resuming where the last stopped.
    A 404 or other client error fails at once. A lock file keeps two processes off one download.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_client = client is None
    client = client or make_client(timeout_s)
    try:
        with file_lock(dest):
            if dest.is_file():  # another process finished it while we waited
                return dest
            last_error = "no attempt made"
            for attempt in range(retries + 1):
                if attempt:
                    delay = backoff_delay(attempt - 1, backoff_s)
                    log.warning("%s: %s; retry %d/%d in %.1f s (resuming at byte %d)", url, last_error,
                                attempt, retries, delay, part.stat().st_size if part.exists() else 0)
                    time.sleep(delay)
                try:
                    _fetch_once(client, url, dest, part, progress)
                    return dest
                except _Retry as err:
                    last_error = str(err)
                except httpx.TransportError as err:
                    last_error = f"{type(err).__name__}: {err}"
            raise DownloadError(
                f"Downloading {url} failed after {retries + 1} attempt(s): {last_error}. "
                f"The partial file {part} is kept and resumed by the next run. " + _offline_hint(url, dest)
            )
    finally:
        if own_client:
            client.close()


def ensure_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    download: bool = True,
    **kwargs,
) -> str:
    """Make sure ``dest`` exists (downloading it when allowed) and return its sha256.

    A present file is not downloaded again. When ``download`` is false and the file is missing,
    the error says which URL to fetch and where to put it.
    """
    dest = Path(dest)
    if not dest.is_file():
        if not download:
            raise DownloadError(
                f"{dest} is missing and prepare.download=false. Fetch {url} and place it at {dest}, "
                "or run with prepare.download=true."
            )
        log.info("downloading %s -> %s", url, dest)
        download_file(url, dest, **kwargs)
    digest = sha256_file(dest)
    check_sha256(dest, digest, sha256)
    return digest
