"""The embedded demo dataset: deterministic, 5+ interactions per user, real PNGs, attribute texts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mllmrec.data import DatasetLayout, load_processed_dataset, mmrec_item_text, read_items, read_manifest
from mllmrec.data.demo import (
    CATEGORIES,
    COLOURS,
    MATERIALS,
    STYLES,
    TAIL_KINDS,
    ensure_demo_dataset,
    make_demo_dataset,
)

SMALL = {"n_users": 40, "n_items": 48}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, seed=3, **SMALL)
    return root


def _tables(root):
    layout = DatasetLayout(root)
    return [pd.read_parquet(p) for p in (layout.interactions, layout.items, layout.users)]


def test_same_seed_gives_identical_tables(demo_root, tmp_path):
    make_demo_dataset(tmp_path, seed=3, **SMALL)
    for mine, theirs in zip(_tables(tmp_path), _tables(demo_root)):
        pd.testing.assert_frame_equal(mine, theirs)
    assert read_manifest(tmp_path) == read_manifest(demo_root)
    for i in (0, SMALL["n_items"] - 1):
        assert (tmp_path / "images" / f"{i}.png").read_bytes() == (demo_root / "images" / f"{i}.png").read_bytes()


def test_different_seed_gives_different_data(demo_root, tmp_path):
    make_demo_dataset(tmp_path, seed=4, **SMALL)
    inter_a, items_a, _ = _tables(demo_root)
    inter_b, items_b, _ = _tables(tmp_path)
    assert not inter_a.equals(inter_b)
    assert items_a["title"].tolist() != items_b["title"].tolist()


def test_every_user_has_at_least_five_interactions_and_all_splits(demo_root):
    inter, _, users = _tables(demo_root)
    counts = inter.groupby("user_id").size()
    assert len(counts) == SMALL["n_users"] == len(users)
    assert counts.min() >= 5
    assert not inter.duplicated(["user_id", "item_id"]).any()
    per_user = inter.groupby("user_id")["x_label"].agg(lambda x: sorted(set(x)))
    assert all(labels == [0, 1, 2] for labels in per_user)
    data = load_processed_dataset(demo_root)
    assert data.name == "demo" and data.n_users == SMALL["n_users"]
    assert data.n_items <= SMALL["n_items"]
    assert np.diff(data.history_indptr).min() >= 3


def test_split_follows_the_recorded_seed(demo_root):
    from mllmrec.data import mmrec_split

    inter, _, _ = _tables(demo_root)
    manifest = read_manifest(demo_root)
    assert manifest["split"]["rule"] == "mmrec"
    again = mmrec_split(inter["user_id"].to_numpy(), inter["timestamp"].to_numpy(),
                        seed=manifest["split"]["seed"])
    np.testing.assert_array_equal(inter["x_label"].to_numpy(), again)


def _attrs(title: str) -> dict[str, str]:
    words = title.split()
    found = {
        "colour": [c for c in COLOURS if c in words],
        "material": [m for m in MATERIALS if m in words],
        # a main category, or a long-tail kind (some are two words): the title ends with it
        "category": [c for c in (*CATEGORIES, *TAIL_KINDS) if title.endswith(" " + c)],
    }
    assert all(len(v) == 1 for v in found.values()), (title, found)
    return {k: v[0] for k, v in found.items()}


def test_texts_mention_the_attributes(demo_root):
    items = read_items(demo_root, n_items=SMALL["n_items"])
    for row in items.itertuples():
        attrs = _attrs(row.title)
        for value in attrs.values():
            assert value in row.text
        kind = attrs["category"]
        if kind in TAIL_KINDS:  # a long-tail listing has its kind's own words; attributes optional
            assert TAIL_KINDS[kind] in row.description, (row.title, row.description)
        else:  # a main-category listing spells out its attributes and style
            for value in attrs.values():
                assert value.lower() in row.description.lower(), (row.title, row.description)
            assert sum(s in row.description for s in STYLES) >= 1
        assert row.brand in row.title
        assert list(row.categories)[-1].lower().startswith(attrs["category"])
        assert row.text == mmrec_item_text(row.title, row.brand, list(row.categories), row.description)


def test_images_decode_as_png_in_the_items_colour(demo_root):
    items = read_items(demo_root)
    for row in items.itertuples():
        path = demo_root / row.image_path
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.load()
            assert img.size == (64, 64)
            colours = {c for _, c in img.convert("RGB").getcolors(64 * 64)}
        assert COLOURS[_attrs(row.title)["colour"]] in colours, row.title


def test_ensure_reuses_a_matching_dataset_and_rebuilds_otherwise(tmp_path):
    ensure_demo_dataset(tmp_path, seed=1, **SMALL)
    stamp = DatasetLayout(tmp_path).manifest.stat().st_mtime_ns
    ensure_demo_dataset(tmp_path, seed=1, **SMALL)
    assert DatasetLayout(tmp_path).manifest.stat().st_mtime_ns == stamp
    ensure_demo_dataset(tmp_path, seed=2, **SMALL)
    assert read_manifest(tmp_path)["generator"]["seed"] == 2


def test_small_catalogues_work(tmp_path):
    # a user's interaction count is drawn up to 40 and sampled without replacement: with fewer than
    # 40 items every seed crashed ("Cannot take a larger sample than population")
    make_demo_dataset(tmp_path, n_users=30, n_items=12, seed=0)
    inter, items, _ = _tables(tmp_path)
    assert len(items) == 12
    counts = inter.groupby("user_id").size()
    assert len(counts) == 30 and counts.min() >= 5 and counts.max() <= 12
    with pytest.raises(ValueError, match="n_items"):
        make_demo_dataset(tmp_path / "tiny", n_users=5, n_items=4)


def test_ensure_rebuilds_when_the_split_seed_changes(tmp_path):
    # the reuse check compared only the generator settings, so a new split_seed silently kept the
    # old split
    ensure_demo_dataset(tmp_path, **SMALL)
    assert read_manifest(tmp_path)["split"]["seed"] == 999
    ensure_demo_dataset(tmp_path, split_seed=5, **SMALL)
    assert read_manifest(tmp_path)["split"]["seed"] == 5
    inter = pd.read_parquet(DatasetLayout(tmp_path).interactions)
    from mllmrec.data import mmrec_split

    expected = mmrec_split(inter["user_id"].to_numpy(), inter["timestamp"].to_numpy(), seed=5)
    np.testing.assert_array_equal(inter["x_label"].to_numpy(), expected)
