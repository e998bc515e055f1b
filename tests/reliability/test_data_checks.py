"""Start-up data checks (issue 18, points 4, 5, 9): split overlap, degenerate features, empty texts and
stray huge ids give a warning with counts or an error naming the file, before any heavy work."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mllmrec.data.checks import check_feature_rows, check_split_overlap, check_texts, feature_row_report
from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import interaction_data_from_frame


def _rows(n_users: int = 30, n_items: int = 20, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """(user, item, timestamp, x_label): 7 distinct items per user, 5 train, 1 valid, 1 test."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, size=7, replace=False)):
            rows.append((u, int(i), 1_300_000_000 + j, [0, 0, 0, 0, 0, 1, 2][j]))
    return rows


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "timestamp", "x_label"])


def _mmrec_folder(root: Path, rows, n_items: int = 20, features: np.ndarray | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["userID", "itemID", "timestamp", "x_label"])
    frame.insert(2, "rating", 5.0)
    frame.to_csv(root / "toy.inter", sep="\t", index=False)
    if features is None:
        features = np.random.default_rng(1).random((n_items, 8)).astype(np.float32)
    np.save(root / "feat.npy", features)
    return root


def _datamodule(root: Path):
    from mllmrec.encoding import EncoderSpec
    from mllmrec.graph import GraphSpec
    from mllmrec.train.datamodule import MLLMRecDataModule

    dataset = {"name": "toy", "format": "mmrec", "root": str(root), "item_features": "feat.npy",
               "user_features": None}
    return MLLMRecDataModule(dataset, "none", EncoderSpec(), GraphSpec(ks=5, alpha=0.0, kc=5, layers=1),
                             batch_size=64)


# --------------------------------------------------------------------------- train/test overlap
def test_pairs_in_train_and_test_are_counted_in_one_warning(caplog):
    rows = _rows()
    # 4 users get a test pair that is also one of their training pairs (a leak a bad split makes)
    leaked = []
    for u in (0, 3, 7, 11):
        train_item = next(i for uu, i, _, x in rows if uu == u and x == 0)
        leaked.append((u, train_item, 1_400_000_000, 2))
    data = interaction_data_from_frame(_frame(rows + leaked), "toy", origin="toy.inter")
    with caplog.at_level(logging.WARNING):
        counts = check_split_overlap(data, "toy.inter")
    # independent reference: the set intersection of the pair lists
    train_pairs = {(u, i) for u, i, _, x in rows + leaked if x == 0}
    test_pairs = {(u, i) for u, i, _, x in rows + leaked if x == 2}
    assert counts == {"valid": 0, "test": len(train_pairs & test_pairs)} == {"valid": 0, "test": 4}
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "toy.inter: 4 of 34 test pairs" in message and "also in train" in message


def test_a_test_split_hidden_entirely_by_train_is_an_error_before_the_graph(tmp_path):
    rows = _rows()
    train_of = {}
    for u, i, _, x in rows:
        if x == 0:
            train_of.setdefault(u, i)
    # every test row repeats a training pair: nothing in test can ever be ranked
    rows = [(u, train_of[u], t, 2) if x == 2 else (u, i, t, x) for u, i, t, x in rows]
    root = _mmrec_folder(tmp_path / "toy", rows)
    dm = _datamodule(root)
    with pytest.raises(DatasetError, match=r"toy\.inter: every one of the 30 test pairs.*unreachable"):
        dm.setup("fit")
    assert not dm.has_item_graph  # raised before the graph was built


# --------------------------------------------------------------------------- degenerate features
def _reference_report(x: np.ndarray) -> tuple[int, int, int]:
    """Zero / constant / duplicated rows by plain Python loops (the independent reference)."""
    zero = constant = duplicated = 0
    seen = []
    for row in x.tolist():
        if all(v == 0 for v in row):
            zero += 1
        elif all(v == row[0] for v in row):
            constant += 1
        elif row in seen:
            duplicated += 1
        seen.append(row)
    return zero, constant, duplicated


def test_feature_row_counts_match_a_plain_reference():
    rng = np.random.default_rng(0)
    x = rng.random((40, 6)).astype(np.float32)
    x[[1, 5, 9]] = 0.0
    x[[2, 30]] = 0.25
    x[[12, 13, 14]] = x[11]
    x[20] = x[3]
    report = feature_row_report(x)
    assert (report.zero, report.constant, report.duplicated) == _reference_report(x) == (3, 2, 4)
    assert not report.all_degenerate


