"""Top-K recommendations and exported representations of a trained run.

``python recommend.py run=<run dir> k=20 [users=U0001,U0002]`` and :func:`recommend` (also
``mllmrec.recommend``): for each user, the ``k`` highest-scoring items with rank, score, raw item id
and title, never an item of the user's training split (nor of the validation split unless
``exclude_valid=false``). Scores stream over user batches: at most ``[batch_size, I]`` exists at a
time, never users x items.

:func:`export_representations` writes the user ``[U, d]`` and item ``[I, d]`` vectors whose dot
products are the model's scores (``Recommender.representations``: MLLMRec, BPR, VBPR, LightGCN,
FREEDOM), with their raw ids, ready for an ANN index.

Raw ids: a processed dataset's ``users.parquet`` / ``items.parquet`` ``source_id`` (and item
``title``); an MMRec folder has none, so its ids are the contiguous ints of its ``.inter`` file and
there is no title.

**New items** (``new_items=<table>``, docs/cold_start.md): items that were not in the dataset, from a
table in the custom dataset's items schema (:mod:`mllmrec.prepare.new_items`), are described by the
run's MLLM (:mod:`mllmrec.reasoning.new_items`: Prompt 1 on their images, then text ⊕ image
description), encoded by the run's encoder, given semantic neighbours only among the trained items,
propagated and passed through the item tower (:mod:`mllmrec.train.new_items`). By default they are
ranked alone (each user's top-k among the new items: who is the audience of the new items);
``new_items_merge`` ranks them together with the catalogue (would they enter the user's top-k at
all). Output rows say ``new`` = True for them; they have no contiguous id (``item_idx`` is missing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from omegaconf import OmegaConf

from mllmrec.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["IdTables", "id_tables", "select_users", "top_k_items", "recommend", "export_representations",
           "write_table", "plan_new_items", "NewItemsPlan", "RECOMMENDATIONS_FILE", "EMBEDDINGS_DIR",
           "NEW_ITEM_DESCRIPTIONS_FILE", "NEW_ITEM_RECOMMENDATIONS_FILE", "USAGE"]

RECOMMENDATIONS_FILE = "recommendations.parquet"
EMBEDDINGS_DIR = "embeddings"
#: recommend.py's default output with new_items= (the catalogue's recommendations.parquet is kept)
NEW_ITEM_RECOMMENDATIONS_FILE = "new_item_recommendations.parquet"
#: written beside the recommendations when new items are scored: what each new item was encoded from
NEW_ITEM_DESCRIPTIONS_FILE = "new_item_descriptions.parquet"

USAGE = """usage: python recommend.py run=<run dir> [k=20] [users=<id,id,...> | users=<file, one id a line>]
                           [output=<file .parquet|.csv>] [exclude_valid=true] [export=<dir>]
                           [ckpt_path=<file>] [key=value ...] [allow_config_change=true]

       python recommend.py run=<run dir> new_items=<table .csv|.parquet> [new_items.merge=true]
                           [new_items.item=<col> new_items.title=<col> new_items.text=<col,col>
                            new_items.image=<col>] [reason.backend=fake ...] [k=20] [users=...]

For each user (all users by default; raw ids as in the dataset), the top-k items of the run's best
checkpoint, excluding the user's training items (and validation items unless exclude_valid=false).
Default output: <run dir>/recommendations.parquet (new_item_recommendations.parquet with
new_items=). export=<dir> also writes user_embeddings.npy,
item_embeddings.npy, users.parquet and items.parquet (row -> raw id) for an ANN index (with
new_items=, also new_item_embeddings.npy and new_items.parquet).

