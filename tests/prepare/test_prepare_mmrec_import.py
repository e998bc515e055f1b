"""Importing MMRec's released folders: validated, written in our format, MMRec files untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mllmrec.data import load_mmrec_dataset, load_processed_dataset, read_items
from mllmrec.data.errors import DatasetError
from mllmrec.data.processed import DatasetLayout
from mllmrec.prepare.mmrec_import import import_mmrec
from mllmrec.prepare.pipeline import PrepareOptions

from prepare_fixtures import write_meta_2014

OPTS = PrepareOptions(progress=False, images=False)


def _mmrec_folder(root: Path, n_users: int = 12, n_items: int = 8, maps: bool = True) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, size=6, replace=False)):
            rows.append((u, int(i), float(rng.integers(1, 6)), 1_300_000_000 + j, [0, 0, 0, 0, 1, 2][j]))
    root.mkdir(parents=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        root / "toy.inter", sep="\t", index=False)
    np.save(root / "text_feat.npy", rng.random((n_items, 4)).astype(np.float32))
    if maps:
        pd.DataFrame({"asin": [f"B{i:09d}" for i in range(n_items)], "itemID": range(n_items)}).to_csv(
            root / "i_id_mapping.csv", sep="\t", index=False)
        pd.DataFrame({"user_id": [f"A{u:013d}" for u in range(n_users)], "userID": range(n_users)}).to_csv(
            root / "u_id_mapping.csv", sep="\t", index=False)
    return root


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


def test_import_writes_processed_and_leaves_mmrec_files(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec")
    before = _digests(src)
    out = import_mmrec(src, "toy", tmp_path / "data" / "toy", OPTS)
    assert out.built
    assert _digests(src) == before                                     # untouched
    load_mmrec_dataset(src, "toy", item_features="text_feat.npy", user_features=None)  # still readable
    data = load_processed_dataset(tmp_path / "data" / "toy")
    assert (data.n_users, data.n_items) == (12, 8)
    inter = pd.read_parquet(DatasetLayout(tmp_path / "data" / "toy").interactions)
    raw = pd.read_csv(src / "toy.inter", sep="\t")
    assert inter.x_label.tolist() == raw.x_label.tolist() and inter.rating.tolist() == raw.rating.tolist()
    items = read_items(tmp_path / "data" / "toy", 8)
    assert items.source_id.tolist() == [f"B{i:09d}" for i in range(8)]
    users = pd.read_parquet(DatasetLayout(tmp_path / "data" / "toy").users)
    assert users.source_id[3] == "A0000000000003"
    assert out.manifest["source"]["files"]["toy.inter"]["sha256"] == before["toy.inter"]
    again = import_mmrec(src, "toy", tmp_path / "data" / "toy", OPTS)
    assert not again.built


def test_import_without_maps_and_into_the_same_folder(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec", maps=False)
    before = _digests(src)
    import_mmrec(src, "toy", src, OPTS)
    after = _digests(src)
    assert {k: after[k] for k in before} == before and (src / "processed" / "manifest.json").is_file()
    assert read_items(src, 8).source_id.isna().all()


def test_import_fills_text_from_a_meta_file(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec")
    meta = write_meta_2014(tmp_path / "meta_Toy.json.gz", [
        {"asin": "B000000002", "title": "Soft &amp; warm", "categories": [["Baby", "Blankets"]]}])
    import_mmrec(src, "toy", tmp_path / "out", OPTS, meta_file=meta)
    items = read_items(tmp_path / "out", 8)
    assert items.text[2] == "Soft & warm Baby Blankets" and items.text[0] == ""


def test_bad_mapping_names_file_and_line(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec")
    (src / "i_id_mapping.csv").write_text("asin\titemID\nB1\t0\nB2\tseven\n")
    with pytest.raises(DatasetError, match=r"i_id_mapping.csv: line 3: itemID 'seven'"):
        import_mmrec(src, "toy", tmp_path / "out", OPTS)
    assert not (tmp_path / "out" / "processed").exists()


def test_missing_inter_file_is_a_clear_error(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec")
    with pytest.raises(DatasetError, match="baby.inter does not exist.*dataset.name"):
        import_mmrec(src, "baby", tmp_path / "out", OPTS)


def test_feature_files_are_checked(tmp_path: Path) -> None:
    src = _mmrec_folder(tmp_path / "mmrec")
    import_mmrec(src, "toy", tmp_path / "ok", OPTS, feature_files={"item": "text_feat.npy", "user": "absent.npy"})
    np.save(src / "user_feat.npy", np.zeros((5, 4), np.float32))  # 12 users in the .inter
    with pytest.raises(DatasetError, match="user_feat.npy has 5 rows but the dataset has 12 users"):
        import_mmrec(src, "toy", tmp_path / "bad", OPTS, feature_files={"user": "user_feat.npy"})
