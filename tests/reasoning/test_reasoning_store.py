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


# -- the index: segments instead of reading every record at start-up ---------------------------------

def _reference(root: Path) -> dict[str, tuple[str, str]]:
    """Winner per key from a plain read of every shard in name order (the documented rule)."""
    best: dict[str, tuple[str, str]] = {}
    for path in sorted((root / "shards").glob("*.parquet")):
        for row in pd.read_parquet(path).itertuples(index=False):
            old = best.get(row.key)
            if old is None or old[0] != "ok":
                best[row.key] = (row.status, row.text)
    return best


def _random_appends(root: Path, n_chunks: int, seed: int, writers: int = 2, **kw) -> list[GenerationStore]:
    import random

    rng = random.Random(seed)
    stores = [GenerationStore(root, **kw) for _ in range(writers)]
    for chunk in range(n_chunks):
        store = stores[rng.randrange(writers)]
        store.refresh()
        recs = [rec(f"k{rng.randrange(40)}", rng.choice(["ok", "failed"]), text=f"c{chunk}r{i}")
                for i in range(rng.randrange(1, 6))]
        store.append(recs)
    return stores


def test_index_segments_agree_with_a_full_read(tmp_path: Path) -> None:
    # tiny thresholds: many segments and several consolidations happen within 60 chunks
    stores = _random_appends(tmp_path, 60, seed=3, compact_every=4, max_segments=3)
    assert list((tmp_path / "index").glob("*.npz")), "no index segment was written"
    expected = _reference(tmp_path)
    for store in [*stores, GenerationStore(tmp_path)]:
        store.refresh()
        got = store.get_many(expected)
        assert {k: (r.status, r.text) for k, r in got.items()} == expected
        assert len(store) == len(expected) and store.missing(["k1", "nope"]) == [
            k for k in ["k1", "nope"] if k not in expected]


def test_opening_an_indexed_store_reads_no_shard_keys(tmp_path: Path, monkeypatch) -> None:
    _random_appends(tmp_path, 30, seed=1, writers=1, compact_every=5, max_segments=100)
    expected = _reference(tmp_path)
    read: list[str] = []
    original = GenerationStore._read_shard_keys

    def counting(self, names):
        read.extend(names)
        return original(self, names)

    monkeypatch.setattr(GenerationStore, "_read_shard_keys", counting)
    fresh = GenerationStore(tmp_path, compact_every=5, max_segments=100)
    assert fresh.refresh() == 30
    assert read == []  # 30 shards, 6 segments of 5: every shard is covered
    assert {k: r.status for k, r in fresh.get_many(expected).items()} == {k: v[0] for k, v in expected.items()}


def test_lost_or_corrupt_segments_only_cost_a_reread(tmp_path: Path) -> None:
    _random_appends(tmp_path, 20, seed=7, writers=1, compact_every=3, max_segments=100)
    expected = _reference(tmp_path)
    segments = sorted((tmp_path / "index").glob("*.npz"))
    segments[0].unlink()
    segments[1].write_bytes(b"PK garbage")
    (tmp_path / "index" / ".half-written.npz.tmp.x.npz").write_bytes(b"PK")  # a kill -9 mid-write
    fresh = GenerationStore(tmp_path, compact_every=3, max_segments=100)
    fresh.refresh()
    assert {k: (r.status, r.text) for k, r in fresh.get_many(expected).items()} == expected


def test_done_many_follows_the_retry_rule(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    store.append([rec("good"), rec("bad", "failed")])
    assert store.done_many(["good", "bad", "none"]).tolist() == [True, True, False]
    assert store.done_many(["good", "bad", "none"], retry_failed=True).tolist() == [True, False, False]


def test_a_corrupt_indexed_shard_is_moved_aside_when_read_and_its_keys_made_again(tmp_path: Path) -> None:
    writer = GenerationStore(tmp_path, compact_every=1)  # every shard covered by a segment at once
    writer.append([rec("a"), rec("b")])
    bad = writer.append([rec("c"), rec("d")])
    bad.write_bytes(bad.read_bytes()[:40])  # truncated after it was indexed
    reader = GenerationStore(tmp_path, compact_every=1)
    reader.refresh()
    assert reader.missing(["a", "c"]) == []  # the index alone cannot know yet
    got = reader.get_many(["a", "b", "c", "d"])
    assert sorted(got) == ["a", "b"] and reader.missing(["a", "c", "d"]) == ["c", "d"]
    assert not bad.exists() and list(bad.parent.glob(f"{bad.name}.corrupt-*"))
    # a later run's open forgets the shard that is gone, so those keys are generated again
    rerun = GenerationStore(tmp_path, compact_every=1)
    rerun.refresh()
    assert rerun.missing(["a", "b", "c", "d"]) == ["c", "d"] and rerun.get("b").text == "t"
