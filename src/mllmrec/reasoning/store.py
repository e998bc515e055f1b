"""The generation cache: append-only shards of finished generations, keyed by content hash.

Each completed chunk of generations becomes one small parquet file under ``<dir>/shards/``,
written to a temp name and renamed into place, so a file is either complete or absent: a process
killed at any moment loses at most the chunk it was working on, and a rerun regenerates exactly
the keys that have no record. Readers take every shard (temp files start with ``.`` and are
ignored; a corrupt one, e.g. truncated by a disk error, is moved aside with a warning when it is
read and its keys count as missing, so they are generated again; a shard that disappeared is
forgotten at the next ``refresh``), and when one key has several records (two processes raced, or a failure was retried)
the first successful one in shard-name order (names start with the write time) wins, else the
latest failure: the result does not depend on the order in which a reader saw the files.

Start-up does not read the records. The store keeps an index of 16-byte key digests, each with the
location (shard, row) and status of the key's winning record, sorted by digest (25 bytes a key, so
10M keys take about 250 MB). Index *segments* under ``<dir>/index/`` hold that table for a set of
shards; they are derived data, written atomically whenever ``compact_every`` shards are not yet
covered and consolidated into one when there are more than ``max_segments``. Opening a store
loads the segments and reads only the ``key``/``status`` columns of shards no segment covers; a
lost or corrupt segment only costs a re-read of its shards. The text of a record is read from its
shard when asked for (``get``/``get_many``).

The winner rule is a preference order (any success before any failure; earlier successes first;
later failures first), so merging two indexes is a per-key minimum: associative, commutative and
idempotent, which is why overlapping segments and partial views of other writers are harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mllmrec.cache import atomic_path, quarantine

log = logging.getLogger(__name__)

__all__ = ["Record", "GenerationStore", "RECORD_COLUMNS", "key_digests"]

RECORD_COLUMNS = ["key", "kind", "ref", "status", "text", "n_tokens", "finish_reason", "error",
                  "backend", "created"]

#: bytes of a key digest in the index (blake2b): collisions are as unlikely as for the keys themselves
DIGEST_BYTES = 16
_DIGEST = f"S{DIGEST_BYTES}"
#: index segment format version (bump when the arrays change)
_SEGMENT_VERSION = 1


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


def key_digests(keys: Iterable[str]) -> np.ndarray:
    """16-byte blake2b digests of ``keys``. Shapes: (n,) of dtype ``S16``."""
    return np.array([hashlib.blake2b(k.encode("utf-8"), digest_size=DIGEST_BYTES).digest() for k in keys],
                    dtype=_DIGEST)


@dataclass
class _Index:
    """Winning record per key digest, sorted by digest (no duplicates).

    Shapes: ``digest`` (n,) S16, ``shard`` (n,) int32 ids into the store's shard-name list,
    ``row`` (n,) int32 row in that shard, ``ok`` (n,) bool.
    """

    digest: np.ndarray
    shard: np.ndarray
    row: np.ndarray
    ok: np.ndarray

    @staticmethod
    def empty() -> _Index:
        return _Index(np.empty(0, _DIGEST), np.empty(0, np.int32), np.empty(0, np.int32),
                      np.empty(0, bool))

    def __len__(self) -> int:
        return len(self.digest)

    def find(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``digests`` in the index and whether each is there. Shapes: (m,), (m,)."""
        pos = np.searchsorted(self.digest, digests)
        inside = pos < len(self.digest)
        found = np.zeros(len(digests), bool)
        found[inside] = self.digest[pos[inside]] == digests[inside]
        return pos, found


