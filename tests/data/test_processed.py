"""The processed dataset format: round trip, atomic replacement, manifest and items checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mllmrec.data import (
    DatasetError,
    DatasetLayout,
    is_processed,
    load_mmrec_dataset,
    load_processed_dataset,
    read_items,
    read_manifest,
    write_processed_dataset,
)
from mllmrec.data.processed import FORMAT_VERSION

from .conftest import TOY_ROWS


def _frames(n_items: int = 5, n_users: int = 3):
    inter = pd.DataFrame(TOY_ROWS, columns=["user_id", "item_id", "rating", "timestamp", "x_label"])
    items = pd.DataFrame({
        "item_id": np.arange(n_items)[::-1],  # written out of order on purpose
        "source_id": [f"B{i:03d}" for i in range(n_items)][::-1],
        "title": [f"title {i}" for i in range(n_items)][::-1],
        "brand": ["b"] * n_items,
        "categories": [["Baby", f"Cat{i}"] for i in range(n_items)][::-1],
        "description": ["d"] * n_items,
        "image_url": [None] * n_items,
        "image_path": [None] * n_items,
        "text": [f"text {i}" for i in range(n_items)][::-1],
    })
    users = pd.DataFrame({"user_id": np.arange(n_users), "source_id": [f"U{u}" for u in range(n_users)]})
    return inter, items, users


def _write(root, manifest=None, **overrides):
    inter, items, users = _frames()
    frames = {"interactions": inter, "items": items, "users": users, **overrides}
    return write_processed_dataset(root, manifest=manifest or {"name": "toy"}, **frames)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".processed"))


def test_round_trip_matches_the_mmrec_loader(tmp_path, toy_folder):
    layout = _write(tmp_path / "ds", manifest={"name": "toy", "split": {"rule": "mmrec", "seed": 1}})
    assert isinstance(layout, DatasetLayout) and is_processed(tmp_path / "ds")
    data = load_processed_dataset(tmp_path / "ds")
    ref = load_mmrec_dataset(toy_folder, "toy", item_features=None, user_features=None)
    assert data.name == "toy" and data.source == tmp_path / "ds"
    assert (data.n_users, data.n_items) == (ref.n_users, ref.n_items) == (3, 5)
    for split in ("train", "valid", "test"):
        assert (getattr(data, split) != getattr(ref, split)).nnz == 0, split
    np.testing.assert_array_equal(data.history_indptr, ref.history_indptr)
    np.testing.assert_array_equal(data.history_items, ref.history_items)

    manifest = data.extras["manifest"]
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["split"] == {"rule": "mmrec", "seed": 1}
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == (3, 5, 12)
    assert manifest["split_counts"] == {"train": 8, "valid": 2, "test": 2}
    assert read_manifest(tmp_path / "ds") == manifest


def test_round_trip_of_the_tables(tmp_path):
    inter, items, users = _frames()
    inter["extra"] = np.arange(len(inter))
    write_processed_dataset(tmp_path, inter, items, users, {"name": "toy"})
    layout = DatasetLayout(tmp_path)
    back = pd.read_parquet(layout.interactions)
    assert list(back.columns[:5]) == ["user_id", "item_id", "rating", "timestamp", "x_label"]
    assert back["x_label"].dtype == np.int8 and back["rating"].dtype == np.float32
    assert back["extra"].tolist() == list(range(len(inter)))
    np.testing.assert_array_equal(back[["user_id", "item_id", "timestamp"]].to_numpy(),
                                  inter[["user_id", "item_id", "timestamp"]].to_numpy())
    got_items = read_items(tmp_path, n_items=5)
    assert got_items["item_id"].tolist() == [0, 1, 2, 3, 4]  # sorted on write
    assert got_items["title"].tolist() == [f"title {i}" for i in range(5)]
    assert list(got_items.loc[3, "categories"]) == ["Baby", "Cat3"]
    assert pd.read_parquet(layout.users)["source_id"].tolist() == ["U0", "U1", "U2"]


def test_name_argument_overrides_the_manifest(tmp_path):
    _write(tmp_path)
    assert load_processed_dataset(tmp_path, name="other").name == "other"


def test_crash_mid_write_keeps_the_previous_dataset(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _write(root, manifest={"name": "v1"})
    before = _snapshot(root / "processed")

    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError, match="simulated"):
        _write(root, manifest={"name": "v2"})
    assert calls["n"] == 2
    assert _snapshot(root / "processed") == before
    assert read_manifest(root)["name"] == "v1"
    assert _leftovers(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["processed"]


def test_crash_on_first_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("simulated")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        _write(tmp_path / "ds")
    assert not is_processed(tmp_path / "ds")
    assert list((tmp_path / "ds").iterdir()) == []


def test_rewrite_replaces_the_folder_as_a_whole(tmp_path):
    root = tmp_path / "ds"
    _write(root, manifest={"name": "v1"})
    (root / "processed" / "stale.txt").write_text("from v1")
    _write(root, manifest={"name": "v2"})
    assert read_manifest(root)["name"] == "v2"
    assert not (root / "processed" / "stale.txt").exists()
    assert _leftovers(root) == []


def test_write_rejects_frames_without_the_documented_columns(tmp_path):
    inter, items, users = _frames()
    with pytest.raises(ValueError, match="x_label"):
        write_processed_dataset(tmp_path, inter.drop(columns="x_label"), items, users, {})
    with pytest.raises(ValueError, match="image_path"):
        write_processed_dataset(tmp_path, inter, items.drop(columns="image_path"), users, {})
    assert not is_processed(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("format_version", FORMAT_VERSION + 1), ("format", "other")])
def test_wrong_manifest_format_is_a_clear_error(tmp_path, key, value):
    _write(tmp_path)
    path = DatasetLayout(tmp_path).manifest
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    for call in (read_manifest, load_processed_dataset):
        with pytest.raises(DatasetError) as err:
            call(tmp_path)
        msg = str(err.value)
        assert "manifest.json" in msg and "prepare.py" in msg and str(value) in msg


def test_missing_manifest(tmp_path):
    (tmp_path / "processed").mkdir()
    assert not is_processed(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_processed_dataset(tmp_path)
    msg = str(err.value)
    assert "manifest.json" in msg and "does not exist" in msg and "prepare.py" in msg


def test_processed_interactions_are_validated(tmp_path):
    inter, items, users = _frames()
    inter.loc[4, "x_label"] = 5
    write_processed_dataset(tmp_path, inter, items, users, {"name": "toy"})
    with pytest.raises(DatasetError) as err:
        load_processed_dataset(tmp_path)
    msg = str(err.value)
    assert "interactions.parquet" in msg and "'x_label'" in msg and "[5]" in msg


def test_read_items_checks_contiguous_ids(tmp_path):
    inter, items, users = _frames()
    gap = items[items["item_id"] != 2].copy()
    write_processed_dataset(tmp_path, inter, gap, users, {"name": "toy"})
    with pytest.raises(DatasetError) as err:
        read_items(tmp_path)
    msg = str(err.value)
    assert "items.parquet" in msg and "0..3" in msg and "4 rows" in msg


def test_read_items_checks_the_item_count(tmp_path):
    _write(tmp_path)
    assert len(read_items(tmp_path)) == 5
    with pytest.raises(DatasetError) as err:
        read_items(tmp_path, n_items=7)
    msg = str(err.value)
    assert "items.parquet" in msg and "0..6" in msg and "5 rows" in msg


def test_read_items_rejects_duplicate_ids(tmp_path):
    inter, items, users = _frames()
    dup = items.copy()
    dup.loc[dup["item_id"] == 4, "item_id"] = 3
    write_processed_dataset(tmp_path, inter, dup, users, {"name": "toy"})
    with pytest.raises(DatasetError, match="items.parquet"):
        read_items(tmp_path, n_items=5)


def test_reasoning_folders_keep_leaky_profiles_apart(tmp_path):
    layout = DatasetLayout(tmp_path)
    assert layout.reasoning("qwen") == tmp_path / "reasoning" / "qwen"
    assert layout.reasoning("qwen", history="all") != layout.reasoning("qwen")
    with pytest.raises(ValueError, match="history"):
        layout.reasoning("qwen", history="valid")


def test_missing_processed_folder_names_the_file_it_needs(tmp_path):
    # with no processed/ folder at all the message named only the folder
    with pytest.raises(DatasetError) as err:
        read_items(tmp_path)
    msg = str(err.value)
    assert "items.parquet" in msg and "processed" in msg and "prepare.py" in msg
    with pytest.raises(DatasetError) as err:
        load_processed_dataset(tmp_path / "nope")
    msg = str(err.value)
    assert "manifest.json" in msg and str(tmp_path / "nope") in msg and "prepare.py" in msg


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unreadable_manifest_is_a_clear_error(tmp_path, content):
    # a hand-edited/truncated manifest raised a bare JSONDecodeError (no path) or AttributeError
    _write(tmp_path)
    DatasetLayout(tmp_path).manifest.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_processed_dataset(tmp_path)
    msg = str(err.value)
    assert "manifest.json" in msg and "prepare.py" in msg


def test_failed_final_rename_puts_the_previous_dataset_back(tmp_path, monkeypatch):
    # the old processed/ is moved aside before the new one is renamed in; when that last rename
    # failed (or was interrupted) the old one stayed in a hidden .processed.old.* folder and
    # processed/ was gone
    import os

    root = tmp_path / "ds"
    _write(root, manifest={"name": "v1"})
    before = _snapshot(root / "processed")
    real = os.replace

    def failing(src, dst, *args, **kwargs):
        new_one_in = os.path.basename(src).startswith(".processed.tmp")
        if new_one_in and os.fspath(dst) == os.fspath(root / "processed"):
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        _write(root, manifest={"name": "v2"})
    monkeypatch.undo()
    assert _snapshot(root / "processed") == before
    assert read_manifest(root)["name"] == "v1"
    assert _leftovers(root) == []


def test_processed_folder_gets_the_usual_permissions(tmp_path):
    # mkdtemp creates 0700 folders: processed/ (renamed from one) was unreadable to other users
    import os
    import stat

    old = os.umask(0o022)
    try:
        _write(tmp_path)
    finally:
        os.umask(old)
    layout = DatasetLayout(tmp_path)
    assert stat.S_IMODE(layout.processed.stat().st_mode) == 0o755
    assert stat.S_IMODE(layout.manifest.stat().st_mode) == 0o644
    assert stat.S_IMODE(layout.items.stat().st_mode) == 0o644
