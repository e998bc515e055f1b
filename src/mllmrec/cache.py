"""Content-hash keys, atomic writes and build-once caching shared by every stage.

Every derived artefact (graphs, embeddings, generations, processed datasets) is keyed by a hash of
everything that produced it and written atomically (temp file in the same folder + ``os.replace``), so
a killed process never leaves a half-written file and two processes racing for the same artefact
build it once (a file lock around "check, build, publish").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from filelock import FileLock

T = TypeVar("T")

log = logging.getLogger(__name__)

__all__ = [
    "stable_hash",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "file_lock",
    "build_once",
    "read_json",
    "sha256_file",
    "quarantine",
]


def _feed(h: hashlib._Hash, obj: Any) -> None:
    """Feed ``obj`` into ``h`` unambiguously (type tag + length prefixes)."""
    if isinstance(obj, np.generic):  # numpy scalar: key on the Python value (repr differs by version)
        obj = obj.item()
    # torch only when already imported: no tensor exists without it, and the modules that only need
    # atomic writes (data layout, reasoning outputs, the sweep's resume check) stay torch-free
    torch = sys.modules.get("torch")
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, (int, float)):
        h.update(b"F" + repr(obj).encode())
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        h.update(b"S" + len(data).to_bytes(8, "little") + data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        h.update(b"Y" + len(data).to_bytes(8, "little") + data)
    elif torch is not None and isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.layout != torch.strided:
            obj = obj.coalesce() if obj.is_sparse else obj.to_sparse_coo().coalesce()
            _feed(h, ("torch.sparse", obj.indices(), obj.values(), tuple(obj.shape)))
        else:
            dense = obj.detach().cpu()
            try:
                _feed(h, dense.numpy())
            except TypeError:  # bfloat16, float8: no numpy dtype, so hash the raw bits + torch dtype
                bits = dense.contiguous().reshape(-1).view(torch.uint8).numpy()
                _feed(h, ("torch", str(dense.dtype), tuple(dense.shape), bits))
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)  # note: turns shape () into (1,), so key on obj.shape
        _feed(h, ("ndarray", str(arr.dtype), tuple(obj.shape)))
        h.update(arr.view(np.uint8).reshape(-1).data if arr.size else b"")
    elif sp.issparse(obj):
        # a copy: csr_matrix(csr) shares arrays, and sorting must never reorder the caller's matrix;
        # merged duplicates also give equal content one key
        csr = sp.csr_matrix(obj, copy=True)
        csr.sum_duplicates()
        _feed(h, ("csr", tuple(csr.shape), csr.indptr.astype(np.int64), csr.indices.astype(np.int64),
                  csr.data))
    elif isinstance(obj, Mapping):
        h.update(b"M" + len(obj).to_bytes(8, "little"))
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L" + len(obj).to_bytes(8, "little"))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, Path):
        _feed(h, str(obj))
    else:
        raise TypeError(f"stable_hash cannot hash objects of type {type(obj).__name__}")


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest (sha256, truncated to ``length`` chars) of arbitrarily nested inputs.

    Accepts str/bytes/numbers/None, numpy arrays, torch tensors (dense or sparse), scipy sparse
    matrices, and lists/tuples/dicts of those. Equal content gives equal keys across processes and
    machines (no Python ``hash`` randomisation involved).
    """
    h = hashlib.sha256()
    _feed(h, list(parts))
    return h.hexdigest()[:length]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` defaults to ``path``'s own suffix so writers that dispatch on extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: writers such as np.save / to_parquet dispatch on it
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.tmp.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; publish it with the permissions a plain open() would give
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = -1) -> Iterator[None]:
    """Inter-process lock on ``<path>.lock`` (blocks until acquired unless ``timeout`` >= 0)."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=timeout):
        yield


class CorruptCacheEntry(Exception):
    """A cache file that fails its recorded hash or cannot be loaded (internal: it is rebuilt)."""


# errors that mean "this folder cannot be written", not "the artefact is bad"
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _load_checked(path: Path, load: Callable[[Path], T]) -> T:
    """``load(path)`` after checking the sha256 recorded in its meta file (when there is one).

    Raises :class:`CorruptCacheEntry` for a hash mismatch or any load failure (truncated, garbled).
    """
    try:
        recorded = read_json(_meta_path(path)).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None  # no (or an unreadable) meta file: the load itself is the check
    if recorded is not None and sha256_file(path) != recorded:
        raise CorruptCacheEntry(f"content hash differs from the one recorded in {_meta_path(path).name}")
    try:
        return load(path)
    except (MemoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001  (any failure to read a cache file means: rebuild it)
        raise CorruptCacheEntry(f"{type(err).__name__}: {err}") from err


def quarantine(path: str | os.PathLike, reason: str) -> Path | None:
    """Move a corrupt cache file aside as ``<name>.corrupt-<time>`` (kept for a post-mortem) with a
    warning; its meta file goes with it. Returns the new path (None when it vanished meanwhile)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.replace(_meta_path(path), aside.with_name(aside.name + ".meta.json"))
    log.warning("cache entry %s is corrupt (%s): moved aside to %s; rebuilding it", path, reason, aside.name)
    return aside


def _try_load(path: Path, load: Callable[[Path], T]) -> tuple[bool, T | None]:
    """(True, value) for a sound cache entry; (False, None) when missing or corrupt (moved aside)."""
    if not path.exists():
        return False, None
    try:
        return True, _load_checked(path, load)
    except CorruptCacheEntry as err:
        quarantine(path, str(err))
        return False, None


def build_once(
    path: str | os.PathLike,
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    load: Callable[[Path], T],
    meta: Mapping[str, Any] | None = None,
) -> tuple[T, bool]:
    """Load ``path`` if it exists, else build, save atomically and return it.

    A lock makes concurrent callers wait for the first builder instead of building again. ``meta``
    (how the artefact was made: parameters, input hashes, code version) is written next to it as
    ``<path>.meta.json`` with the file's sha256, so a human can tell where a cache file came from.

    Self-repairing: an entry that fails its recorded sha256 or cannot be loaded (truncated, garbled) is
    moved aside with a warning (:func:`quarantine`) and rebuilt. An unwritable cache folder (read-only,
    no permission, full) is a warning: the artefact is built and kept in memory only.

    Returns ``(value, built)`` where ``built`` says whether this call did the work.
    """
    path = Path(path)
    found, value = _try_load(path, load)
    if found:
        return value, False
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path))
        except OSError as err:
            if err.errno not in _UNWRITABLE:
                raise
            log.warning("cache folder %s is not writable (%s): building %s in memory only", path.parent,
                        err.strerror or err, path.name)
            return build(), True
        found, value = _try_load(path, load)  # another process built it while we waited
        if found:
            return value, False
        value = build()
        try:
            with atomic_path(path) as tmp:
                save(value, tmp)
                if meta is not None:  # the hash of exactly the bytes published under ``path``
                    atomic_write_json(_meta_path(path), {**dict(meta), "sha256": sha256_file(tmp)})
        except OSError as err:
            if err.errno not in _UNWRITABLE:
                raise
            log.warning("cannot write cache entry %s (%s): keeping it in memory only", path, err.strerror or err)
        return value, True
