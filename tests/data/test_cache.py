"""Content-hash keys, atomic writes and build-once caching."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import stat

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mllmrec.cache import atomic_path, atomic_save_npy, atomic_write_json, build_once, stable_hash

from . import _cache_workers

# ------------------------------------------------------------------ stable_hash


def test_hash_is_a_hex_string_of_the_requested_length():
    key = stable_hash("a", 1)
    assert len(key) == 16 and int(key, 16) >= 0
    assert len(stable_hash("a", 1, length=40)) == 40
    assert stable_hash("a", 1, length=40).startswith(key)


def test_known_value_is_stable_across_processes_and_versions():
    # pinned: a change here silently invalidates every cache on disk
    assert stable_hash({"alpha": 0.5, "k": 10}, "model", None, True) == stable_hash(
        {"k": 10, "alpha": 0.5}, "model", None, True
    )
    assert stable_hash("x") == "1989639a45e3926b"


def test_equal_numpy_content_gives_equal_keys():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert stable_hash(a) == stable_hash(a.copy())
    assert stable_hash(a) == stable_hash(np.asfortranarray(a))  # memory layout is not content
    strided = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]
    assert stable_hash(strided) == stable_hash(np.ascontiguousarray(strided))


def test_different_numpy_content_gives_different_keys():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.copy()
    b[2, 3] += 1e-6
    keys = {
        stable_hash(a),
        stable_hash(b),
        stable_hash(a.astype(np.float64)),  # dtype
        stable_hash(a.astype(np.int32)),
        stable_hash(a.reshape(4, 3)),  # shape, same bytes
        stable_hash(a.reshape(12)),
        stable_hash(a.reshape(1, 12)),
    }
    assert len(keys) == 7


def test_torch_tensors_hash_by_content():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert stable_hash(t) == stable_hash(t.clone())
    assert stable_hash(t) == stable_hash(t.t().contiguous().t())  # non-contiguous view, same values
    assert stable_hash(t.requires_grad_(True)) == stable_hash(t.detach())
    assert stable_hash(t) != stable_hash(t.double())
    assert stable_hash(t) != stable_hash(t.reshape(3, 2))
    assert stable_hash(t) != stable_hash(t + 1)


@pytest.mark.filterwarnings("ignore:Sparse:UserWarning")
def test_torch_sparse_tensors_hash_by_content():
    idx = torch.tensor([[0, 1, 1, 0], [2, 0, 0, 2]])
    val = torch.tensor([1.0, 2.0, 3.0, 4.0])
    uncoalesced = torch.sparse_coo_tensor(idx, val, (2, 3))
    coalesced = uncoalesced.coalesce()
    assert stable_hash(uncoalesced) == stable_hash(coalesced)
    assert stable_hash(coalesced) == stable_hash(coalesced.to_sparse_csr())
    assert stable_hash(coalesced) != stable_hash(torch.sparse_coo_tensor(idx, val, (2, 4)))
    assert stable_hash(coalesced) != stable_hash(torch.sparse_coo_tensor(idx, val * 2, (2, 3)))


def test_scipy_sparse_hashes_by_content_not_format():
    dense = np.array([[0, 1.5, 0], [2.0, 0, 0], [0, 0, 3.0]], dtype=np.float32)
    csr = sp.csr_matrix(dense)
    assert stable_hash(csr) == stable_hash(sp.coo_matrix(dense))
    assert stable_hash(csr) == stable_hash(sp.csc_matrix(dense))
    unsorted = sp.csr_matrix((np.array([5.0, 4.0], np.float32), np.array([2, 0]), np.array([0, 2, 2])),
                             shape=(2, 3))
    assert not unsorted.has_sorted_indices
    sorted_ = sp.csr_matrix(np.array([[4.0, 0, 5.0], [0, 0, 0]], dtype=np.float32))
    assert stable_hash(unsorted) == stable_hash(sorted_)
    assert stable_hash(csr) != stable_hash(sp.csr_matrix(dense.astype(np.float64)))
    assert stable_hash(csr) != stable_hash(sp.csr_matrix(dense, shape=(3, 3)).T)
    bigger = sp.csr_matrix((csr.data, csr.indices, csr.indptr.tolist() + [3]), shape=(4, 3))
    assert stable_hash(csr) != stable_hash(bigger)


def test_dicts_hash_independently_of_key_order():
    a = {"graph": {"alpha": 0.5, "kc": 10}, "model": "qwen", "layers": [1, 2]}
    b = {"model": "qwen", "layers": [1, 2], "graph": {"kc": 10, "alpha": 0.5}}
    assert stable_hash(a) == stable_hash(b)
    assert stable_hash(a) != stable_hash({**a, "graph": {"alpha": 0.5, "kc": 11}})
    assert stable_hash(a) != stable_hash({**a, "layers": [2, 1]})
    assert stable_hash(a) != stable_hash({**a, "extra": None})


def test_scalars_are_typed_and_unambiguous():
    keys = [stable_hash(v) for v in (1, 1.0, "1", True, None, b"1", [1], ["1"])]
    assert len(set(keys)) == len(keys)
    assert stable_hash("ab", "c") != stable_hash("a", "bc")
    assert stable_hash(["a", "b"], "c") != stable_hash(["a"], "b", "c")


def test_unknown_types_are_refused():
    with pytest.raises(TypeError, match="object"):
        stable_hash(object())


# ------------------------------------------------------------------ atomic writes


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "emb.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npy" and tmp != target
        np.save(tmp, np.arange(3))
        assert not target.exists()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["emb.npy"]


def test_atomic_path_leaves_no_file_on_exception(tmp_path):
    target = tmp_path / "graph.pt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half written")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_save_npy_round_trips(tmp_path):
    arr = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    atomic_save_npy(tmp_path / "x.npy", arr)
    back = np.load(tmp_path / "x.npy")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)


# ------------------------------------------------------------------ build_once


def _text_io():
    return {
        "save": lambda v, p: p.write_text(v, encoding="utf-8"),
        "load": lambda p: p.read_text(encoding="utf-8"),
    }


def test_build_once_builds_then_reuses_and_writes_meta(tmp_path):
    target = tmp_path / "cache" / "thing.txt"
    calls = []

    def build():
        calls.append(1)
        return "value"

    meta = {"params": {"k": 3}, "inputs": ["a", "b"]}
    assert build_once(target, build, meta=meta, **_text_io()) == ("value", True)
    assert build_once(target, build, meta=meta, **_text_io()) == ("value", False)
    assert len(calls) == 1
    assert target.read_text() == "value"
    # the meta records how it was made and the sha256 of the bytes published (checked on load)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert json.loads((target.parent / "thing.txt.meta.json").read_text()) == {**meta, "sha256": digest}


def test_build_once_failure_publishes_nothing(tmp_path):
    target = tmp_path / "thing.txt"

    def save(value, path):
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        build_once(target, lambda: "v", save=save, load=lambda p: p.read_text())
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".thing.txt.tmp")]
    # the next call builds for real
    assert build_once(target, lambda: "v", **_text_io()) == ("v", True)


def test_build_once_builds_once_under_two_racing_processes(tmp_path):
    # fork keeps the test fast (no re-import of torch); spawn where fork does not exist
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(2)
    target = tmp_path / "artefact.txt"
    counter = tmp_path / "builds.log"
    results = [tmp_path / f"result{i}.json" for i in range(2)]
    procs = [
        ctx.Process(target=_cache_workers.race_build_once,
                    args=(str(target), str(counter), str(res), barrier))
        for res in results
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text().splitlines() == ["built"]
    outcomes = [json.loads(r.read_text()) for r in results]
    assert [o["value"] for o in outcomes] == ["payload", "payload"]
    assert sorted(o["built"] for o in outcomes) == [False, True]
    assert target.read_text() == "payload"
    meta = json.loads((tmp_path / "artefact.txt.meta.json").read_text())
    assert meta == {"params": {"k": 5}, "input": "abc", "sha256": hashlib.sha256(b"payload").hexdigest()}


def test_zero_dim_array_differs_from_one_element_array():
    # np.ascontiguousarray turns shape () into (1,): the shape must still be part of the key
    assert stable_hash(np.array(5)) != stable_hash(np.array([5]))
    assert stable_hash(np.array(5.0)) != stable_hash(np.array([[5.0]]))
    assert stable_hash(torch.tensor(5)) != stable_hash(torch.tensor([5]))
    assert stable_hash(np.array(5)) == stable_hash(np.array(5))


def test_numpy_scalars_hash_like_the_python_numbers_they_hold():
    # parameters often arrive as numpy scalars (e.g. from np.linspace or a mean); np.int64 used to
    # raise TypeError and np.float64 was keyed on its repr, which numpy 2 changed ('np.float64(0.5)')
    assert stable_hash(np.int64(3)) == stable_hash(3)
    assert stable_hash(np.int32(3)) == stable_hash(3)
    assert stable_hash(np.float64(0.5)) == stable_hash(0.5)
    assert stable_hash(np.bool_(True)) == stable_hash(True)
    assert stable_hash({"k": np.int64(10), "alpha": np.float64(0.5)}) == stable_hash({"k": 10, "alpha": 0.5})
    assert stable_hash(np.float64(0.5)) != stable_hash(np.float64(0.25))
    assert stable_hash(np.int64(3)) != stable_hash(np.float64(3.0))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_usual_permissions(tmp_path, umask_022):
    # mkstemp creates 0600 files: every cache file and manifest was unreadable to other users
    # (shared data folders, a container writing for the host)
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    atomic_save_npy(tmp_path / "b.npy", np.arange(3))
    with atomic_path(tmp_path / "c.txt") as tmp:
        tmp.write_text("x")
    for name in ("a.json", "b.npy", "c.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_bfloat16_tensors_can_be_hashed():
    # torch dtypes without a numpy twin (bfloat16 is what MLLMs emit) raised
    # "Got unsupported ScalarType BFloat16"
    t = torch.linspace(0, 1, 6).reshape(2, 3).to(torch.bfloat16)
    assert stable_hash(t) == stable_hash(t.clone())
    assert stable_hash(t) != stable_hash(t.reshape(3, 2))
    assert stable_hash(t) != stable_hash(t.to(torch.float16))
    assert stable_hash(t) != stable_hash(t + 1)
    assert stable_hash(torch.tensor(1.0, dtype=torch.bfloat16)) != stable_hash(
        torch.tensor([1.0], dtype=torch.bfloat16)
    )


def test_stable_hash_leaves_a_caller_csr_untouched():
    import numpy as np
    import scipy.sparse as sp

    from mllmrec.cache import stable_hash

    unsorted = sp.csr_matrix((np.array([2.0, 1.0]), np.array([1, 0]), np.array([0, 2])), shape=(1, 2))
    before = unsorted.indices.copy(), unsorted.data.copy()
    key = stable_hash(unsorted)
    assert np.array_equal(unsorted.indices, before[0]) and np.array_equal(unsorted.data, before[1])
    assert key == stable_hash(sp.csr_matrix(np.array([[1.0, 2.0]])))
