"""The bookkeeping of a reasoning run: the three tables, ``manifest.json`` and the logged summary,
built from a fresh, complete read of the generation store once the runner (:mod:`.pipeline`) has
every output or a recorded failure. The file names, columns and status words are those of
:mod:`.outputs`, the contract the training app reads."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mllmrec
from mllmrec.cache import sha256_file, stable_hash
from mllmrec.data.text import clean_text
from mllmrec.reasoning.images import ImageScan
from mllmrec.reasoning.outputs import (
    FAILED,
    IMAGE_STATUSES,
    IMAGE_TABLE,
    ITEM_TABLE,
    MANIFEST,
    NO_HISTORY,
    OK,
    PROFILE_STATUSES,
    SKIPPED_LIMIT,
    UNREADABLE,
    USER_TABLE,
    write_reasoning_outputs,
)
from mllmrec.reasoning.prompts import PROMPT2, TEMPLATE_VERSION, FittedHistory, image_prompt
from mllmrec.reasoning.settings import ReasonSettings
from mllmrec.reasoning.store import GenerationStore

log = logging.getLogger(__name__)

__all__ = ["ReasonResult", "RunState", "merge_outputs"]

# phrases with which chat models decline; counted (not dropped) so a run with many shows up
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i am unable|i'?m unable|as an ai)", re.I
)


@dataclass
class ReasonResult:
    out_dir: Path
    complete: bool
    summary: dict[str, Any]
    #: the tables written, by name without ``.parquet`` (image_descriptions, item_descriptions, ...)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: False when another shard had already written the tables of exactly this set (not rewritten)
    merged: bool = True


@dataclass
class RunState:
    """What the runner knows once every generation of the run has a record: the inputs, the plan
    (cache keys by item / user id) and this run's counters. Bookkeeping reads nothing else.

    Shapes (I items, U users): ``items`` [I rows], ``image_text`` / ``image_status`` /
    ``descriptions`` [I], ``histories`` [U]; ``users`` the ids the run was asked for (a prefix of
    0..U-1 under ``reason.limit_users``).
    """

    settings: ReasonSettings
    out_dir: Path
    store_root: Path
    #: processed/manifest.json of the dataset (its hash goes into the manifest)
    dataset_manifest: Path
    backend_name: str
    backend_identity: str
    n_users: int
    items: pd.DataFrame
    scan: ImageScan
    image_text: list[str]
    image_status: list[str]
    descriptions: list[str]
    histories: Sequence[np.ndarray]
    users: Sequence[int]
    image_keys: Mapping[int, str]
    profile_keys: Mapping[int, str]
    fitted: Mapping[int, FittedHistory]
    stats: Counter[str] = field(default_factory=Counter)  # generations, tokens, retries of this run
    seconds: Counter[str] = field(default_factory=Counter)  # generation time of this run, per kind


def _tables(state: RunState, store: GenerationStore) -> dict[str, pd.DataFrame]:
    """The three tables, by file name, from the store's records."""
    item_ids = state.items["item_id"].to_numpy(np.int64)
    image_df = pd.DataFrame({"item_id": item_ids, "image_description": state.image_text,
                             "status": state.image_status})
    item_df = pd.DataFrame({
        "item_id": item_ids,
        "text": [clean_text(t) for t in state.items["text"].fillna("").astype(str)],
        "image_description": state.image_text,
        "description": state.descriptions,
    })
    chosen = set(state.users)
    records = store.get_many(state.profile_keys.values())
    profiles, statuses, n_used = [], [], []
    for user in range(state.n_users):
        key = state.profile_keys.get(user)
        if user not in chosen:
            profiles.append(""), statuses.append(SKIPPED_LIMIT), n_used.append(0)
        elif key is None:
            profiles.append(""), statuses.append(NO_HISTORY), n_used.append(0)
        else:
            record = records.get(key)
            ok = record is not None and record.ok
            profiles.append(clean_text(record.text) if ok else "")
            statuses.append(OK if ok else FAILED)
            n_used.append(len(state.fitted[user].descriptions))
    user_df = pd.DataFrame({
        "user_id": np.arange(state.n_users, dtype=np.int64), "profile": profiles, "status": statuses,
        "n_history": [len(h) for h in state.histories], "n_used": n_used,
    })
    return {IMAGE_TABLE: image_df, ITEM_TABLE: item_df, USER_TABLE: user_df}


