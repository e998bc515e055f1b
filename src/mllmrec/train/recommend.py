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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mllmrec.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["IdTables", "id_tables", "select_users", "top_k_items", "recommend", "export_representations",
           "write_table", "RECOMMENDATIONS_FILE", "EMBEDDINGS_DIR", "USAGE"]

RECOMMENDATIONS_FILE = "recommendations.parquet"
EMBEDDINGS_DIR = "embeddings"

USAGE = """usage: python recommend.py run=<run dir> [k=20] [users=<id,id,...> | users=<file, one id a line>]
                           [output=<file .parquet|.csv>] [exclude_valid=true] [export=<dir>]
                           [ckpt_path=<file>] [key=value ...] [allow_config_change=true]

For each user (all users by default; raw ids as in the dataset), the top-k items of the run's best
checkpoint, excluding the user's training items (and validation items unless exclude_valid=false).
Default output: <run dir>/recommendations.parquet. export=<dir> also writes user_embeddings.npy,
item_embeddings.npy, users.parquet and items.parquet (row -> raw id) for an ANN index."""


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


def recommend(run_dir: str | Path | None = None, users: Sequence[Any] | str | None = None, k: int = 20, *,
              ckpt_path: str | Path | None = None, exclude_valid: bool = True, output: str | Path | None = None,
              export: str | Path | None = None, batch_size: int = 1024, overrides: Sequence[str] = (),
              allow_config_change: bool = False) -> pd.DataFrame:
    """Top-``k`` items for ``users`` (raw ids; all users when None) from a trained run.

    Returns a long table, one row per (user, rank): ``user`` (raw id), ``rank`` (1 = best), ``item``
    (raw id), ``score``, ``title`` (processed datasets), ``user_idx`` / ``item_idx`` (contiguous ids).
    The user's training items are never recommended, nor validation items when ``exclude_valid``.
    ``output`` (``.parquet`` / ``.csv``) writes the table; ``export`` a folder of representations
    (:func:`export_representations`). The checkpoint and config follow ``evaluate.py``'s rules
    (:func:`mllmrec.train.restore.restore_run`).
    """
    from mllmrec.train.restore import restore_run

    if int(k) < 1:
        raise ConfigError(f"k={k}: must be an integer >= 1")
    if output is not None and Path(output).suffix not in (".parquet", ".csv"):
        raise ConfigError(f"output={output}: the file name must end in .parquet or .csv")
    restored = restore_run(run_dir, ckpt_path, overrides, allow_config_change)
    data, model = restored.datamodule.data, restored.model
    ids = id_tables(restored.datamodule)
    chosen = select_users(ids, users)
    exclude = (data.train + data.valid).tocsr() if exclude_valid else data.train.tocsr()
    items, scores = top_k_items(_scorer(model), chosen, exclude, int(k), batch_size)
    keep = items >= 0
    user_idx = np.repeat(chosen, keep.sum(axis=1))
    item_idx = items[keep]
    frame = pd.DataFrame({
        "user": ids.users[user_idx],
        "rank": np.nonzero(keep)[1] + 1,
        "item": ids.items[item_idx],
        "score": scores[keep],
        "user_idx": user_idx,
        "item_idx": item_idx,
    })
    if ids.titles is not None:
        frame.insert(4, "title", ids.titles[item_idx])
    if output is not None:
        write_table(frame, output)
        log.info("top-%d items of %d users written to %s", k, len(chosen), output)
    if export is not None:
        export_representations(model, ids, export)
    return frame