def test_partly_degenerate_features_warn_with_counts(caplog):
    x = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    x[0] = 0.0
    x[4] = x[5]
    with caplog.at_level(logging.WARNING):
        check_feature_rows(x, "item", "feat.npy")
    assert "feat.npy: 2 of 10 item feature rows are degenerate: 1 all zero, 0 constant, 1 duplicates" in caplog.text


@pytest.mark.parametrize("fill", ["zeros", "constant", "one_row"])
def test_features_without_information_are_an_error_at_setup(tmp_path, fill):
    x = {"zeros": np.zeros((20, 8)), "constant": np.full((20, 8), 0.3),
         "one_row": np.tile(np.arange(8.0), (20, 1))}[fill].astype(np.float32)
    dm = _datamodule(_mmrec_folder(tmp_path / "toy", _rows(), features=x))
    with pytest.raises(DatasetError, match=r"feat\.npy: the item features carry no information"):
        dm.setup("fit")


def test_empty_item_texts_warn_and_all_empty_is_an_error(caplog):
    with caplog.at_level(logging.WARNING):
        assert check_texts(["a red shirt", "", "  ", "boots"], "item", "items.parquet") == 2
    assert "items.parquet: 2 of 4 item texts are empty" in caplog.text
    with pytest.raises(DatasetError, match=r"items\.parquet: all 3 item texts are empty"):
        check_texts(["", " ", "\n"], "item", "items.parquet")


def test_the_demo_datamodule_reports_blank_item_texts(tmp_path, caplog, monkeypatch):
    """The processed path checks the texts before encoding them."""
    import mllmrec.train.datamodule as datamodule
    from mllmrec.encoding import EncoderSpec
    from mllmrec.graph import GraphSpec
    from mllmrec.train.datamodule import MLLMRecDataModule

    def no_encoding(texts, spec, cache_dir, what):  # the check must come first
        raise AssertionError("encoded before the text check")

    monkeypatch.setattr(datamodule, "cached_encode", no_encoding)
    monkeypatch.setattr(MLLMRecDataModule, "item_and_user_texts", lambda self, data: ([""] * data.n_items,
                                                                                     ["x"] * data.n_users))
    dataset = {"name": "demo", "format": "processed", "root": str(tmp_path / "demo"), "generate": "demo",
               "n_users": 30, "n_items": 12}
    dm = MLLMRecDataModule(dataset, "none", EncoderSpec(), GraphSpec(ks=5, alpha=0.0, kc=5, layers=1))
    dm.setup("fit")
    with pytest.raises(DatasetError, match="all 12 item texts are empty"):
        dm.item_features  # the first input that reads the texts


# --------------------------------------------------------------------------- id ranges
def test_one_huge_id_is_an_error_naming_the_file_before_any_big_allocation(tmp_path):
    rows = _rows() + [(10_000_000, 3, 1_300_000_000, 0)]
    root = _mmrec_folder(tmp_path / "toy", rows)
    dm = _datamodule(root)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as err:
            dm.setup("fit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert str(root / "toy.inter") in message and "user ids range up to 10,000,000" in message
    assert "31 distinct user ids" in message
    assert peak < 50 * 2**20  # no table sized by the stray id (10^7 rows of int64 alone is 80 MB)


def test_a_few_unused_ids_are_fine():
    rows = [r for r in _rows() if r[0] not in (3, 4)]  # two users dropped (e.g. by a k-core filter)
    data = interaction_data_from_frame(_frame(rows), "toy", origin="toy.inter")
    assert data.n_users == 30


# --------------------------------------------------------------------------- prepare.py's import
def test_the_mmrec_import_reports_overlap_and_degenerate_features(tmp_path, caplog):
    from mllmrec.prepare.mmrec_import import import_mmrec
    from mllmrec.prepare.pipeline import PrepareOptions

    rows = _rows()
    train_item = next(i for u, i, _, x in rows if u == 0 and x == 0)
    rows.append((0, train_item, 1_400_000_000, 2))
    x = np.random.default_rng(1).random((20, 8)).astype(np.float32)
    x[[2, 3]] = 0.0
    src = _mmrec_folder(tmp_path / "mmrec", rows, features=x)
    opts = PrepareOptions(progress=False, images=False)
    with caplog.at_level(logging.INFO):
        import_mmrec(src, "toy", tmp_path / "out", opts, feature_files={"item": "feat.npy"})
    assert "1 of 31 test pairs (user, item) are also in train" in caplog.text
    assert "2 of 20 item feature rows are degenerate: 2 all zero" in caplog.text
    assert "look right" not in caplog.text

    np.save(src / "feat.npy", np.zeros((20, 8), dtype=np.float32))
    with pytest.raises(DatasetError, match="carry no information"):
        import_mmrec(src, "toy", tmp_path / "out2", opts, feature_files={"item": "feat.npy"})
