"""LightningDataModule: dataset + (mllm, encoder) features + the refined item graph + BPR batches.

Feature sources, by dataset format and ``mllm``:

* ``format=mmrec``: the feature ``.npy`` files of the folder, used as they are.
* ``format=processed``, ``mllm=none``: item description = item text; user "profile" = the user's
  chronological training-item descriptions joined (an honest non-LLM baseline).
* ``format=processed``, ``mllm=<model>``: the item descriptions and user profiles written by
  ``python reason.py`` for ``reason.history``, read through :mod:`mllmrec.reasoning.outputs`.

Texts are embedded with the configured sentence-transformer and cached by content hash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from mllmrec.data import DatasetError, DatasetLayout, InteractionData, history_text, read_items
from mllmrec.data.checks import check_feature_rows, check_loaded_dataset, check_texts
from mllmrec.data.cold_start import ColdStartSplit, hold_out_cold_items
from mllmrec.data.modalities import MLLM_MODALITY, check_modalities, modality_files
from mllmrec.data.open import check_dataset, open_dataset
from mllmrec.data.validation import load_feature_matrix
from mllmrec.encoding import EncoderSpec, cached_encode
from mllmrec.errors import ConfigError
from mllmrec.graph import GraphBuildStatistics, GraphSpec, build_refined_item_graph
from mllmrec.reasoning.outputs import (
    ITEM_TABLE,
    ITEM_TEXT_SOURCES,
    USER_TABLE,
    check_history,
    read_reasoning_outputs,
    require_outputs,
)
from mllmrec.train.batches import BPRTriplets, EpochSampler, UserBatches

log = logging.getLogger(__name__)

__all__ = ["MLLMRecDataModule", "ITEM_TEXT_SOURCES", "EVAL_SCORE_BYTES", "eval_users_per_batch"]

#: Bound on one evaluation batch's float32 score matrix [users, items]: the model's scores, masked in
#: place, then one top-K. 4096 users x 1M items would be 16 GB; this caps the batch at 512 MiB (131
#: users at 1M items). Below ~32k items the configured eval_batch_size (4096) is never reduced.
EVAL_SCORE_BYTES = 512 * 2**20


def eval_users_per_batch(eval_batch_size: int, n_items: int) -> int:
    """Users per evaluation batch: ``eval_batch_size``, reduced so that ``users * I * 4`` bytes stay
    within :data:`EVAL_SCORE_BYTES` (at least one user).

    Per-user metrics do not depend on which users share a batch, so this changes memory, not results.
    """
    return max(1, min(eval_batch_size, EVAL_SCORE_BYTES // (4 * max(n_items, 1))))


def _check_valid_users(value: Any) -> int | None:
    """``data.valid_users``: None (every user) or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"data.valid_users must be a positive integer (the number of users validation "
                          f"ranks, a fixed seeded sample) or null (every user), got {value!r}")
    return int(value)


def sample_validation_users(truth: sp.csr_matrix, size: int | None, seed: int) -> np.ndarray:
    """Sorted ids of the users validation ranks: ``size`` of the users with a validation item, drawn
    without replacement by ``numpy.random.default_rng(seed)`` (all of them when ``size`` is None or
    at least their number). Depends only on the validation split, ``size`` and ``seed``: the same
    users in every epoch and in every run of the same data.

    Shapes: truth ``[U, I]`` -> ``[min(size, users with truth)]`` int64.
    """
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    if size is None or size >= users.size:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=size, replace=False))


