"""LightningDataModule: dataset + (mllm, encoder) features + the refined item graph + BPR batches.

Feature sources, by dataset format and ``mllm``:

* ``format=mmrec``: the feature ``.npy`` files of the folder, used as they are.
* ``format=processed``, ``mllm=none``: item description = item text; user "profile" = the user's
  chronological training-item descriptions joined (an honest non-LLM baseline).
* ``format=processed``, ``mllm=<model>``: ``reasoning/<model>/item_descriptions.parquet`` and
  ``user_profiles.parquet`` written by ``python reason.py``.

Texts are embedded with the configured sentence-transformer and cached by content hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from mllmrec.data import (
    DatasetError,
    DatasetLayout,
    InteractionData,
    history_text,
    load_mmrec_dataset,
    load_processed_dataset,
    read_items,
)
from mllmrec.data.demo import ensure_demo_dataset
from mllmrec.train.batches import BPRTriplets, EpochSampler, UserBatches
from mllmrec.encoding import EncoderSpec, cached_encode
from mllmrec.graph import GraphBuildStatistics, build_refined_item_graph

log = logging.getLogger(__name__)

ITEM_TEXT_SOURCES = ("description", "text", "image_description")

__all__ = ["MLLMRecDataModule", "GraphConfig"]


# --------------------------------------------------------------------------- reasoning outputs
_EMPTY_PROFILE_FIXES = {
    "skipped_limit": "reason.py ran with reason.limit_users: rerun it without the limit",
    "failed": "rerun reason.py: it retries recorded failures (reason.retry_failed, on by default)",
    "no_history": "these users have no training interaction in the chosen history",
}


def _warn_empty_profiles(path: Path, users: pd.DataFrame, profiles: list[str]) -> None:
    """Say loudly when some users have no profile: they are encoded from an empty text, which
    silently turns a partial reasoning run (e.g. a ``reason.limit_users`` smoke test) into a poor
    user tower."""
    empty = np.array([not p.strip() for p in profiles], dtype=bool)
    if not empty.any():
        return
    statuses = users["status"].to_numpy()[empty] if "status" in users.columns else np.array(["empty"] * empty.sum())
    counts = pd.Series(statuses).value_counts()
    detail = "; ".join(
        f"{n} {status}" + (f" ({_EMPTY_PROFILE_FIXES[status]})" if status in _EMPTY_PROFILE_FIXES else "")
        for status, n in counts.items()
    )
    log.warning("%s: %d of %d users have an empty profile and are encoded from empty text: %s",
                path, int(empty.sum()), len(profiles), detail)


# --------------------------------------------------------------------------- the module
@dataclass
class GraphConfig:
    ks: int = 10
    alpha: float = 0.7
    kc: int = 10
    layers: int = 1


class MLLMRecDataModule(L.LightningDataModule):
    """Serves BPR triplets for training and user batches for full-ranking evaluation.

    After :meth:`setup`: ``data`` (:class:`InteractionData`), ``item_features`` [I, d_t] and
    ``user_features`` [U, d_t] (float32 tensors; ``user_features`` is None when the dataset has none),
    ``item_graph`` (sparse [I, I], the refined graph of Eq. 10, built from the training split) and
    ``graph_statistics`` (:class:`~mllmrec.graph.GraphBuildStatistics` of that build, read from the
    graph cache on a hit: describing the graph never rebuilds it).
    """

    def __init__(
        self,
        dataset: dict,
        mllm: dict,
        encoder: dict,
        graph: dict,
        batch_size: int = 2048,
        eval_batch_size: int = 4096,
        seed: int = 999,
        item_text_source: str = "description",
        profile_history: str = "train",
        exclude_valid_at_test: bool = False,
        use_user_features: bool = True,
    ) -> None:
        super().__init__()
        self.dataset_cfg = dict(dataset)
        self.mllm_cfg = dict(mllm)
        self.encoder_spec = EncoderSpec(
            model=encoder.get("model", "all-MiniLM-L6-v2"),
            max_seq_length=encoder.get("max_seq_length", 256),
            normalize=bool(encoder.get("normalize", False)),
            batch_size=int(encoder.get("batch_size", 64)),
            device=encoder.get("device"),
        )
        self.graph_cfg = GraphConfig(**{k: graph[k] for k in ("ks", "alpha", "kc", "layers")})
        if item_text_source not in ITEM_TEXT_SOURCES:
            raise ValueError(f"item_text_source must be one of {ITEM_TEXT_SOURCES}, got {item_text_source!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.item_text_source = item_text_source
        self.profile_history = profile_history
        self.exclude_valid_at_test = exclude_valid_at_test
        self.use_user_features = use_user_features
        self.data: InteractionData | None = None
        self.item_features: torch.Tensor | None = None
        self.user_features: torch.Tensor | None = None
        self.item_graph: torch.Tensor | None = None
        self.graph_statistics: GraphBuildStatistics | None = None

    # ----------------------------------------------------------------- loading
    @property
    def layout(self) -> DatasetLayout:
        return DatasetLayout(self.dataset_cfg["root"])

    def check_inputs(self) -> None:
        """Cheap checks of files and folders, before any heavy work."""
        cfg = self.dataset_cfg
        fmt = cfg.get("format", "processed")
        if self.item_text_source == "image_description" and (
            fmt == "mmrec" or self.mllm_cfg.get("name", "none") == "none"
        ):
            # without this check the item text would silently be used instead (the w/o T ablation
            # would quietly equal the full model)
            source = "dataset.format=mmrec serves fixed feature files" if fmt == "mmrec" else "mllm=none has none"
            raise DatasetError(
                "data.item_text_source=image_description (the 'w/o T' ablation) needs the MLLM's image "
                f"descriptions, but {source}. Produce them with `python reason.py "
                f"dataset={cfg['name']} mllm=<model>` and train with mllm=<model>."
            )
        if fmt == "mmrec":
            root = Path(cfg["root"])
            files = [root / f"{cfg['name']}.inter"] + [
                root / cfg[k] for k in ("item_features", "user_features") if cfg.get(k)
            ]
            for f in files:
                if not f.is_file():
                    raise DatasetError(
                        f"dataset=mmrec: {f} does not exist. Set dataset.root to the folder holding "
                        f"{cfg['name']}.inter and dataset.item_features/user_features to its feature "
                        "files (null to skip user features)."
                    )
            return
        if fmt != "processed":
            raise DatasetError(f"dataset.format must be 'processed' or 'mmrec', got {fmt!r}")
        if cfg.get("generate") == "demo":
            return
        if not self.layout.manifest.is_file():
            raise DatasetError(
                f"dataset={cfg['name']}: no processed dataset at {self.layout.processed}. "
                f"Create it with `python prepare.py dataset={cfg['name']}`."
            )
        self._reasoning_files()  # raises with the reason.py command when missing

    def _reasoning_files(self) -> tuple[Path, Path] | None:
        name = self.mllm_cfg.get("name", "none")
        if name == "none":
            return None
        folder = self.layout.reasoning(name, self.profile_history)
        items, users = folder / "item_descriptions.parquet", folder / "user_profiles.parquet"
        missing = [p for p in (items, users) if not p.is_file()]
        if missing:
            history = "" if self.profile_history == "train" else f" reason.history={self.profile_history}"
            raise DatasetError(
                f"mllm={name}: {', '.join(str(p) for p in missing)} missing. Produce them with "
                f"`python reason.py dataset={self.dataset_cfg['name']} mllm={name}{history}` "
                "(or train with mllm=none)."
            )
        return items, users

    def _load_data(self) -> InteractionData:
        cfg = self.dataset_cfg
        if cfg.get("format") == "mmrec":
            return load_mmrec_dataset(
                cfg["root"], cfg["name"], item_features=cfg.get("item_features"),
                user_features=cfg.get("user_features") if self.use_user_features else None,
            )
        if cfg.get("generate") == "demo":
            ensure_demo_dataset(
                cfg["root"], n_users=cfg.get("n_users", 600), n_items=cfg.get("n_items", 300),
                seed=cfg.get("generator_seed", 0), split_seed=cfg.get("split_seed", 999),
            )
        return load_processed_dataset(cfg["root"], name=cfg["name"])

    def item_and_user_texts(self, data: InteractionData) -> tuple[list[str], list[str]]:
        """Item descriptions [I] and user profiles [U] for the processed format."""
        files = self._reasoning_files()
        if files is None:
            items = read_items(self.layout.root, data.n_items)
            item_texts = items["text"].fillna("").astype(str).tolist()
            user_texts = [
                history_text([item_texts[i] for i in data.history(u)]) for u in range(data.n_users)
            ]
            return item_texts, user_texts
        items_path, users_path = files
        items = pd.read_parquet(items_path)
        users = pd.read_parquet(users_path)
        column = self.item_text_source
        for frame, path, col, n in ((items, items_path, column, data.n_items),
                                    (users, users_path, "profile", data.n_users)):
            if col not in frame.columns:
                raise DatasetError(f"{path}: column {col!r} missing; rerun reason.py to rebuild it.")
            id_col = "item_id" if col != "profile" else "user_id"
            if len(frame) != n or not np.array_equal(np.sort(frame[id_col].to_numpy()), np.arange(n)):
                raise DatasetError(
                    f"{path}: expected one row per id 0..{n - 1}, found {len(frame)} rows. It was made "
                    "for another version of the dataset: rerun reason.py."
                )
        item_texts = items.sort_values("item_id")[column].fillna("").astype(str).tolist()
        users = users.sort_values("user_id")
        user_texts = users["profile"].fillna("").astype(str).tolist()
        _warn_empty_profiles(users_path, users, user_texts)
        return item_texts, user_texts

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.check_inputs()
        data = self._load_data()
        log.info("%s", data.summary())
        if self.dataset_cfg.get("format") != "mmrec":
            item_texts, user_texts = self.item_and_user_texts(data)
            cache = self.layout.cache / "embeddings"
            data.item_features = cached_encode(item_texts, self.encoder_spec, cache, "items")
            if self.use_user_features:
                data.user_features = cached_encode(user_texts, self.encoder_spec, cache, "users")
        if data.item_features is None:
            raise DatasetError(
                f"dataset={self.dataset_cfg['name']}: no item features. Set dataset.item_features."
            )
        self.data = data
        self.item_features = torch.from_numpy(data.item_features)
        self.user_features = (
            torch.from_numpy(data.user_features) if data.user_features is not None else None
        )
        g = self.graph_cfg
        graph_cache = (
            self.layout.cache / "graphs" if self.dataset_cfg.get("format") != "mmrec"
            else Path(self.dataset_cfg["root"]) / ".mllmrec_cache" / "graphs"
        )
        built = build_refined_item_graph(self.item_features, data.train, g.ks, g.alpha, g.kc, graph_cache)
        self.item_graph, self.graph_statistics = built.graph, built.statistics
        self.triplets = BPRTriplets(data.train, self.batch_size, self.seed)
        self.train_sampler = EpochSampler(self.triplets)

    # ----------------------------------------------------------------- evaluation targets
    def eval_target(self, split: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(exclude, truth) of a split: training items are masked; at test time also validation
        items when ``exclude_valid_at_test`` (RecBole's choice; MMRec's, the default, does not)."""
        assert self.data is not None
        if split == "valid":
            return self.data.train, self.data.valid
        exclude = self.data.train + self.data.valid if self.exclude_valid_at_test else self.data.train
        return exclude.tocsr(), self.data.test

    def _eval_loader(self, split: str) -> DataLoader:
        _, truth = self.eval_target(split)
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        return DataLoader(UserBatches(users, self.eval_batch_size), batch_size=None, shuffle=False)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and negatives the training loader serves next."""
        self.train_sampler.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.triplets, batch_size=None, sampler=self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