new_items=<table>: score items that were not in the dataset (an MLLMRec run only). The table has the
custom dataset's items schema (item id, title, text columns, image path or URL); its columns are the
run's dataset.item_columns or item_id/title/description/image, each set by new_items.<key>=<column>.
They are described by the run's MLLM (reason.<key>=<value> changes its reasoning settings, e.g.
reason.backend=fake), encoded, given semantic neighbours and scored. Ranked among the new items
alone, or with the catalogue when new_items.merge=true; the rows say new=True. The descriptions are
written to new_item_descriptions.parquet beside the output (docs/cold_start.md)."""


@dataclass(frozen=True)
class IdTables:
    """Raw ids by contiguous id: ``users`` [U], ``items`` [I], and item ``titles`` [I] or None."""

    users: np.ndarray
    items: np.ndarray
    titles: np.ndarray | None


def id_tables(datamodule) -> IdTables:
    """The raw user and item ids (and titles) of the datamodule's dataset."""
    from mllmrec.data import read_items

    data = datamodule.data
    if datamodule.is_mmrec:  # the .inter file's ids are already contiguous ints: no other ids exist
        return IdTables(np.arange(data.n_users), np.arange(data.n_items), None)
    items = read_items(datamodule.layout.root, data.n_items)
    users_path = datamodule.layout.users
    if users_path.is_file():
        users = pd.read_parquet(users_path).sort_values("user_id")
        if len(users) != data.n_users:
            raise ConfigError(f"{users_path}: {len(users)} users, the dataset has {data.n_users}. "
                              "Re-run `python prepare.py` for this dataset.")
        user_ids = users["source_id"].to_numpy()
    else:
        user_ids = np.arange(data.n_users)
    titles = items["title"].fillna("").astype(str).to_numpy() if "title" in items else None
    return IdTables(user_ids, items["source_id"].to_numpy(), titles)


def _read_user_list(users: str) -> list[str]:
    """``users=`` of the command line: a file (one id a line) or a comma-separated list."""
    path = Path(users)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [u.strip() for u in users.split(",") if u.strip()]


def select_users(ids: IdTables, users: Iterable[Any] | str | None) -> np.ndarray:
    """Contiguous ids [n] of ``users`` given by raw id (all users when None), in the order given.

    Raw ids are matched as strings, so ``users=[17]`` and ``users="17"`` name the same user of an
    MMRec folder. Unknown ids are an error listing (up to ten of) them.
    """
    if users is None:
        return np.arange(len(ids.users))
    wanted = _read_user_list(users) if isinstance(users, str) else [str(u) for u in users]
    if not wanted:
        raise ConfigError("users=: no user ids given")
    index = {str(raw): i for i, raw in enumerate(ids.users)}
    unknown = [u for u in wanted if u not in index]
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ConfigError(f"users=: {len(unknown)} unknown user id(s): {shown}. Ids are the dataset's raw "
                          f"user ids (e.g. {ids.users[0]!s}).")
    return np.array([index[u] for u in wanted], dtype=np.int64)


