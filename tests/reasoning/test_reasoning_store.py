"""The generation store: atomic shard files, resume, dedupe rules."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mllmrec.reasoning.store import GenerationStore, Record


def rec(key: str, status: str = "ok", text: str = "t", created: float = 0.0) -> Record:
    return Record(key=key, kind="image", ref=0, status=status, text=text if status == "ok" else "",
                  n_tokens=1, finish_reason="stop" if status == "ok" else "error",
                  error=None if status == "ok" else "boom", backend="fake", created=created)


def test_append_publishes_one_file_per_chunk_and_reloads(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    store.append([rec("a"), rec("b")])
    store.append([rec("c")])
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 2
    fresh = GenerationStore(tmp_path)
    assert fresh.refresh() == 2
    assert sorted(fresh.records()) == ["a", "b", "c"] and fresh.get("b").text == "t"
    assert fresh.missing(["a", "z"]) == ["z"]


def test_half_written_temp_files_are_ignored(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    store.append([rec("a")])
    # what a kill -9 during a write leaves behind: a dot-prefixed temp file, possibly garbage
    (tmp_path / "shards" / ".0001.parquet.tmp.x.parquet").write_bytes(b"PAR1 truncated")
    fresh = GenerationStore(tmp_path)
    fresh.refresh()
    assert list(fresh.records()) == ["a"]


def test_success_beats_failure_and_first_success_is_final(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    store.append([rec("k", "failed")])
    assert store.done("k") and not store.done("k", retry_failed=True)
    store.append([rec("k", "ok", "first")])
    store.append([rec("k", "ok", "second"), rec("k", "failed")])
    fresh = GenerationStore(tmp_path)
    fresh.refresh()
    assert fresh.get("k").text == "first" and fresh.done("k", retry_failed=True)


def test_refresh_sees_other_writers(tmp_path: Path) -> None:
    mine, theirs = GenerationStore(tmp_path), GenerationStore(tmp_path)
    mine.refresh()
    theirs.append([rec("x")])
    assert mine.missing(["x"]) == ["x"]
    assert mine.refresh() == 1 and mine.missing(["x"]) == []


def test_shard_files_hold_the_documented_columns(tmp_path: Path) -> None:
    path = GenerationStore(tmp_path).append([rec("a")])
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["key", "kind", "ref", "status", "text", "n_tokens", "finish_reason",
                                   "error", "backend", "created"]
