"""The whole reasoning run against the deterministic fake backend (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mllmrec.data import DatasetError, DatasetLayout
from mllmrec.reasoning import ShardsPending, run_reasoning
from mllmrec.reasoning.backends.base import Generation, Request
from mllmrec.reasoning.backends.fake import FakeBackend
from mllmrec.reasoning.prompts import image_prompt, profile_prompt

from reasoning_helpers import build_tiny_dataset, tiny_overrides

VISION = "mllm=qwen25vl"


def fake(**kwargs) -> FakeBackend:
    return FakeBackend("Qwen/Qwen2.5-VL-7B-Instruct@main", **kwargs)


def prompts_of(backend: FakeBackend, kind: str) -> list[str]:
    return [r.messages[-1].text for call in backend.calls for r in call if bool(r.images) == (kind == "image")]


def read_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_parquet(out / f"{n}.parquet")
            for n in ("image_descriptions", "item_descriptions", "user_profiles")}


def test_full_run_writes_the_three_tables_and_manifest(tiny_root, reason_cfg) -> None:
    backend = fake()
    result = run_reasoning(reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake")), backend)
    assert result.out_dir == DatasetLayout(tiny_root).reasoning("qwen25vl-fake")
    tables = read_tables(result.out_dir)
    images, items, users = tables["image_descriptions"], tables["item_descriptions"], tables["user_profiles"]
    assert list(images.columns) == ["item_id", "image_description", "status"]
    assert list(items.columns) == ["item_id", "text", "image_description", "description"]
    assert list(users.columns)[:2] == ["user_id", "profile"]
    assert images["status"].tolist() == ["ok", "ok", "ok", "unreadable", "no_image"]
    assert all(images["image_description"][:3].str.startswith("fake-image"))
    assert images["image_description"][3:].tolist() == ["", ""]
    # Eq. 2: text, the separator, the image description; text alone without an image
    for row in items.itertuples():
        expected = f"{row.text} {row.image_description}" if row.item_id < 3 else row.text
        assert row.description == expected
    assert users["status"].tolist() == ["ok", "ok", "ok"] and users["profile"].str.len().min() > 0
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["counts"]["image_status"] == {"ok": 3, "unreadable": 1, "no_image": 1}
    assert manifest["counts"]["items_text_only"] == 2
    assert manifest["n_unreadable_images"] == 1 and manifest["unreadable_images"][0]["id"] == 3
    assert "cannot decode" in manifest["unreadable_images"][0]["error"]
    assert manifest["prompt_template_version"] and manifest["backend"] == "fake"
    assert manifest["sampling"]["max_tokens"] == 160
    assert set(manifest["tables"]) == {"image_descriptions.parquet", "item_descriptions.parquet",
                                       "user_profiles.parquet"}


def test_requests_name_the_dataset_and_hold_train_items_in_time_order(tiny_root, reason_cfg) -> None:
    backend = fake()
    result = run_reasoning(reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake")), backend)
    assert set(prompts_of(backend, "image")) == {image_prompt("Baby")}
    descriptions = result.tables["item_descriptions"]["description"].tolist()
    expected = {profile_prompt([descriptions[i] for i in h]) for h in ([2, 0, 1], [3, 4], [1, 4, 0])}
    assert set(prompts_of(backend, "profile")) == expected


def test_rerun_generates_nothing_and_reproduces_the_tables(tiny_root, reason_cfg) -> None:
    cfg = reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake"))
    first = run_reasoning(cfg, fake())
    again_backend = fake()
    again = run_reasoning(cfg, again_backend)
    assert again_backend.calls == []
    for name, table in first.tables.items():
        pd.testing.assert_frame_equal(table, again.tables[name])


def test_history_all_is_written_apart_and_includes_held_out_items(tiny_root, reason_cfg) -> None:
    backend = fake()
    result = run_reasoning(
        reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake", "reason.history=all")), backend
    )
    assert result.out_dir == DatasetLayout(tiny_root).reasoning("qwen25vl-fake", "all")
    assert result.out_dir.name.endswith("__history-all")
    descriptions = result.tables["item_descriptions"]["description"].tolist()
    assert profile_prompt([descriptions[i] for i in [4, 2, 3, 0, 1]]) in prompts_of(backend, "profile")
    assert json.loads((result.out_dir / "manifest.json").read_text())["history"] == "all"


def test_limits_restrict_the_work_and_mark_the_rest(tiny_root, reason_cfg) -> None:
    backend = fake()
    cfg = reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake", "reason.limit_items=1",
                                     "reason.limit_users=2"))
    result = run_reasoning(cfg, backend)
    assert result.tables["image_descriptions"]["status"].tolist() == [
        "ok", "skipped_limit", "skipped_limit", "skipped_limit", "no_image"]
    assert result.tables["user_profiles"]["status"].tolist() == ["ok", "ok", "skipped_limit"]
    assert len(prompts_of(backend, "image")) == 1 and len(prompts_of(backend, "profile")) == 2


def test_text_only_model_skips_images_with_a_message(tiny_root, reason_cfg, caplog) -> None:
    backend = FakeBackend("google/gemma-3-270m@gguf-q4_k_m", supports_images=False)
    cfg = reason_cfg(*tiny_overrides(tiny_root, "mllm=gemma3_270m", "reason.backend=fake"))
    with caplog.at_level("WARNING"):
        result = run_reasoning(cfg, backend)
    assert "text-only" in caplog.text
    assert set(result.tables["image_descriptions"]["status"]) == {"text_only_model"}
    items = result.tables["item_descriptions"]
    assert (items["description"] == items["text"]).all()
    assert prompts_of(backend, "image") == []


def test_dataset_without_image_paths_skips_the_image_step(tmp_path, reason_cfg, caplog) -> None:
    root = build_tiny_dataset(tmp_path / "data" / "noimg", images=False)
    with caplog.at_level("WARNING"):
        result = run_reasoning(reason_cfg(*tiny_overrides(root, VISION, "reason.backend=fake")), fake())
    assert "no item of this dataset has an image path" in caplog.text
    assert set(result.tables["image_descriptions"]["status"]) == {"no_image"}


def test_missing_images_folder_fails_before_any_model(tiny_root, reason_cfg) -> None:
    import shutil

    shutil.rmtree(tiny_root / "images")
    # the vllm backend is not installed here: reaching it would raise BackendNotInstalled instead
    with pytest.raises(DatasetError, match=r"images folder .*images does not exist"):
        run_reasoning(reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=vllm")))


def test_empty_output_is_retried_once_with_another_seed(tiny_root, reason_cfg) -> None:
    seeds = []

    def respond(request: Request) -> Generation:
        seeds.append(request.sampling.seed)
        empty = request.sampling.seed == 0
        return Generation("" if empty else "a description", 2, "stop")

    backend = fake(respond=respond)
    result = run_reasoning(reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake")), backend)
    assert set(result.tables["image_descriptions"]["status"][:3]) == {"ok"}
    assert seeds.count(0) == seeds.count(1) > 0 and set(seeds) == {0, 1}


def test_empty_twice_is_a_recorded_failure_and_is_retried_on_rerun(tiny_root, reason_cfg) -> None:
    def respond(request: Request) -> Generation:
        return Generation("   " if request.images else "profile", 1, "stop")

    cfg = reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake"))
    result = run_reasoning(cfg, fake(respond=respond))
    images, items = result.tables["image_descriptions"], result.tables["item_descriptions"]
    assert images["status"].tolist()[:3] == ["failed"] * 3
    assert (items["description"] == items["text"]).all()  # failed images keep the text alone
    manifest = result.summary
    assert manifest["counts"]["empty_outputs"] == 3 and manifest["n_failures"] == 3
    assert {f["id"] for f in manifest["failures"]} == {0, 1, 2}
    # a rerun retries the failures (reason.retry_failed) and the successes replace them
    rerun = run_reasoning(cfg, fake())
    assert rerun.tables["image_descriptions"]["status"].tolist()[:3] == ["ok"] * 3


def test_request_errors_are_failures_not_crashes(tiny_root, reason_cfg) -> None:
    def respond(request: Request) -> Generation:
        if request.images:
            return Generation("", 0, "error", error="HTTP 400: image too large")
        return Generation("fine", 1, "stop")

    result = run_reasoning(reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake")),
                           fake(respond=respond))
    assert result.summary["n_failures"] == 3
    assert "image too large" in result.summary["failures"][0]["error"]
    assert set(result.tables["user_profiles"]["status"]) == {"ok"}


def test_small_context_truncates_and_reports(tiny_root, reason_cfg) -> None:
    backend = fake(chars_per_token=1.0)  # one token per character: the budget is in characters
    budget = len(profile_prompt([])) + 90
    cfg = reason_cfg(*tiny_overrides(tiny_root, VISION, "reason.backend=fake",
                                     f"reason.max_prompt_tokens={budget}"))
    result = run_reasoning(cfg, backend)
    counts = result.summary["counts"]
    assert counts["users_truncated"] == 3 and counts["items_dropped"] > 0
    users = result.tables["user_profiles"]
    assert (users["n_used"] < users["n_history"]).all()
    assert all(len(p) <= budget for p in prompts_of(backend, "profile"))


def test_two_shards_split_the_work_and_the_last_one_merges(tiny_root, reason_cfg) -> None:
    base = tiny_overrides(tiny_root, VISION, "reason.backend=fake", "reason.num_shards=2")
    out = DatasetLayout(tiny_root).reasoning("qwen25vl-fake")
    b0 = fake()
    with pytest.raises(ShardsPending, match="image generations of other shards"):
        run_reasoning(reason_cfg(*base, "reason.shard=0"), b0)
    assert sorted(r.messages[0].image.sha256 is not None for c in b0.calls for r in c) == [True, True]
    b1 = fake()
    with pytest.raises(ShardsPending, match="profile generations"):
        run_reasoning(reason_cfg(*base, "reason.shard=1"), b1)
    assert not (out / "manifest.json").exists()  # no tables while work is missing
    assert len(prompts_of(b1, "image")) == 1 and len(prompts_of(b1, "profile")) == 1
    b0_again = fake()
    merged = run_reasoning(reason_cfg(*base, "reason.shard=0"), b0_again)
    assert len(prompts_of(b0_again, "image")) == 0 and len(prompts_of(b0_again, "profile")) == 2
    assert (out / "manifest.json").exists()
    # identical to doing it all in one process (fresh dataset copy, same fake model)
    other = build_tiny_dataset(tiny_root.parent / "tiny_single")
    single = run_reasoning(reason_cfg(*tiny_overrides(other, VISION, "reason.backend=fake")), fake())
    for name, table in single.tables.items():
        pd.testing.assert_frame_equal(table, merged.tables[name])


def test_shard_waits_for_the_others_when_asked(tiny_root, reason_cfg) -> None:
    import threading

    base = tiny_overrides(tiny_root, VISION, "reason.backend=fake", "reason.num_shards=2", "reason.poll_s=0.1")
    results = {}
    # composed here: Hydra's global state makes composing in two threads at once fail
    cfgs = {i: reason_cfg(*base, f"reason.shard={i}", "reason.shard_wait_s=60") for i in (0, 1)}

    def shard(i: int) -> None:
        try:
            results[i] = run_reasoning(cfgs[i], fake())
        except BaseException as exc:  # surfaced by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=shard, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0].complete and results[1].complete
    assert set(results[0].tables["user_profiles"]["status"]) == {"ok"}
    # both waited for the complete set; the tables were written once, by whichever got there first
    assert sorted(r.merged for r in results.values()) == [False, True]
    merger = next(i for i, r in results.items() if r.merged)
    out = DatasetLayout(tiny_root).reasoning("qwen25vl-fake")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["merge"]["shard"] == merger and manifest["merge"]["num_shards"] == 2
    for name, table in results[merger].tables.items():
        pd.testing.assert_frame_equal(table, results[1 - merger].tables[name])


def test_a_rerun_with_nothing_new_does_not_rewrite_and_a_damaged_set_is_rewritten(tiny_root, reason_cfg) -> None:
    base = tiny_overrides(tiny_root, VISION, "reason.backend=fake")
    out = DatasetLayout(tiny_root).reasoning("qwen25vl-fake")
    first = run_reasoning(reason_cfg(*base), fake())
    assert first.merged
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = run_reasoning(reason_cfg(*base), fake())
    assert not again.merged and (out / "manifest.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.tables["user_profiles"], first.tables["user_profiles"])
    (out / "user_profiles.parquet").unlink()  # a damaged set: the manifest no longer matches the files
    repaired = run_reasoning(reason_cfg(*base), fake())
    assert repaired.merged and (out / "user_profiles.parquet").is_file()