def top_k_items(score_fn, users: np.ndarray, exclude: sp.csr_matrix, k: int,
                batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items of each user by ``score_fn``, excluded items never among them.

    ``score_fn(users [B]) -> [B, I]``; excluded entries are set to ``-inf`` before ``topk``. A user
    with fewer than ``k`` allowed items gets ``-inf`` scores (item id -1) in the remaining places.

    Shapes: users [n] -> items [n, k] int64, scores [n, k] float32.
    """
    n_items = exclude.shape[1]
    k_eff = min(k, n_items)
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        with torch.no_grad():
            block = score_fn(torch.as_tensor(batch)).float()
        if block._base is not None or block.requires_grad:  # never write into a stored matrix
            block = block.clone()
        rows = exclude[batch]
        row_index = np.repeat(np.arange(len(batch)), np.diff(rows.indptr))
        block[torch.as_tensor(row_index), torch.as_tensor(rows.indices.astype(np.int64))] = -torch.inf
        values, index = torch.topk(block, k_eff, dim=1)
        values, index = values.cpu().numpy(), index.cpu().numpy()
        index[~np.isfinite(values)] = -1
        items[start : start + len(batch), :k_eff] = index
        scores[start : start + len(batch), :k_eff] = values
    return items, scores


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` atomically as parquet or CSV, chosen by ``path``'s extension."""
    from mllmrec.cache import atomic_path

    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"output={path}: the file name must end in .parquet or .csv")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def _scorer(model):
    """``model.full_scores`` after its once-per-pass preparation (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
    return model.full_scores


def export_representations(model, ids: IdTables, out_dir: str | Path) -> dict[str, Path]:
    """Write ``user_embeddings.npy`` [U, d], ``item_embeddings.npy`` [I, d] (float32; row = contiguous
    id) and ``users.parquet`` / ``items.parquet`` (``row``, raw id, item ``title``) into ``out_dir``.
    A user's score for an item is the dot product of the two rows."""
    from mllmrec.cache import atomic_save_npy

    _scorer(model)
    try:
        with torch.no_grad():
            user_repr, item_repr = model.representations()
    except NotImplementedError as err:
        raise ConfigError(f"export: {err}. Top-K recommendations still work (recommend.py without export=).") from None
    out = Path(out_dir)
    paths = {"user_embeddings": out / "user_embeddings.npy", "item_embeddings": out / "item_embeddings.npy",
             "users": out / "users.parquet", "items": out / "items.parquet"}
    atomic_save_npy(paths["user_embeddings"], user_repr.detach().float().cpu().numpy())
    atomic_save_npy(paths["item_embeddings"], item_repr.detach().float().cpu().numpy())
    write_table(pd.DataFrame({"row": np.arange(len(ids.users)), "user": ids.users}), paths["users"])
    items = pd.DataFrame({"row": np.arange(len(ids.items)), "item": ids.items})
    if ids.titles is not None:
        items["title"] = ids.titles
    write_table(items, paths["items"])
    log.info("representations (%d users x %d, %d items x %d) written to %s", user_repr.shape[0],
             user_repr.shape[1], item_repr.shape[0], item_repr.shape[1], out)
    return paths


@dataclass(frozen=True)
class NewItemsPlan:
    """A checked new-items request: the table's items, the reasoning config that describes them (None
    for an ``mllm=none`` run: the item text is the description) and where URLs are downloaded."""

    items: Any  # mllmrec.prepare.new_items.NewItems
    reason_cfg: Any  # DictConfig | None
    download_dir: Path


def plan_new_items(run_dir: Path, cfg, table: str | Path, columns: Mapping[str, Any] | None,
                   reason_overrides: Sequence[str]) -> NewItemsPlan:
    """Check a new-items request against the run's config before anything heavy: the model can
    score new items, the table reads and its ids are new, the reasoning settings are valid."""
    from mllmrec.data import read_items
    from mllmrec.prepare.new_items import new_item_columns, read_new_items
    from mllmrec.train.new_items import check_new_item_scoring

    check_new_item_scoring(cfg)
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    catalogue = read_items(dataset["root"])["source_id"].astype(str).to_numpy()
    items = read_new_items(table, new_item_columns(dataset, columns or {}), catalogue)
    reason_cfg = None
    if str(cfg.mllm.name) != "none":
        from mllmrec.reasoning.settings import ReasonSettings
        from mllmrec.reasoning.stage import reason_config_for_run
        from mllmrec.train.restore import project_root

        reason_cfg = reason_config_for_run(cfg, reason_overrides, project_root() / "conf")
        ReasonSettings.from_config(reason_cfg)  # every reason.* / mllm.* check, before loading
    elif reason_overrides:
        log.warning("the run has mllm=none (no MLLM): %s ignored; new items are encoded from their text",
                    " ".join(reason_overrides))
    return NewItemsPlan(items, reason_cfg, run_dir / "new_items")


def _describe_new_items(plan: NewItemsPlan, backend=None):
    """The new items' descriptions: the run's MLLM on their images, or their text for mllm=none."""
    from mllmrec.reasoning.new_items import NewItemDescriptions, describe_new_items

    items = plan.items
    if plan.reason_cfg is None:
        n = len(items)
        return NewItemDescriptions(list(items.texts), [""] * n, ["no_mllm"] * n, [None] * n, list(items.texts))
    return describe_new_items(plan.reason_cfg, items.texts, items.images, plan.download_dir, backend)


