"""The generation cache: append-only shards of finished generations, keyed by content hash.

Each completed chunk of generations becomes one small parquet file under ``<dir>/shards/``,
written to a temp name and renamed into place, so a file is either complete or absent: a process
killed at any moment loses at most the chunk it was working on, and a rerun regenerates exactly
the keys that have no record. Readers take every shard (temp files start with ``.`` and are
ignored; a corrupt one, e.g. truncated by a disk error, is moved aside with a warning and its
generations are made again), and when one key has several records (two processes raced, or a
failure was retried) the first successful one wins, else the latest failure: the result does not
depend on timing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mllmrec.cache import atomic_path, quarantine

log = logging.getLogger(__name__)

__all__ = ["Record", "GenerationStore", "RECORD_COLUMNS"]

RECORD_COLUMNS = ["key", "kind", "ref", "status", "text", "n_tokens", "finish_reason", "error",
                  "backend", "created"]


@dataclass(frozen=True)
class Record:
    """One finished generation (``status`` ``ok``) or a recorded failure (``status`` ``failed``).

    ``kind`` is ``image`` or ``profile`` and ``ref`` the item or user id it was made for: both are
    informational (the key alone identifies the generation).
    """

    key: str
    kind: str
    ref: int
    status: str
    text: str
    n_tokens: int
    finish_reason: str
    error: str | None = None
    backend: str = ""
    created: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class GenerationStore:
    """Shard files under ``<root>/shards`` plus an in-memory index of what they hold."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.shards = self.root / "shards"
        self._records: dict[str, Record] = {}
        self._seen: set[str] = set()
        self._seq = 0

    def _shard_files(self) -> list[Path]:
        if not self.shards.is_dir():
            return []
        return sorted(p for p in self.shards.glob("*.parquet") if not p.name.startswith("."))

    def refresh(self) -> int:
        """Read shards written since the last call (by this or any process). Returns how many."""
        new = [p for p in self._shard_files() if p.name not in self._seen]
        for path in new:
            frame = self._read_shard(path)
            if frame is None:  # corrupt: moved aside; its keys have no record and are generated again
                continue
            for row in frame.itertuples(index=False):
                self._merge(Record(
                    key=row.key, kind=row.kind, ref=int(row.ref), status=row.status, text=row.text,
                    n_tokens=int(row.n_tokens), finish_reason=row.finish_reason,
                    error=None if pd.isna(row.error) else row.error, backend=row.backend,
                    created=float(row.created),
                ))
            self._seen.add(path.name)
        return len(new)

    @staticmethod
    def _read_shard(path: Path) -> pd.DataFrame | None:
        """A shard's records; None for a truncated or garbled shard, which is moved aside with a warning
        (as ``<name>.corrupt-<time>``, no longer matching ``*.parquet``)."""
        try:
            frame = pd.read_parquet(path)
            missing = set(RECORD_COLUMNS) - set(frame.columns)
            if missing:
                raise ValueError(f"columns {sorted(missing)} missing")
            return frame
        except (MemoryError, PermissionError, FileNotFoundError):
            raise
        except Exception as err:  # noqa: BLE001  (pyarrow raises its own types for a bad file)
            quarantine(path, f"{type(err).__name__}: {err}")
            return None

    def _merge(self, record: Record) -> None:
        old = self._records.get(record.key)
        # the first success is final; a later success replaces a failure; failures replace failures
        if old is None or (not old.ok):
            self._records[record.key] = record

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def done(self, key: str, retry_failed: bool = False) -> bool:
        """Whether ``key`` needs no more work (a success, or a failure when not retrying failures)."""
        record = self._records.get(key)
        return record is not None and (record.ok or not retry_failed)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys with no record at all (neither output nor failure)."""
        return [k for k in keys if k not in self._records]

    def append(self, records: Sequence[Record]) -> Path | None:
        """Publish ``records`` as one new shard file (atomically) and index them."""
        if not records:
            return None
        self._seq += 1
        # sortable by time first so that "first success" means the earliest written one
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.shards / name
        frame = pd.DataFrame([asdict(r) for r in records], columns=RECORD_COLUMNS)
        frame = frame.astype({"ref": "int64", "n_tokens": "int64", "created": "float64"})
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        self._seen.add(name)
        for record in records:
            self._merge(record)
        return path

    def records(self) -> dict[str, Record]:
        return dict(self._records)

    def __len__(self) -> int:
        return len(self._records)