def merge_stamp(state: RunState, store: GenerationStore) -> str:
    """Identity of what the tables are made of: the dataset, the plan (keys by item / user, image
    statuses, users asked for, separator) and which record each key resolves to in the store.
    Equal stamps give equal tables, so the shards of one run write them once.
    """
    keys = [*state.image_keys.values(), *state.profile_keys.values()]
    s = state.settings
    return stable_hash(
        "reasoning-merge", mllmrec.__version__, sha256_file(state.dataset_manifest), s.history,
        s.separator, s.limit_items, s.limit_users, state.n_users, list(state.users),
        sorted(state.image_keys.items()), sorted(state.profile_keys.items()), list(state.image_status),
        store.locations(keys), length=32,
    )


def _already_merged(out_dir: Path, stamp: str) -> dict[str, Any] | None:
    """The manifest of ``out_dir`` when it records ``stamp`` and its tables are the files it hashed."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or (manifest.get("merge") or {}).get("stamp") != stamp:
        return None
    tables = manifest.get("tables") or {}
    for name in (IMAGE_TABLE, ITEM_TABLE, USER_TABLE):
        table = out_dir / name
        if not table.is_file() or tables.get(name) != sha256_file(table):
            return None
    return manifest


def merge_outputs(state: RunState) -> ReasonResult:
    """Write the tables and the manifest from a fresh, complete read of the store
    (timing-independent: whichever shard merges, the files are the same).

    Call under the output folder's lock. When the folder already holds the tables of exactly this
    set (another shard merged it: same :func:`merge_stamp`) nothing is rewritten and the result
    carries the tables read back, with ``merged=False``.
    """
    store = GenerationStore(state.store_root)
    store.refresh()
    stamp = merge_stamp(state, store)
    done = _already_merged(state.out_dir, stamp)
    if done is not None:
        by = done["merge"].get("shard")
        log.info("the tables of this exact set were already written by shard %s/%s: not merging again",
                 by, done["merge"].get("num_shards"))
        tables = {Path(name).stem: pd.read_parquet(state.out_dir / name)
                  for name in (IMAGE_TABLE, ITEM_TABLE, USER_TABLE)}
        return ReasonResult(state.out_dir, True, done, tables, merged=False)
    tables = _tables(state, store)
    summary = _summary(state, store, tables[IMAGE_TABLE], tables[USER_TABLE])
    summary["merge"] = {"stamp": stamp, "shard": state.settings.shard, "num_shards": state.settings.num_shards}
    unreadable = [im for im in state.scan.images if im.status == UNREADABLE]
    summary["n_unreadable_images"] = len(unreadable)
    summary["unreadable_images"] = [{"id": im.item_id, "error": im.error} for im in unreadable[:200]]
    summary = write_reasoning_outputs(state.out_dir, tables, summary)
    _log_summary(summary)
    return ReasonResult(state.out_dir, True, summary, {Path(n).stem: t for n, t in tables.items()})


def _summary(state: RunState, store: GenerationStore, image_df: pd.DataFrame,
             user_df: pd.DataFrame) -> dict[str, Any]:
    s, mllm, stats, seconds = state.settings, state.settings.mllm, state.stats, state.seconds
    failures, lengths, refusals = [], {"image": [], "profile": []}, Counter()
    for kind, keys in (("image", state.image_keys), ("profile", state.profile_keys)):
        records = store.get_many(keys.values())
        for ref, key in sorted(keys.items()):
            record = records.get(key)
            if record is None:
                continue
            if record.ok:
                lengths[kind].append((record.n_tokens, len(record.text.split())))
                refusals[kind] += bool(_REFUSAL.match(record.text))
            else:
                failures.append({"kind": kind, "id": int(ref), "error": record.error})
    empty = sum("empty output" in (f["error"] or "") for f in failures)
    n_runs = {k: stats[f"{k}_generated"] for k in ("image", "profile")}
    secs = {k: seconds[k] for k in ("image", "profile")}
    toks = {k: stats[f"{k}_tokens"] for k in ("image", "profile")}
    fitted = state.fitted

    def mean(values: list[tuple[int, int]], idx: int) -> float | None:
        return round(float(np.mean([v[idx] for v in values])), 2) if values else None

    image_counts = {k: int(v) for k, v in image_df["status"].value_counts().items()}
    text_only = int((image_df["status"] != OK).sum())
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": mllmrec.__version__,
        "dataset": {"name": s.dataset.name, "display_name": s.dataset.display_name,
                    "root": str(s.dataset.root),
                    "processed_manifest_sha256": sha256_file(state.dataset_manifest)},
        "mllm": {"name": mllm.name, "model_id": mllm.model_id, "revision": mllm.revision,
                 "identity": state.backend_identity, "vision": mllm.vision},
        "backend": state.backend_name,
        "prompt_template_version": TEMPLATE_VERSION,
        "prompts": {"image": image_prompt(s.dataset.display_name), "profile": PROMPT2},
        "sampling": mllm.sampling.as_dict(),
        "history": s.history,
        "separator": s.separator,
        "list_style": s.list_style,
        "context": {
            "max_model_len": mllm.max_model_len, "max_prompt_tokens": s.max_prompt_tokens,
            "item_max_tokens": s.item_max_tokens,
            "token_counting": "tokenizer" if stats["token_counting_exact"]
            else f"estimate ({s.chars_per_token} characters per token)",
        },
        "limits": {"limit_items": s.limit_items, "limit_users": s.limit_users},
        "shards": s.num_shards,
        "counts": {
            "items": int(len(image_df)),
            "image_status": image_counts,
            "items_text_only": text_only,
            "users": int(len(user_df)),
            "profile_status": {k: int(v) for k, v in user_df["status"].value_counts().items()},
            "users_truncated": int(sum(f.truncated for f in fitted.values())),
            "users_with_dropped_items": int(sum(f.n_dropped > 0 for f in fitted.values())),
            "items_dropped": int(sum(f.n_dropped for f in fitted.values())),
            "descriptions_capped": int(sum(f.n_capped for f in fitted.values())),
            "empty_outputs": int(empty),
            "empty_retried_this_run": int(stats["empty_retried"]),
            "refusals": dict(refusals),
        },
        "output_length": {
            kind: {"mean_tokens": mean(v, 0), "mean_words": mean(v, 1), "n": len(v)}
            for kind, v in lengths.items()
        },
        "this_run": {
            kind: {"generated": n_runs[kind], "tokens": toks[kind], "seconds": round(secs[kind], 2),
                   "gen_per_s": round(n_runs[kind] / secs[kind], 3) if secs[kind] else None,
                   "tok_per_s": round(toks[kind] / secs[kind], 1) if secs[kind] else None}
            for kind in ("image", "profile")
        },
        "n_failures": len(failures),
        "failures": failures[:200],
        "statuses": {"image": IMAGE_STATUSES, "profile": PROFILE_STATUSES},
    }


def _log_summary(summary: Mapping[str, Any]) -> None:
    c = summary["counts"]
    log.info("items: %s; %d keep their text only", c["image_status"], c["items_text_only"])
    log.info("users: %s; %d truncated to the context (%d with oldest items dropped, %d items dropped, "
             "%d descriptions capped)", c["profile_status"], c["users_truncated"],
             c["users_with_dropped_items"], c["items_dropped"], c["descriptions_capped"])
    log.info("output length: %s", summary["output_length"])
    log.info("this run: %s", summary["this_run"])
    if summary["n_failures"] or sum(c["refusals"].values()):
        log.warning("%d failures (%d empty outputs), refusals %s; see manifest.json",
                    summary["n_failures"], c["empty_outputs"], c["refusals"])
