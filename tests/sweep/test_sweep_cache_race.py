"""Jobs of one sweep that start together share the encoded features and the refined graph: the
first builds each artefact, the other waits for it and loads it (mllmrec.cache.build_once's lock)."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_helpers import race_for_caches  # noqa: E402


@pytest.mark.slow
def test_two_racing_jobs_build_embeddings_and_graph_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "builds.txt"
    results = [tmp_path / f"result{i}.json" for i in range(2)]
    procs = [ctx.Process(target=race_for_caches, args=(str(tmp_path / "cache"), str(counter), str(r), barrier))
             for r in results]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert sorted(counter.read_text().split()) == ["embeddings", "graph"]  # each built exactly once
    first, second = (json.loads(r.read_text()) for r in results)
    assert first == second  # both jobs use the same features and the same graph
    assert len(list((tmp_path / "cache" / "embeddings").glob("items-*.npy"))) == 1
    assert len(list((tmp_path / "cache" / "graphs").glob("refined_item_graph-*.pt"))) == 1