def _descriptions_table(plan: NewItemsPlan, described) -> pd.DataFrame:
    items = plan.items
    return pd.DataFrame({
        "item": items.ids, "title": [t or "" for t in items.titles], "image": items.images,
        "image_status": described.image_status, "image_error": described.image_error,
        "text": described.text, "image_description": described.image_description,
        "description": described.description,
    })


def recommend(run_dir: str | Path | None = None, users: Sequence[Any] | str | None = None, k: int = 20, *,
              ckpt_path: str | Path | None = None, exclude_valid: bool = True, output: str | Path | None = None,
              export: str | Path | None = None, batch_size: int = 1024, overrides: Sequence[str] = (),
              allow_config_change: bool = False, new_items: str | Path | None = None,
              new_items_merge: bool = False, new_item_columns: Mapping[str, Any] | None = None,
              reason_overrides: Sequence[str] = (), backend=None) -> pd.DataFrame:
    """Top-``k`` items for ``users`` (raw ids; all users when None) from a trained run.

    Returns a long table, one row per (user, rank): ``user`` (raw id), ``rank`` (1 = best), ``item``
    (raw id), ``score``, ``title`` (processed datasets), ``user_idx`` / ``item_idx`` (contiguous ids).
    The user's training items are never recommended, nor validation items when ``exclude_valid``.
    ``output`` (``.parquet`` / ``.csv``) writes the table; ``export`` a folder of representations
    (:func:`export_representations`). The checkpoint and config follow ``evaluate.py``'s rules
    (:func:`mllmrec.train.restore.restore_run`).

    ``new_items``: a table of items not in the dataset (module docstring), ranked alone or, with
    ``new_items_merge``, together with the catalogue; the table gets a ``new`` column and their
    ``item_idx`` is missing (<NA>). ``new_item_columns`` (``item``, ``title``, ``text``, ``image``)
    names the table's columns; ``reason_overrides`` (``reason.<key>=<value>``) change the reasoning
    settings that describe them; ``backend`` replaces the reasoning backend (tests, notebooks). Their
    descriptions are in ``frame.attrs["new_item_descriptions"]`` and, with ``output``, in
    ``new_item_descriptions.parquet`` beside it.
    """
    from mllmrec.train.restore import load_run_config, resolve_run, restore_run

    if int(k) < 1:
        raise ConfigError(f"k={k}: must be an integer >= 1")
    if output is not None and Path(output).suffix not in (".parquet", ".csv"):
        raise ConfigError(f"output={output}: the file name must end in .parquet or .csv")
    plan = None
    if new_items is not None:
        found_dir, _ = resolve_run(run_dir, ckpt_path)
        plan = plan_new_items(found_dir, load_run_config(found_dir, overrides), new_items, new_item_columns,
                              reason_overrides)
    elif new_items_merge or new_item_columns:
        raise ConfigError("new_items.merge / new_items.<column> need new_items=<table of new items>")
    restored = restore_run(run_dir, ckpt_path, overrides, allow_config_change)
    data, model = restored.datamodule.data, restored.model
    ids = id_tables(restored.datamodule)
    chosen = select_users(ids, users)
    exclude = (data.train + data.valid).tocsr() if exclude_valid else data.train.tocsr()
    score_fn = _scorer(model)
    described = None
    if plan is not None:
        from mllmrec.train.new_items import new_item_vectors

        described = _describe_new_items(plan, backend)
        h_new = new_item_vectors(restored.datamodule, model, described.item_texts(restored.datamodule.item_text_source))
        score_fn, exclude = _with_new_items(model, score_fn, exclude, h_new, new_items_merge)
    items, scores = top_k_items(score_fn, chosen, exclude, int(k), batch_size)
    frame = _rows(ids, chosen, items, scores, plan.items if plan is not None else None,
                  data.n_items if new_items_merge else 0)
    if output is not None:
        write_table(frame, output)
        log.info("top-%d items of %d users written to %s", k, len(chosen), output)
    if plan is not None:
        table = _descriptions_table(plan, described)
        frame.attrs["new_item_descriptions"] = table
        if output is not None:
            write_table(table, Path(output).parent / NEW_ITEM_DESCRIPTIONS_FILE)
    if export is not None:
        export_representations(model, ids, export)
        if plan is not None:
            _export_new_items(h_new, plan, export)
    return frame


