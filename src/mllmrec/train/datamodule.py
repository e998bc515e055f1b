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
from mllmrec.data.modalities import MLLM_MODALITY, check_modalities, modality_files
from mllmrec.data.open import check_dataset, open_dataset
from mllmrec.data.validation import load_feature_matrix
from mllmrec.encoding import EncoderSpec, cached_encode
from mllmrec.errors import ConfigError
from mllmrec.graph import GraphBuildStatistics, GraphSpec, build_refined_item_graph
from mllmrec.reasoning.outputs import ITEM_TEXT_SOURCES, check_history, read_reasoning_outputs, require_outputs
from mllmrec.train.batches import BPRTriplets, EpochSampler, UserBatches

log = logging.getLogger(__name__)

__all__ = ["MLLMRecDataModule", "ITEM_TEXT_SOURCES"]


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
        negative_items: str = "all",
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
        self.negative_items = negative_items  # all | train (MMRec: only items seen in training)
        self.data: InteractionData | None = None
        self._texts: tuple[list[str], list[str]] | None = None
        self._item_features: torch.Tensor | None = None
        self._user_features: torch.Tensor | None = None
        self._user_features_ready = False
        self._item_graph: torch.Tensor | None = None
        self.graph_statistics: GraphBuildStatistics | None = None  # set with the graph
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
        """Where derived artefacts (embeddings, graphs) of this dataset are cached."""
        if self.is_mmrec:
            return Path(self.dataset_cfg["root"]) / ".mllmrec_cache"
        return self.layout.cache

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
        self.data = open_dataset(self.dataset_cfg, user_features=self.use_user_features)
        log.info("%s", self.data.summary())
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
        texts = self._texts[0] if which == "items" else self._texts[1]
        return cached_encode(texts, self.encoder_spec, self.cache_dir / "embeddings", which)

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
                self.item_features, data.train, spec.ks, spec.alpha, spec.kc, self.cache_dir / "graphs"
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