def _preference(shard_rank: np.ndarray, row: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Sort key of records for the winner rule (smaller wins): successes first, the earliest of
    them first; then failures, the latest first.

    ``order = rank(shard name) * 2**31 + row``; preference = ``order`` for a success and
    ``2**61 + (2**61 - order)`` for a failure. Shapes: (n,) int64.
    """
    order = shard_rank.astype(np.int64) * (1 << 31) + row.astype(np.int64)
    return np.where(ok, order, (1 << 61) + ((1 << 61) - order))


class GenerationStore:
    """Shard files under ``<root>/shards`` plus an index of which record each key resolves to.

    ``compact_every``: uncovered shards that make this process write an index segment;
    ``max_segments``: segments beyond which they are merged into one.
    """

    def __init__(self, root: str | os.PathLike, compact_every: int = 64, max_segments: int = 16) -> None:
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.index_dir = self.root / "index"
        self.compact_every = int(compact_every)
        self.max_segments = int(max_segments)
        self._index = _Index.empty()
        self._pending: list[_Index] = []  # resolved winners not yet merged into the index
        self._names: list[str] = []  # shard names known to this store, by id
        self._ids: dict[str, int] = {}
        self._rank: np.ndarray | None = None  # rank of each shard id's name in sorted order
        self._segments: set[str] = set()  # segment files merged into the index
        self._uncovered: dict[str, None] = {}  # known shards no segment covers (an ordered set)
        self._covered: set[str] = set()
        self._gone: set[str] = set()  # shards moved aside (corrupt) or deleted: their entries dropped
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()  # recently read shards
        self._seq = 0

    # -- shard ids and order --------------------------------------------------------------------
    def _shard_id(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is None:
            sid = self._ids[name] = len(self._names)
            self._names.append(name)
            self._rank = None
        return sid

    def _ranks(self) -> np.ndarray:
        if self._rank is None or len(self._rank) != len(self._names):
            rank = np.empty(len(self._names), np.int64)
            rank[np.argsort(np.array(self._names, dtype=object), kind="stable")] = np.arange(len(self._names))
            self._rank = rank
        return self._rank

    # -- index building -------------------------------------------------------------------------
    def _resolve(self, digest: np.ndarray, shard: np.ndarray, row: np.ndarray, ok: np.ndarray,
                 one_shard: bool = False) -> _Index:
        """Sorted winners of arbitrary (possibly repeated) entries (``one_shard``: all from one shard,
        so rows alone order them and the shard ranks need no update)."""
        if len(digest) == 0:
            return _Index.empty()
        rank = np.zeros(len(digest), np.int64) if one_shard else self._ranks()[shard]
        pref = _preference(rank, row, ok)
        order = np.lexsort((pref, digest))
        digest = digest[order]
        first = np.ones(len(digest), bool)
        first[1:] = digest[1:] != digest[:-1]
        keep = order[first]
        return _Index(digest[first], shard[keep].astype(np.int32), row[keep].astype(np.int32), ok[keep])

    def _merge(self, new: _Index) -> None:
        """Queue resolved winners ``new`` for the index; folded in before the next lookup, so a
        writer appending many chunks pays one O(index) insert per fold, not per chunk."""
        if len(new):
            self._pending.append(new)

    def _fold(self) -> None:
        """Merge the queued winners into the index (per-key preference minimum)."""
        if not self._pending:
            return
        parts, self._pending = sorted(self._pending, key=len, reverse=True), []
        if len(self._index) == 0:  # opening: the largest segment becomes the index as it is
            self._index = parts.pop(0)
            if not parts:
                return
        # re-sorting only the small parts keeps opening a 10M store at one copy of its index
        new = parts[0] if len(parts) == 1 else self._resolve(
            np.concatenate([p.digest for p in parts]), np.concatenate([p.shard for p in parts]),
            np.concatenate([p.row for p in parts]), np.concatenate([p.ok for p in parts]))
        old = self._index
        if len(old) == 0:
            self._index = new
            return
        pos, found = old.find(new.digest)
        if found.any():
            at, idx = pos[found], np.flatnonzero(found)
            rank = self._ranks()
            old_pref = _preference(rank[old.shard[at]], old.row[at], old.ok[at])
            new_pref = _preference(rank[new.shard[idx]], new.row[idx], new.ok[idx])
            better = new_pref < old_pref
            at, idx = at[better], idx[better]
            old.shard[at], old.row[at], old.ok[at] = new.shard[idx], new.row[idx], new.ok[idx]
        fresh = ~found
        if fresh.any():
            where = pos[fresh]
            self._index = _Index(np.insert(old.digest, where, new.digest[fresh]),
                                 np.insert(old.shard, where, new.shard[fresh]),
                                 np.insert(old.row, where, new.row[fresh]),
                                 np.insert(old.ok, where, new.ok[fresh]))

    def _forget(self, names: Iterable[str]) -> None:
        """Drop the index entries of shards that are gone; their keys count as missing (records of
        the same keys in other shards, which had lost to these, come back on a fresh open)."""
        names = set(names)
        self._gone |= names
        for name in names:
            self._uncovered.pop(name, None)
        ids = np.array([self._ids[n] for n in names if n in self._ids], np.int32)
        self._fold()
        keep = ~np.isin(self._index.shard, ids)
        if not keep.all():
            idx = self._index
            self._index = _Index(idx.digest[keep], idx.shard[keep], idx.row[keep], idx.ok[keep])

    def _read_shard_keys(self, names: Sequence[str]) -> _Index:
        """Resolved winners of whole shard files, from their ``key`` and ``status`` columns only
        (a corrupt shard is moved aside and contributes nothing)."""
        digests, shards, rows, oks = [], [], [], []
        for name in names:
            table = _read_shard(self.shards / name, ["key", "status"])
            if table is None:
                self._gone.add(name)
                continue
            keys = table.column("key").to_pylist()
            digests.append(key_digests(keys))
            shards.append(np.full(len(keys), self._shard_id(name), np.int32))
            rows.append(np.arange(len(keys), dtype=np.int32))
            oks.append(table.column("status").to_numpy(zero_copy_only=False) == "ok")
        if not digests:
            return _Index.empty()
        return self._resolve(np.concatenate(digests), np.concatenate(shards), np.concatenate(rows),
                             np.concatenate(oks))

    # -- index segments -------------------------------------------------------------------------
    def _segment_files(self) -> list[str]:
        if not self.index_dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.index_dir)
                      if e.name.endswith(".npz") and not e.name.startswith("."))

    def _load_segment(self, name: str) -> tuple[list[str], _Index] | None:
        """A segment's shard names and winners (ids remapped to this store); None when unusable."""
        try:
            with np.load(self.index_dir / name, allow_pickle=False) as z:
                if int(z["version"]) != _SEGMENT_VERSION:
                    return None
                names = bytes(z["names"]).decode("utf-8").split("\n")
                local = z["shard"]
                ids = np.array([self._shard_id(n) for n in names], np.int32)
                seg = _Index(z["digest"], ids[local], z["row"].astype(np.int32), z["ok"].astype(bool))
        except FileNotFoundError:  # merged away by another process: its shards are in the merged one
            return None
        except (OSError, ValueError, KeyError) as exc:  # corrupt: the shards are still the truth
            log.warning("ignoring unreadable generation index segment %s (%s)", name, exc)
            return None
        return names, seg

    def _write_segment(self, shard_names: Sequence[str], winners: _Index) -> str:
        """Publish the winners of ``shard_names`` as one segment file (atomically)."""
        local_of = {self._ids[n]: i for i, n in enumerate(shard_names)}
        local = np.array([local_of[s] for s in winners.shard.tolist()], np.int32)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        with atomic_path(self.index_dir / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, version=np.int64(_SEGMENT_VERSION), digest=winners.digest, shard=local,
                         row=winners.row, ok=winners.ok,
                         names=np.frombuffer("\n".join(shard_names).encode("utf-8"), np.uint8))
        self._segments.add(name)
        return name

    def _compact(self) -> None:
        """Cover this process's uncovered shards by a segment; merge segments when too many.

        A segment for shards S holds the index rows whose winner lies in S: a key whose winner is
        in another shard T is left out, which is exact because T's record also beats every record
        of S and T (never deleted) reaches every reader by its own segment or file.
        """
        if len(self._uncovered) >= self.compact_every:
            names = list(self._uncovered)
            self._fold()
            idx = self._index
            mask = np.isin(idx.shard, np.array([self._ids[n] for n in names], np.int32))
            self._write_segment(names, _Index(idx.digest[mask], idx.shard[mask], idx.row[mask], idx.ok[mask]))
            self._covered.update(names)
            self._uncovered.clear()
        on_disk = self._segments & set(self._segment_files())
        if len(on_disk) > self.max_segments:
            # the index holds the winners over every shard this store knows: one segment replaces
            # the ones it has merged (segments it has not seen yet stay)
            self._fold()
            merged = self._write_segment(self._names, self._index)
            for name in on_disk:
                with contextlib.suppress(FileNotFoundError):
                    (self.index_dir / name).unlink()
            self._segments = (self._segments - on_disk) | {merged}
            self._covered.update(self._names)
            self._uncovered.clear()

    # -- public API -----------------------------------------------------------------------------
    def _shard_files(self) -> list[str]:
        if not self.shards.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.shards)
                      if e.name.endswith(".parquet") and not e.name.startswith("."))

    def refresh(self) -> int:
        """Take in shards written since the last call (by this or any process): index segments
        first, then the key columns of shards no segment covers. Returns how many shards are new."""
        known = len(self._names)
        for name in self._segment_files():
            if name in self._segments:
                continue
            loaded = self._load_segment(name)
            self._segments.add(name)
            if loaded is not None:
                shard_names, seg = loaded
                self._merge(seg)
                self._covered.update(shard_names)
        listed = self._shard_files()
        vanished = set(self._names) - set(listed) - self._gone
        if vanished:  # moved aside or deleted since they were indexed: their keys are missing now
            self._forget(vanished)
        new = [n for n in listed if n not in self._covered and n not in self._uncovered]
        self._merge(self._read_shard_keys(new))
        for name in new:
            if name not in self._gone:
                self._shard_id(name)
                self._uncovered[name] = None
        for name in [n for n in self._uncovered if n in self._covered]:
            del self._uncovered[name]
        self._compact()
        return len(self._names) - known

    def get(self, key: str) -> Record | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Record]:
        """The winning record of each key that has one (one read per shard involved)."""
        keys = list(dict.fromkeys(keys))
        self._fold()
        if not keys or len(self._index) == 0:
            return {}
        pos, found = self._index.find(key_digests(keys))
        by_shard: dict[int, list[tuple[str, int]]] = {}
        for key, p in zip((k for k, f in zip(keys, found) if f), pos[found].tolist()):
            by_shard.setdefault(int(self._index.shard[p]), []).append((key, int(self._index.row[p])))
        def rows_of(sid: int, table: pa.Table | None) -> list[dict] | None:
            rows = pa.array([row for _, row in by_shard[sid]], pa.int64())
            return None if table is None else table.take(rows).to_pylist()

        if len(by_shard) > 16:  # keys spread over many shards: parquet reads overlap in threads
            from concurrent.futures import ThreadPoolExecutor

            def read(sid: int) -> list[dict] | None:  # not through the shared cache: threads
                return rows_of(sid, _read_shard(self.shards / self._names[sid], RECORD_COLUMNS))

            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                values_by_shard = dict(zip(by_shard, pool.map(read, by_shard)))
        else:
            values_by_shard = {sid: rows_of(sid, self._table(self._names[sid])) for sid in by_shard}
        unreadable = [self._names[sid] for sid, values in values_by_shard.items() if values is None]
        if unreadable:
            self._forget(unreadable)
        out = {}
        for sid, wanted in by_shard.items():
            if values_by_shard[sid] is None:
                continue
            for (key, _), values in zip(wanted, values_by_shard[sid]):
                record = _record(values)
                if record.key != key:  # a digest collision would land here: never silently wrong
                    raise RuntimeError(f"generation index of {self.root} points {key!r} at a record of "
                                       f"{record.key!r}; delete {self.index_dir} to rebuild it")
                out[key] = record
        return out

    def _table(self, name: str) -> pa.Table | None:
        """A shard's records (a few recent shards are kept: lookups come in runs); None when corrupt."""
        table = self._tables.get(name)
        if table is None:
            table = _read_shard(self.shards / name, RECORD_COLUMNS)
            if table is None:
                return None
            self._tables[name] = table
            if len(self._tables) > 8:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(name)
        return table

    def locations(self, keys: Sequence[str]) -> list[str]:
        """``<shard name>:<row>`` of each key's winning record (``""`` when it has none): which
        records a set of keys resolves to, without reading them."""
        keys = list(keys)
        self._fold()
        if not keys:
            return []
        pos, found = self._index.find(key_digests(keys))
        out = [""] * len(keys)
        for i in np.flatnonzero(found).tolist():
            p = pos[i]
            out[i] = f"{self._names[int(self._index.shard[p])]}:{int(self._index.row[p])}"
        return out

    def _status(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Whether each key has a record and whether that record is a success. Shapes: (n,), (n,)."""
        self._fold()
        pos, found = self._index.find(key_digests(keys))
        ok = np.zeros(len(keys), bool)
        ok[found] = self._index.ok[pos[found]]
        return found, ok

    def done(self, key: str, retry_failed: bool = False) -> bool:
        """Whether ``key`` needs no more work (a success, or a failure when not retrying failures)."""
        return bool(self.done_many([key], retry_failed)[0])

    def done_many(self, keys: Sequence[str], retry_failed: bool = False) -> np.ndarray:
        """``done`` for many keys at once. Shapes: (n,) bool."""
        keys = list(keys)
        if not keys:
            return np.zeros(0, bool)
        found, ok = self._status(keys)
        return found & (ok | (not retry_failed))

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys with no record at all (neither output nor failure)."""
        keys = list(keys)
        if not keys:
            return []
        found, _ = self._status(keys)
        return [k for k, f in zip(keys, found) if not f]

    def append(self, records: Sequence[Record]) -> Path | None:
        """Publish ``records`` as one new shard file (atomically) and index them."""
        if not records:
            return None
        frame = pd.DataFrame([asdict(r) for r in records], columns=RECORD_COLUMNS)
        frame = frame.astype({"ref": "int64", "n_tokens": "int64", "created": "float64"})
        return self._publish(frame, [r.key for r in records], np.array([r.ok for r in records], bool))

    def _publish(self, frame: pd.DataFrame | pa.Table, keys: Sequence[str], ok: np.ndarray) -> Path:
        """Write one shard (rows in ``RECORD_COLUMNS`` order; ``keys``/``ok`` its key and status
        columns) atomically, then index it. Shapes: ``ok`` (rows,) bool."""
        self._seq += 1
        # sortable by time first so that "first success" means the earliest written one
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.shards / name
        with atomic_path(path) as tmp:
            if isinstance(frame, pa.Table):
                pq.write_table(frame, tmp)
            else:
                frame.to_parquet(tmp, index=False)
        sid = self._shard_id(name)
        self._merge(self._resolve(key_digests(keys), np.full(len(keys), sid, np.int32),
                                  np.arange(len(keys), dtype=np.int32), ok, one_shard=True))
        self._uncovered[name] = None
        self._compact()
        return path

    def records(self) -> dict[str, Record]:
        """Every key's winning record (reads every shard: for inspection and small stores)."""
        self._fold()
        out: dict[str, Record] = {}
        for sid in np.unique(self._index.shard).tolist():
            rows = self._index.row[self._index.shard == sid]
            table = _read_shard(self.shards / self._names[sid], RECORD_COLUMNS)
            if table is None:
                continue
            for values in table.take(pa.array(rows, pa.int64())).to_pylist():
                record = _record(values)
                out[record.key] = record
        return out

    def __len__(self) -> int:
        self._fold()
        return len(self._index)


def _read_shard(path: Path, columns: Sequence[str]) -> pa.Table | None:
    """``columns`` of one shard; None when it vanished or is corrupt (truncated, garbled, or missing
    a record column), in which case it is moved aside as ``<name>.corrupt-<time>`` with a warning."""
    try:
        shard = pq.ParquetFile(path)
        missing = set(RECORD_COLUMNS) - set(shard.schema_arrow.names)
        if missing:
            raise ValueError(f"columns {sorted(missing)} missing")
        return shard.read(columns=list(columns))
    except FileNotFoundError:  # moved aside by another reader meanwhile
        return None
    except (MemoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001  (pyarrow raises its own types for a bad file)
        quarantine(path, f"{type(err).__name__}: {err}")
        return None


def _record(values: dict) -> Record:
    error = values["error"]
    return Record(key=values["key"], kind=values["kind"], ref=int(values["ref"]), status=values["status"],
                  text=values["text"], n_tokens=int(values["n_tokens"]), finish_reason=values["finish_reason"],
                  error=None if error is None or (isinstance(error, float) and np.isnan(error)) else error,
                  backend=values["backend"], created=float(values["created"]))