def _export_new_items(h_new: torch.Tensor, plan: NewItemsPlan, out_dir: str | Path) -> None:
    """``new_item_embeddings.npy`` [N, d] (a user's score for new item n = user row · row n) and
    ``new_items.parquet`` (row -> raw id, title) beside the exported representations."""
    from mllmrec.cache import atomic_save_npy

    out = Path(out_dir)
    atomic_save_npy(out / "new_item_embeddings.npy", h_new.detach().float().cpu().numpy())
    write_table(pd.DataFrame({"row": np.arange(len(plan.items)), "item": plan.items.ids,
                              "title": [t or "" for t in plan.items.titles]}), out / "new_items.parquet")


def _with_new_items(model, score_fn, exclude: sp.csr_matrix, h_new: torch.Tensor, merge: bool):
    """The score function and exclusion matrix over the new items alone ``[B, N]``, or over the
    catalogue followed by the new items ``[B, I + N]`` (nobody has a new item: nothing to exclude)."""
    n_new = h_new.shape[0]

    def new_scores(users: torch.Tensor) -> torch.Tensor:
        return model.user_repr(users.to(h_new.device)) @ h_new.T

    none_seen = sp.csr_matrix((exclude.shape[0], n_new), dtype=exclude.dtype)
    if not merge:
        return new_scores, none_seen

    def merged_scores(users: torch.Tensor) -> torch.Tensor:
        return torch.cat([score_fn(users), new_scores(users)], dim=1)

    return merged_scores, sp.hstack([exclude, none_seen], format="csr")


def _rows(ids: IdTables, chosen: np.ndarray, items: np.ndarray, scores: np.ndarray, new_items,
          n_catalogue: int) -> pd.DataFrame:
    """The long table of :func:`recommend` from top-k positions ``items`` [n, k] (-1 = none). With
    ``new_items``, a position ``p >= n_catalogue`` is new item ``p - n_catalogue``."""
    keep = items >= 0
    user_idx = np.repeat(chosen, keep.sum(axis=1))
    position = items[keep]
    frame = pd.DataFrame({
        "user": ids.users[user_idx],
        "rank": np.nonzero(keep)[1] + 1,
    })
    if new_items is None:
        frame["item"] = ids.items[position]
        frame["score"] = scores[keep]
        if ids.titles is not None:
            frame["title"] = ids.titles[position]
        frame["user_idx"] = user_idx
        frame["item_idx"] = position
        return frame
    is_new = position >= n_catalogue
    new_row = position - n_catalogue
    titles = ids.titles if ids.titles is not None else np.full(n_catalogue, "", dtype=object)
    new_titles = np.array([t or "" for t in new_items.titles], dtype=object)
    frame["item"] = np.where(is_new, new_items.ids[np.where(is_new, new_row, 0)],
                             ids.items.astype(object)[np.where(is_new, 0, position)] if n_catalogue else None)
    frame["score"] = scores[keep]
    frame["title"] = np.where(is_new, new_titles[np.where(is_new, new_row, 0)],
                              titles[np.where(is_new, 0, position)] if n_catalogue else None)
    frame["new"] = is_new
    frame["user_idx"] = user_idx
    frame["item_idx"] = pd.array(np.where(is_new, 0, position), dtype="Int64")
    frame.loc[is_new, "item_idx"] = pd.NA
    return frame
