"""``dataset=custom``: your own interactions CSV (+ items table) through prepare.py and train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mllmrec.data import DatasetError, DatasetLayout, read_items
from mllmrec.data.demo import export_demo_csv
from mllmrec.prepare.cli import run_prepare
from mllmrec.train.task import build_datamodule, popularity_metrics, train

from train_helpers import compose_config

REPO = Path(__file__).resolve().parents[2]
SCALE = {"n_users": 160, "n_items": 90}  # the small demo of the training tests


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    """The demo exported as a user's own files: interactions.csv (raw string ids, ISO dates), items.csv."""
    return export_demo_csv(tmp_path_factory.mktemp("shop"), **SCALE)


def _prepare_cfg(tmp_path: Path, *overrides: str):
    return compose_config("prepare", [f"paths.data_dir={tmp_path / 'data'}", "dataset=custom",
                                      "prepare.progress=false", *overrides], tmp_path / "logs")


def _reference_kcore(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """Plain iterative k-core on (user, item) rows: drop users and items with < k rows until stable."""
    while True:
        users, items = pairs["user_id"].value_counts(), pairs["item_id"].value_counts()
        keep = pairs["user_id"].map(users).ge(k) & pairs["item_id"].map(items).ge(k)
        if keep.all():
            return pairs
        pairs = pairs[keep]


def test_custom_csv_runs_prepare_then_train_with_raw_ids_kept(shop, tmp_path, train_cfg):
    interactions_csv, items_csv = shop
    cmd = [sys.executable, "prepare.py", "dataset=custom", f"dataset.interactions={interactions_csv}",
           f"dataset.items={items_csv}", "dataset.item_columns.image=image", "dataset.name=shop",
           f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", "prepare.progress=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLLMREC_DATA_DIR", "PROJECT_ROOT")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "DIFFER" not in out  # the paper's-count check is for the paper's datasets only

    root = tmp_path / "data" / "shop"
    layout = DatasetLayout(root)
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["source"]["dataset"] == "custom" and manifest["expected_counts"] is None
    assert manifest["split"] == {"rule": "mmrec", "mode": "random", "seed": 999}
    # raw ids are the id maps: every processed row maps back to a row of the CSV, and the k-core kept
    # exactly what a plain k-core of the CSV keeps
    raw = pd.read_csv(interactions_csv, dtype={"user_id": str, "item_id": str})
    expected = _reference_kcore(raw[["user_id", "item_id"]], 5)
    inter = pd.read_parquet(layout.interactions)
    users = pd.read_parquet(layout.users).set_index("user_id")["source_id"]
    items = read_items(root)
    mapped = set(zip(inter["user_id"].map(users), inter["item_id"].map(items.set_index("item_id")["source_id"])))
    assert mapped == set(zip(expected["user_id"], expected["item_id"]))
    # the items table: title and description from the CSV, images copied in
    table = pd.read_csv(items_csv, dtype={"item_id": str}).set_index("item_id")
    for row in items.itertuples():
        assert row.title == table.loc[row.source_id, "title"]
        assert row.description == table.loc[row.source_id, "description"]
        assert row.text == f"{row.title} {row.description}"
        assert (root / row.image_path).read_bytes() == (items_csv.parent / table.loc[row.source_id, "image"]).read_bytes()

    # reason.py reads it like any prepared dataset (the fake backend: the plumbing, no model)
    reason = subprocess.run([sys.executable, "reason.py", "dataset=custom", "dataset.name=shop", "mllm=qwen25vl",
                             "reason.backend=fake", f"paths.data_dir={tmp_path / 'data'}",
                             f"paths.log_dir={tmp_path / 'logs'}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert reason.returncode == 0, reason.stdout[-2000:] + reason.stderr[-2000:]
    described = pd.read_parquet(layout.reasoning("qwen25vl-fake") / "image_descriptions.parquet")
    profiles = pd.read_parquet(layout.reasoning("qwen25vl-fake") / "user_profiles.parquet")
    assert described["item_id"].tolist() == list(range(len(items)))
    assert profiles["user_id"].tolist() == list(range(len(users)))

    cfg = train_cfg("dataset=custom", "dataset.name=shop", f"paths.data_dir={tmp_path / 'data'}",
                    "trainer.max_epochs=30", "model.optimizer.lr=0.005")
    summary, objects = train(cfg)
    popularity = popularity_metrics(objects["datamodule"], "test")
    assert summary["test"]["recall@20"] > 1.3 * popularity["recall@20"], (summary["test"], popularity)


def test_leave_one_out_with_iso_dates_tests_each_users_latest_item(shop, tmp_path):
    interactions_csv, _ = shop
    run_prepare(_prepare_cfg(tmp_path, f"dataset.interactions={interactions_csv}",
                             "prepare.split_mode=leave_one_out", "prepare.k_core=1"))
    layout = DatasetLayout(tmp_path / "data" / "custom")
    inter = pd.read_parquet(layout.interactions)
    users = pd.read_parquet(layout.users).set_index("user_id")["source_id"]
    items = read_items(layout.root).set_index("item_id")["source_id"]
    test = inter[inter["x_label"] == 2]
    raw = pd.read_csv(interactions_csv, dtype={"user_id": str, "item_id": str})
    raw["t"] = pd.to_datetime(raw["timestamp"])
    latest = raw.sort_values("t", kind="stable").groupby("user_id").tail(1)  # one latest row per user
    assert dict(zip(test["user_id"].map(users), test["item_id"].map(items))) == dict(
        zip(latest["user_id"], latest["item_id"]))
    assert (inter.groupby("user_id")["x_label"].apply(lambda x: (x == 1).sum()) == 1).all()
    assert read_items(layout.root)["text"].eq("").all()  # no items table: no text, said at prepare time


def test_a_missing_column_is_named_with_the_key_that_fixes_it(shop, tmp_path):
    interactions_csv, items_csv = shop
    with pytest.raises(DatasetError, match=r"dataset.columns.user='customer' is not a column of .*interactions.csv"):
        run_prepare(_prepare_cfg(tmp_path, f"dataset.interactions={interactions_csv}", "dataset.columns.user=customer"))
    with pytest.raises(DatasetError, match=r"dataset.item_columns.text\[1\]='blurb' is not a column of .*items.csv"):
        run_prepare(_prepare_cfg(tmp_path, f"dataset.interactions={interactions_csv}", f"dataset.items={items_csv}",
                                 "dataset.item_columns.text=[description,blurb]"))
    with pytest.raises(DatasetError, match="dataset.interactions is not set"):
        run_prepare(_prepare_cfg(tmp_path))
    with pytest.raises(DatasetError, match=r"dataset.interactions=.*nope.csv: no such file"):
        run_prepare(_prepare_cfg(tmp_path, f"dataset.interactions={tmp_path / 'nope.csv'}"))


@pytest.mark.parametrize("case", ["no_items_table", "empty_columns"])
def test_items_without_text_refuse_content_models_naming_the_column(shop, tmp_path, train_cfg, case, caplog):
    interactions_csv, items_csv = shop
    extra = [] if case == "no_items_table" else [
        f"dataset.items={items_csv}", "dataset.item_columns.title=null", "dataset.item_columns.text=[empty]"]
    if case == "empty_columns":
        blank = pd.read_csv(items_csv).assign(empty="")
        items_csv = items_csv.parent / "items_blank.csv"
        blank.to_csv(items_csv, index=False)
        extra[0] = f"dataset.items={items_csv}"
    run_prepare(_prepare_cfg(tmp_path, f"dataset.interactions={interactions_csv}", *extra))
    named = "dataset.items is not set" if case == "no_items_table" else "column 'empty'"
    assert named in caplog.text  # said at prepare time

    dm = build_datamodule(train_cfg("dataset=custom", f"paths.data_dir={tmp_path / 'data'}"))
    dm.setup("fit")
    cause = "without an items table" if case == "no_items_table" else r"columns \['empty'\] are empty"
    with pytest.raises(DatasetError, match=cause):
        _ = dm.item_features  # what MLLMRec and VBPR read
    assert dm.data.train.nnz > 0  # ID-only models still have their data


def test_training_before_prepare_names_the_custom_command(train_cfg, tmp_path):
    cfg = train_cfg("dataset=custom", "dataset.name=my_shop", f"paths.data_dir={tmp_path / 'data'}")
    with pytest.raises(DatasetError, match=r"python prepare.py dataset=custom dataset.name=my_shop dataset.interactions="):
        build_datamodule(cfg).check_inputs()
