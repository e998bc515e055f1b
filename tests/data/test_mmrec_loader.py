"""MMRec-format folders: what loading yields, and the DatasetError for each kind of bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from mllmrec.data import DatasetError, InteractionData, load_mmrec_dataset

from .conftest import HEADER, TOY_ROWS


def _dense(mat: sp.csr_matrix) -> np.ndarray:
    return np.asarray(mat.todense())


def _load(root, name="toy", **kwargs) -> InteractionData:
    kwargs.setdefault("item_features", None)
    kwargs.setdefault("user_features", None)
    return load_mmrec_dataset(root, name, **kwargs)


# ---------------------------------------------------------------- what a good folder yields


def test_sizes_are_max_id_plus_one_over_all_splits(toy_folder):
    data = _load(toy_folder)
    assert data.name == "toy"
    assert (data.n_users, data.n_items) == (3, 5)  # item 4 only in test still counts
    for mat in (data.train, data.valid, data.test):
        assert sp.isspmatrix_csr(mat) or isinstance(mat, sp.csr_array)
        assert mat.shape == (3, 5)
        assert mat.dtype == np.float32


def test_splits_are_binary_matrices_of_the_x_label_rows(toy_folder):
    data = _load(toy_folder)
    train = np.zeros((3, 5), np.float32)
    valid = np.zeros((3, 5), np.float32)
    test = np.zeros((3, 5), np.float32)
    for u, i, _r, _t, x in TOY_ROWS:
        (train, valid, test)[x][u, i] = 1
    np.testing.assert_array_equal(_dense(data.train), train)
    np.testing.assert_array_equal(_dense(data.valid), valid)
    np.testing.assert_array_equal(_dense(data.test), test)
    assert (data.n_train, data.valid.nnz, data.test.nnz) == (8, 2, 2)


def test_repeated_pairs_count_once(inter_writer):
    rows = TOY_ROWS + [(0, 1, 5, 99, 0), (0, 1, 5, 100, 0)]
    data = _load(inter_writer(rows), "toy")
    assert data.train[0, 1] == 1.0
    assert set(np.unique(data.train.data)) == {1.0}
    assert data.n_train == 8
    # the history keeps the first (earliest) occurrence only
    assert data.history(0).tolist() == [1, 2, 0]


def test_history_is_chronological_with_ties_in_file_order(toy_folder):
    data = _load(toy_folder)
    assert data.history(0).tolist() == [1, 2, 0]  # timestamps 10, 20, 30
    assert data.history(1).tolist() == [1, 2, 0]  # 5, then 15 (item 2 is first in the file), 15
    assert data.history(2).tolist() == [3, 1]
    assert data.history_indptr.tolist() == [0, 3, 6, 8]
    # valid/test items never enter the history
    assert 3 not in data.history(0) and 4 not in data.history(0)


def test_history_tie_order_follows_the_file_not_the_item_id(inter_writer):
    rows = [(0, 7, 1, 5, 0), (0, 3, 1, 5, 0), (0, 5, 1, 5, 0), (0, 1, 1, 1, 0), (0, 2, 1, 9, 1),
            (0, 4, 1, 9, 2)]
    data = _load(inter_writer(rows), "toy")
    assert data.history(0).tolist() == [1, 7, 3, 5]


def test_extra_columns_and_column_order_are_ignored(inter_writer):
    header = ("x_label", "note", "timestamp", "itemID", "userID", "rating", "extra")
    rows = [(x, "hello world", t, i, u, r, "zzz") for (u, i, r, t, x) in TOY_ROWS]
    data = _load(inter_writer(rows, header=header), "toy")
    ref_rows = TOY_ROWS
    assert (data.n_users, data.n_items) == (3, 5)
    assert data.n_train == sum(1 for row in ref_rows if row[4] == 0)
    assert data.history(1).tolist() == [1, 2, 0]


def test_float64_features_are_cast_to_float32(toy_folder):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5, 4))  # float64
    users = rng.normal(size=(3, 2)).astype(np.float32)
    np.save(toy_folder / "items.npy", items)
    np.save(toy_folder / "users.npy", users)
    data = load_mmrec_dataset(toy_folder, "toy", item_features="items.npy", user_features="users.npy")
    assert data.item_features.dtype == np.float32 and data.item_features.shape == (5, 4)
    np.testing.assert_allclose(data.item_features, items.astype(np.float32))
    assert data.user_features.dtype == np.float32
    np.testing.assert_array_equal(data.user_features, users)
    assert data.source == toy_folder


def test_features_are_optional(toy_folder):
    data = _load(toy_folder)
    assert data.item_features is None and data.user_features is None


def test_eval_rows_of_users_without_training_are_dropped_with_one_warning(inter_writer, caplog):
    rows = TOY_ROWS + [
        (3, 1, 5, 1, 1),  # user 3: valid only
        (4, 2, 5, 1, 2),  # user 4: test only (two rows)
        (4, 0, 5, 2, 2),
    ]
    with caplog.at_level(logging.WARNING):
        data = _load(inter_writer(rows), "toy")
    assert data.n_users == 5  # still max id + 1
    assert data.valid[3].nnz == 0 and data.test[4].nnz == 0
    assert (data.valid.nnz, data.test.nnz) == (2, 2)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "2 users" in message
    assert "toy.inter" in message


def test_no_warning_when_every_user_has_training(toy_folder, caplog):
    with caplog.at_level(logging.WARNING):
        _load(toy_folder)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- bad input: DatasetError


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(missing, "baby")
    msg = str(err.value)
    assert str(missing) in msg and "baby.inter" in msg and "dataset.root" in msg


def test_missing_inter_file_suggests_the_close_name(toy_folder):
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(toy_folder, "tyo")
    msg = str(err.value)
    assert "tyo.inter" in msg and "does not exist" in msg
    assert "did you mean 'toy.inter'" in msg
    assert "dataset.name" in msg


def test_missing_feature_file_names_it(toy_folder):
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(toy_folder, "toy", item_features="image_text_feat.npy", user_features=None)
    msg = str(err.value)
    assert "image_text_feat.npy" in msg and "does not exist" in msg


def test_misspelled_column_gets_a_did_you_mean(inter_writer):
    header = ("userID", "itemId", "rating", "timestamp", "x_label")
    root = inter_writer(TOY_ROWS, header=header)
    with pytest.raises(DatasetError) as err:
        _load(root)
    msg = str(err.value)
    assert "toy.inter" in msg
    assert "'itemID'" in msg and "did you mean 'itemId'" in msg


def test_missing_column_is_named(inter_writer):
    header = ("userID", "itemID", "rating", "timestamp")
    root = inter_writer([row[:4] for row in TOY_ROWS], header=header)
    with pytest.raises(DatasetError) as err:
        _load(root)
    msg = str(err.value)
    assert "toy.inter" in msg and "missing column" in msg and "'x_label'" in msg


def test_comma_separated_file_is_called_out(inter_writer):
    root = inter_writer(TOY_ROWS, sep=",")
    with pytest.raises(DatasetError) as err:
        _load(root)
    msg = str(err.value)
    assert "toy.inter" in msg and "tab-separated" in msg


def test_header_only_file(inter_writer):
    root = inter_writer([])
    with pytest.raises(DatasetError) as err:
        _load(root)
    assert "toy.inter" in str(err.value) and "no interaction rows" in str(err.value)


@pytest.mark.parametrize(("column", "value"), [("userID", "1.5"), ("itemID", "abc"), ("userID", "")])
def test_non_integer_ids(inter_writer, column, value):
    rows = [list(row) for row in TOY_ROWS]
    rows[4][HEADER.index(column)] = value
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and repr(column) in msg and "integers" in msg
    assert "row 5" in msg and repr(value) in msg


@pytest.mark.parametrize("column", ["userID", "itemID"])
def test_negative_ids(inter_writer, column):
    rows = [list(row) for row in TOY_ROWS]
    rows[2][HEADER.index(column)] = -3
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and repr(column) in msg and "-3" in msg and "row 3" in msg


@pytest.mark.parametrize("label", [3, 7])
def test_x_label_outside_0_1_2(inter_writer, label):
    rows = [list(row) for row in TOY_ROWS]
    rows[3][4] = label
    rows[6][4] = label
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and "'x_label'" in msg
    assert "0 (train), 1 (valid) or 2 (test)" in msg
    assert f"[{label}]" in msg and "2 rows" in msg


def test_non_numeric_timestamp(inter_writer):
    rows = [list(row) for row in TOY_ROWS]
    rows[1][3] = "yesterday"
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and "'timestamp'" in msg and "1 non-numeric" in msg


@pytest.mark.parametrize("label", [1, 2])
def test_split_left_empty(inter_writer, label):
    rows = [row for row in TOY_ROWS if row[4] != label]
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    name = {1: "valid", 2: "test"}[label]
    assert "toy.inter" in msg and f"{name} split is empty" in msg


def test_split_empty_after_dropping_users_without_training(inter_writer):
    # the only test rows belong to a user with no training data
    rows = [row for row in TOY_ROWS if row[4] != 2] + [(3, 0, 1, 1, 2)]
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    assert "test split is empty" in str(err.value)


@pytest.mark.parametrize(("kind", "n_users", "n_items"), [("item", 3, 5), ("user", 3, 5)])
def test_feature_row_count_mismatch_says_both_numbers(toy_folder, kind, n_users, n_items):
    expected = n_items if kind == "item" else n_users
    np.save(toy_folder / "feat.npy", np.zeros((expected + 4, 8), dtype=np.float32))
    kwargs = {"item_features": None, "user_features": None, f"{kind}_features": "feat.npy"}
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(toy_folder, "toy", **kwargs)
    msg = str(err.value)
    assert "feat.npy" in msg
    assert f"{expected + 4} rows" in msg and f"{expected} {kind}s" in msg


def test_non_finite_features_say_how_many_rows(toy_folder):
    feat = np.ones((5, 3))
    feat[1, 0] = np.nan
    feat[3, 2] = np.inf
    feat[3, 1] = -np.inf
    np.save(toy_folder / "feat.npy", feat)
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(toy_folder, "toy", item_features="feat.npy", user_features=None)
    msg = str(err.value)
    assert "feat.npy" in msg and "NaN/inf" in msg and "2 of 5 rows" in msg and "row 1" in msg


def test_feature_file_must_be_2d_float(toy_folder):
    np.save(toy_folder / "flat.npy", np.zeros(5, dtype=np.float32))
    np.save(toy_folder / "ints.npy", np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(DatasetError, match=r"flat\.npy must be 2-D"):
        load_mmrec_dataset(toy_folder, "toy", item_features="flat.npy", user_features=None)
    with pytest.raises(DatasetError, match=r"ints\.npy has dtype int64"):
        load_mmrec_dataset(toy_folder, "toy", item_features="ints.npy", user_features=None)


def test_interactions_are_checked_before_features(inter_writer):
    rows = [list(row) for row in TOY_ROWS]
    rows[0][0] = "x"
    root = inter_writer(rows)
    # the feature file is wrong too, but the cheap .inter check must speak first
    np.save(root / "feat.npy", np.full((2, 2), np.nan))
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(root, "toy", item_features="feat.npy", user_features=None)
    assert "toy.inter" in str(err.value) and "feat.npy" not in str(err.value)


def test_row_count_is_checked_before_the_values(toy_folder):
    np.save(toy_folder / "feat.npy", np.full((9, 2), np.nan))
    with pytest.raises(DatasetError) as err:
        load_mmrec_dataset(toy_folder, "toy", item_features="feat.npy", user_features=None)
    assert "9 rows" in str(err.value) and "5 items" in str(err.value)


def test_empty_or_binary_inter_file_is_a_dataset_error(tmp_path):
    # an empty file raised pandas' EmptyDataError ("No columns to parse from file"), which names
    # no file; a binary file raised UnicodeDecodeError
    root = tmp_path / "ds"
    root.mkdir()
    (root / "toy.inter").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        _load(root)
    assert "toy.inter" in str(err.value) and "empty" in str(err.value)
    (root / "toy.inter").write_bytes(b"\x93NUMPY\x01\x00\xff\xfe\x00garbage\n")
    with pytest.raises(DatasetError) as err:
        _load(root)
    assert "toy.inter" in str(err.value) and "UTF-8" in str(err.value)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e30", "nan"])
def test_non_finite_or_huge_ids_are_not_integers(inter_writer, value):
    # 'inf' passed the floor() test and was cast to int64 garbage: the error then spoke of a
    # "negative value -9223372036854775808" (or a huge id went through)
    rows = [list(row) for row in TOY_ROWS]
    rows[1][1] = value
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and "'itemID'" in msg and "integers" in msg
    assert "row 2" in msg and repr(value) in msg and "-9223372036854775808" not in msg


def test_negative_x_label_gets_the_split_label_message(inter_writer):
    # -1 used to hit the generic "ids must be 0-based non-negative integers" message
    rows = [list(row) for row in TOY_ROWS]
    rows[3][4] = -1
    with pytest.raises(DatasetError) as err:
        _load(inter_writer(rows))
    msg = str(err.value)
    assert "toy.inter" in msg and "'x_label'" in msg
    assert "0 (train), 1 (valid) or 2 (test)" in msg and "[-1]" in msg and "1 rows" in msg
    assert "ids must" not in msg
