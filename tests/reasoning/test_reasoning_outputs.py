"""The reason -> train contract (reasoning/outputs.py): what reason.py writes is what train.py reads."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from mllmrec.data import DatasetError, DatasetLayout, load_processed_dataset
from mllmrec.reasoning import run_reasoning
from mllmrec.reasoning.backends.fake import FakeBackend
from mllmrec.reasoning.outputs import (
    ITEM_TABLE,
    MANIFEST,
    TABLE_COLUMNS,
    USER_TABLE,
    outputs_fingerprint,
    read_reasoning_outputs,
    write_reasoning_outputs,
)

from reasoning_helpers import tiny_overrides


def test_the_reader_returns_what_the_pipeline_wrote_in_id_order(tiny_root, reason_cfg) -> None:
    backend = FakeBackend("Qwen/Qwen2.5-VL-7B-Instruct@main")
    result = run_reasoning(reason_cfg(*tiny_overrides(tiny_root, "mllm=qwen25vl", "reason.backend=fake")), backend)
    data = load_processed_dataset(tiny_root)
    layout = DatasetLayout(tiny_root)
    for source in ("description", "text", "image_description"):
        texts = read_reasoning_outputs(layout, "tiny", "qwen25vl-fake", "train", data.n_items, data.n_users, source)
        assert texts.folder == result.out_dir
        assert texts.item_texts == result.tables["item_descriptions"][source].tolist()
    assert texts.user_profiles == result.tables["user_profiles"]["profile"].tolist()
    assert texts.user_statuses == ["ok"] * data.n_users
    manifest = json.loads((result.out_dir / MANIFEST).read_text())
    assert manifest["format"] == "mllmrec-reasoning" and manifest["format_version"] == 1
    for name in TABLE_COLUMNS:  # the manifest's hashes are those of the files
        assert manifest["tables"][name] == hashlib.sha256((result.out_dir / name).read_bytes()).hexdigest()


def _tables(profiles: list[str]) -> dict[str, pd.DataFrame]:
    n = 3
    return {
        "image_descriptions.parquet": pd.DataFrame({"item_id": np.arange(n), "image_description": ["x"] * n,
                                                    "status": ["ok"] * n}),
        ITEM_TABLE: pd.DataFrame({"item_id": np.arange(n), "text": ["t0", "t1", "t2"],
                                  "image_description": ["x"] * n, "description": ["d0", "d1", "d2"]}),
        USER_TABLE: pd.DataFrame({"user_id": np.arange(len(profiles)), "profile": profiles,
                                  "status": ["ok" if p else "failed" for p in profiles],
                                  "n_history": [1] * len(profiles), "n_used": [1] * len(profiles)}),
    }


def test_rows_are_read_in_id_order_and_bad_tables_are_rejected(tmp_path) -> None:
    layout = DatasetLayout(tmp_path)
    folder = layout.reasoning("m")
    folder.mkdir(parents=True)
    tables = _tables(["p0", "", "p2"])
    tables[USER_TABLE] = tables[USER_TABLE].iloc[[2, 0, 1]]  # stored out of order
    write_reasoning_outputs(folder, tables, {})
    texts = read_reasoning_outputs(layout, "ds", "m", "train", 3, 3)
    assert texts.item_texts == ["d0", "d1", "d2"]
    assert texts.user_profiles == ["p0", "", "p2"] and texts.user_statuses == ["ok", "failed", "ok"]

    with pytest.raises(DatasetError, match="one row per id 0..3"):
        read_reasoning_outputs(layout, "ds", "m", "train", 3, 4)
    tables[ITEM_TABLE].drop(columns="text").to_parquet(folder / ITEM_TABLE)
    with pytest.raises(DatasetError, match="column 'text' missing"):
        read_reasoning_outputs(layout, "ds", "m", "train", 3, 3, item_text_source="text")
    (folder / USER_TABLE).unlink()
    with pytest.raises(DatasetError, match="`python reason.py dataset=ds mllm=m` "):
        read_reasoning_outputs(layout, "ds", "m", "train", 3, 3)
    with pytest.raises(ValueError, match="columns"):
        write_reasoning_outputs(folder, {**tables, USER_TABLE: tables[USER_TABLE][["user_id", "profile"]]}, {})


def test_the_fingerprint_is_the_tables_content_not_the_run_record(tmp_path) -> None:
    folder = tmp_path / "out"
    write_reasoning_outputs(folder, _tables(["a", "b"]), {"created": "monday"})
    first = outputs_fingerprint(folder)
    write_reasoning_outputs(folder, _tables(["a", "b"]), {"created": "tuesday"})  # same tables
    assert outputs_fingerprint(folder) == first
    write_reasoning_outputs(folder, _tables(["a", "c"]), {"created": "tuesday"})
    assert outputs_fingerprint(folder) != first
    (folder / MANIFEST).unlink()  # tables without a manifest (hand-made): hashed themselves
    without = outputs_fingerprint(folder)
    write_reasoning_outputs(folder, _tables(["a", "c"]), {})
    assert outputs_fingerprint(folder) == without
    with pytest.raises(FileNotFoundError):
        outputs_fingerprint(tmp_path / "nothing")