# --------------------------------------------------------------------------- the module
class MLLMRecDataModule(L.LightningDataModule):
    """Serves BPR triplets for training and user batches for full-ranking evaluation, and builds the
    model inputs a model asks for, when it asks for them.

    After :meth:`setup`: ``data`` (:class:`InteractionData`). On first access (so that a model which
    does not read them, e.g. BPR, does not pay for encoding or the graph build):

    * ``item_features`` [I, d_t] float32: the feature file (MMRec format) or the encoded item
      descriptions;
    * ``user_features`` [U, d_t] float32, or None: the feature file or the encoded user profiles
      (None when ``use_user_features`` is off or an MMRec folder has none);
    * ``item_graph``: sparse [I, I], the refined graph of Eq. 10 built from the training split, with
      ``graph_statistics`` (what the build kept and pruned) beside it.
    """

    def __init__(
        self,
        dataset: Mapping[str, Any],
        mllm: str,
        encoder: EncoderSpec,
        graph: GraphSpec,
        history: str = "train",
        batch_size: int = 2048,
        eval_batch_size: int = 4096,
        seed: int = 999,
        item_text_source: str = "description",
        exclude_valid_at_test: bool = False,
        use_user_features: bool = True,
        cache_dir: str | None = None,
        cold_start_items: float = 0.0,
        cold_start_seed: int = 999,
        negative_items: str = "all",
        valid_users: int | None = None,
        valid_users_seed: int = 999,
    ) -> None:
        super().__init__()
        if item_text_source not in ITEM_TEXT_SOURCES:
            raise ConfigError(f"data.item_text_source must be one of {ITEM_TEXT_SOURCES}, got {item_text_source!r}")
        self.dataset_cfg = dict(dataset)
        self.mllm = mllm
        self.encoder_spec = encoder
        self.graph_spec = graph
        self.history = check_history(history)  # reason.history: which reasoning outputs to read
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.item_text_source = item_text_source
        self.exclude_valid_at_test = exclude_valid_at_test
        self.use_user_features = use_user_features
        # derived artefacts (embeddings, graphs) go here, never into the (possibly read-only) inputs
        self._cache_dir = Path(cache_dir) if cache_dir else None
        if not 0.0 <= float(cold_start_items) < 1.0:
            raise ConfigError(f"data.cold_start_items must be in [0, 1) (the share of items held out of "
                              f"training; 0 = off), got {cold_start_items}")
        self.cold_start_items = float(cold_start_items)
        self.cold_start_seed = int(cold_start_seed)
        self.cold_split: ColdStartSplit | None = None  # set by setup() when cold_start_items > 0
        self.negative_items = negative_items  # all | train (MMRec: only items seen in training)
        self.valid_users = _check_valid_users(valid_users)
        self.valid_users_seed = int(valid_users_seed)
        self._valid_sample: np.ndarray | None = None
        self.data: InteractionData | None = None
        self._texts: tuple[list[str], list[str]] | None = None
        self._item_features: torch.Tensor | None = None
        self._user_features: torch.Tensor | None = None
        self._user_features_ready = False
        self._item_graph: torch.Tensor | None = None
        self.graph_statistics: GraphBuildStatistics | None = None  # set with the graph
        self._origins: dict[str, str] = {}  # item/user feature sources, as messages name them
        self._modalities: dict[str, torch.Tensor] = {}  # item modalities loaded so far, by name

    # ----------------------------------------------------------------- loading
    @property
    def is_mmrec(self) -> bool:
        return self.dataset_cfg.get("format", "processed") == "mmrec"

    @property
    def layout(self) -> DatasetLayout:
        return DatasetLayout(self.dataset_cfg["root"])

    @property
    def cache_dir(self) -> Path:
        """Where derived artefacts (embeddings, graphs) of this dataset are cached: ``data.cache_dir``
        (``paths.cache_dir``/<dataset>); without one, a processed dataset's own cache folder, and for an
        MMRec folder (an input, never written) a per-user folder."""
        if self._cache_dir is not None:
            return self._cache_dir
        if self.is_mmrec:
            return Path.home() / ".cache" / "mllmrec" / str(self.dataset_cfg["name"])
        return self.layout.cache

    def _input_names(self) -> tuple[str, dict[str, str]]:
        """The interaction file and the item/user feature (or text) sources, as messages name them."""
        cfg = self.dataset_cfg
        if self.is_mmrec:
            root = Path(cfg["root"])
            return str(root / f"{cfg['name']}.inter"), {
                k: str(root / cfg[f"{k}_features"]) for k in ("item", "user") if cfg.get(f"{k}_features")}
        folder = self._reasoning_files()
        if folder is None:
            return str(self.layout.interactions), {
                "item": str(self.layout.items), "user": f"{self.layout.items} (histories)"}
        return str(self.layout.interactions), {"item": str(folder / ITEM_TABLE), "user": str(folder / USER_TABLE)}

    def check_inputs(self) -> None:
        """Cheap checks of files and folders, before any heavy work."""
        if self.item_text_source == "image_description" and (self.is_mmrec or self.mllm == "none"):
            # without this check the item text would silently be used instead (the w/o T ablation
            # would quietly equal the full model)
            source = "dataset.format=mmrec serves fixed feature files" if self.is_mmrec else "mllm=none has none"
            raise DatasetError(
                "data.item_text_source=image_description (the 'w/o T' ablation) needs the MLLM's image "
                f"descriptions, but {source}. Produce them with `python reason.py "
                f"dataset={self.dataset_cfg['name']} mllm=<model>` and train with mllm=<model>."
            )
        if self.cold_start_items > 0 and self.use_user_features and (self.is_mmrec or self.mllm != "none"):
            # profiles made before the cold split know the held-out items: a cold-start number with
            # them would be leaked, not measured
            source = "the MMRec folder's user feature file" if self.is_mmrec else f"the mllm={self.mllm} profiles"
            raise DatasetError(
                f"data.cold_start_items={self.cold_start_items}: {source} were built from every training "
                "interaction, the held-out items' included. Set data.use_user_features=false (a trainable "
                "user table), or use mllm=none (profiles rebuilt from the cold split's training history)."
            )
        check_dataset(self.dataset_cfg, user_features=self.use_user_features)
        if not self.is_mmrec and not self.dataset_cfg.get("generate"):
            self._reasoning_files()  # raises with the reason.py command when missing

    # ---- reasoning outputs: read through mllmrec.reasoning.outputs (the reason -> train contract)
    def _reasoning_files(self) -> Path | None:
        """The output folder of ``mllm`` for ``reason.history`` (None for mllm=none), after checking
        its tables exist (else the error names the ``reason.py`` command)."""
        if self.mllm == "none":
            return None
        return require_outputs(self.layout, self.dataset_cfg["name"], self.mllm, self.history)

    def item_and_user_texts(self, data: InteractionData) -> tuple[list[str], list[str]]:
        """Item descriptions [I] and user profiles [U] for the processed format."""
        if self.mllm == "none":
            items = read_items(self.layout.root, data.n_items)
            item_texts = items["text"].fillna("").astype(str).tolist()
            user_texts = [
                history_text([item_texts[i] for i in data.history(u)]) for u in range(data.n_users)
            ]
            return item_texts, user_texts
        texts = read_reasoning_outputs(self.layout, self.dataset_cfg["name"], self.mllm, self.history,
                                       data.n_items, data.n_users, self.item_text_source)
        return texts.item_texts, texts.user_profiles

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.check_inputs()
        data = open_dataset(self.dataset_cfg, user_features=self.use_user_features)
        log.info("%s", data.summary())
        # start-up data checks: split overlap and degenerate feature files, before any heavy work
        origin, self._origins = self._input_names()
        check_loaded_dataset(data, origin, self._origins, self.exclude_valid_at_test)
        if self.cold_start_items > 0:  # moves training rows to valid/test only: no overlap is created
            self.cold_split = hold_out_cold_items(data, self.cold_start_items, self.cold_start_seed)
            data = self.cold_split.data
            log.info("%s", data.summary())
        self.data = data
        self.triplets = BPRTriplets(self.data.train, self.batch_size, self.seed, self.negative_items)
        self.train_sampler = EpochSampler(self.triplets)

    # ----------------------------------------------------------------- model inputs, on demand
    def _require_setup(self) -> InteractionData:
        if self.data is None:
            raise RuntimeError("call setup() first: the datamodule has not loaded its dataset")
        return self.data

    def _encoded(self, which: str) -> np.ndarray:
        """Encode the item descriptions or user profiles (processed format), cached by content."""
        data = self._require_setup()
        if self._texts is None:
            self._texts = self.item_and_user_texts(data)
            # the dataset=custom cause (no items table, empty columns) first, then the general check
            self._require_distinct_item_texts(self._texts[0])
            check_texts(self._texts[0], "item", self._origins["item"])
        texts = self._texts[0] if which == "items" else self._texts[1]
        features = cached_encode(texts, self.encoder_spec, self.cache_dir / "embeddings", which)
        what = which[:-1]  # items -> item
        check_feature_rows(features, what, f"{self._origins[what]} (encoded)")
        return features

    def _require_distinct_item_texts(self, texts: list[str]) -> None:
        """A model that reads item content must not train on one text shared by every item (the same
        features for all items score below popularity, silently). The error names what is missing:
        for a ``dataset=custom`` folder, the items table or its empty columns (from the manifest).
        All-empty texts of other datasets are left to :func:`mllmrec.data.checks.check_texts`."""
        if len(texts) < 2 or len(set(texts)) > 1:
            return
        name = self.dataset_cfg["name"]
        manifest = self.data.extras.get("manifest", {}) if self.data is not None else {}
        report = manifest.get("items") or {}
        if "table" in report and report["table"] is None:
            cause = (f"it was prepared without an items table. Re-run `python prepare.py dataset={name} "
                     "dataset.interactions=... dataset.items=<items table>` with title/text columns")
        elif report.get("empty_columns"):
            cause = (f"the items table's columns {report['empty_columns']} are empty. Fill them, or point "
                     "dataset.item_columns.title/.text at columns that hold text, and re-run prepare.py")
        elif not texts[0].strip():
            return  # all empty, no dataset=custom cause to add: data.checks.check_texts says so
        else:
            cause = "fill the items' title or description (items.parquet) and re-run prepare.py"
        raise DatasetError(
            f"dataset={name}: every item's text is {texts[0]!r}, so a model that reads item content "
            f"(MLLMRec, VBPR) would see the same features for every item: {cause}. "
            "ID-only models (model=bpr, model=lightgcn) train without item text."
        )

    @property
    def item_features(self) -> torch.Tensor:
        """[I, d_t] float32: the dataset's item feature file, or the encoded item descriptions."""
        if self._item_features is None:
            data = self._require_setup()
            if not self.is_mmrec:
                data.item_features = self._encoded("items")
            if data.item_features is None:
                raise DatasetError(
                    f"dataset={self.dataset_cfg['name']}: this model reads item features, and the "
                    "dataset has none. Set dataset.item_features to the folder's feature file."
                )
            self._item_features = torch.from_numpy(data.item_features)
        return self._item_features

    @property
    def user_features(self) -> torch.Tensor | None:
        """[U, d_t] float32 or None: the dataset's user feature file, or the encoded profiles."""
        if not self._user_features_ready:
            data = self._require_setup()
            if self.use_user_features and not self.is_mmrec:
                data.user_features = self._encoded("users")
            features = data.user_features if self.use_user_features else None
            self._user_features = torch.from_numpy(features) if features is not None else None
            self._user_features_ready = True
        return self._user_features

    @property
    def has_item_graph(self) -> bool:
        """Whether the refined graph was built (or read from its cache) in this run."""
        return self._item_graph is not None

    @property
    def item_graph(self) -> torch.Tensor:
        """Sparse [I, I]: the refined item graph (Eq. 10) of ``graph``'s settings, training split only."""
        if self._item_graph is None:
            data = self._require_setup()
            spec = self.graph_spec
            built = build_refined_item_graph(
                self.item_features, data.train, spec.ks, spec.alpha, spec.kc, self.cache_dir / "graphs",
                knn_method=spec.knn, ann_params=spec.ann,
            )
            self._item_graph, self.graph_statistics = built.graph, built.statistics
        return self._item_graph

    # ----------------------------------------------------------------- item modalities (issue 17)
    # Kept in one block: named per-modality item features, loaded only when a model asks for them.
    def check_modalities(self, names: tuple[str, ...], model: str) -> None:
        """Start-up check (files only) that every modality in ``names`` can be served."""
        check_modalities(self.dataset_cfg, names, model)

    def item_modalities(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``{name: [I, d_name] float32}`` for ``names``, each loaded (or encoded) once.

        ``mllm`` is :attr:`item_features` (MLLMRec's ``E_I``); a processed dataset's ``text`` is its
        encoded item text (``items.parquet``'s ``text`` column, whatever the mllm); every other
        modality is the file ``dataset.modalities.<name>`` maps it to.
        """
        data = self._require_setup()
        for name in names:
            if name in self._modalities:
                continue
            if name == MLLM_MODALITY and not (self.is_mmrec and name in (self.dataset_cfg.get("modalities") or {})):
                self._modalities[name] = self.item_features
            elif name == "text" and not self.is_mmrec and name not in modality_files(self.dataset_cfg):
                texts = read_items(self.layout.root, data.n_items)["text"].fillna("").astype(str).tolist()
                self._modalities[name] = torch.from_numpy(
                    cached_encode(texts, self.encoder_spec, self.cache_dir / "embeddings", "item_text"))
            else:
                self.check_modalities((name,), "this model")
                path = modality_files(self.dataset_cfg)[name]
                self._modalities[name] = torch.from_numpy(load_feature_matrix(path, data.n_items, f"item {name}"))
        return {name: self._modalities[name] for name in names}

    # ----------------------------------------------------------------- evaluation targets
    @property
    def validation_users(self) -> np.ndarray:
        """Sorted ids of the users validation ranks (:func:`sample_validation_users` with
        ``data.valid_users`` and ``data.valid_users_seed``), drawn once per run."""
        if self._valid_sample is None:
            data = self._require_setup()
            self._valid_sample = sample_validation_users(data.valid, self.valid_users, self.valid_users_seed)
            if self.valid_users is not None:
                total = int((np.diff(data.valid.indptr) > 0).sum())
                log.info("validating on %d of the %d users with a validation item (data.valid_users=%d, "
                         "seed %d); the test split ranks every user", self._valid_sample.size, total,
                         self.valid_users, self.valid_users_seed)
        return self._valid_sample

    def validation_summary(self) -> dict[str, Any]:
        """metrics.json's ``validation`` block: which users the validation metrics average over."""
        data = self._require_setup()
        total = int((np.diff(data.valid.indptr) > 0).sum())
        users = int(self.validation_users.size)
        return {"users": users, "users_with_truth": total, "sampled": users < total,
                "valid_users": self.valid_users, "seed": self.valid_users_seed}

    def eval_target(self, split: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(exclude, truth) of a split: training items are masked; at test time also validation
        items when ``exclude_valid_at_test`` (RecBole's choice; MMRec's, the default, does not).
        With ``data.valid_users`` the validation truth keeps only the sampled users' rows
        (:attr:`validation_users`), so every metric averages over exactly those users."""
        assert self.data is not None
        if split == "valid":
            truth = self.data.valid
            if self.valid_users is not None:
                keep = np.zeros(truth.shape[0], dtype=truth.dtype)
                keep[self.validation_users] = 1
                truth = (sp.diags(keep) @ truth).tocsr()  # [U, I]: rows of unsampled users emptied
                truth.eliminate_zeros()
            return self.data.train, truth
        exclude = self.data.train + self.data.valid if self.exclude_valid_at_test else self.data.train
        return exclude.tocsr(), self.data.test

    def _eval_loader(self, split: str) -> DataLoader:
        _, truth = self.eval_target(split)
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        batch_size = eval_users_per_batch(self.eval_batch_size, truth.shape[1])
        if batch_size < self.eval_batch_size:
            log.info("evaluating %d users per batch instead of data.eval_batch_size=%d: a batch's scores "
                     "over %d items stay under %d MiB", batch_size, self.eval_batch_size, truth.shape[1],
                     EVAL_SCORE_BYTES // 2**20)
        return DataLoader(UserBatches(users, batch_size), batch_size=None, shuffle=False)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and negatives the training loader serves next."""
        self.train_sampler.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.triplets, batch_size=None, sampler=self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
