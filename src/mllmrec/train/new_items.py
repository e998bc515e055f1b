"""Score new catalogue items (not in the dataset) for a trained run's users, from their descriptions.

The texts are what the run's item features were made from: ``mllm=none``, the item text (title, brand,
categories, description: :func:`mllmrec.data.mmrec_item_text`); ``mllm=<model>``, that text plus the
MLLM's image description (:func:`mllmrec.reasoning.new_items.describe_new_items`, which
``recommend.py new_items=`` runs). They are encoded with the run's encoder and placed in the refined
graph with semantic neighbours only (:mod:`mllmrec.models.cold_start`).

:func:`check_new_item_scoring` says, from a run's saved config alone, whether its model can score
new items at all (before any data or weights are loaded).
"""

from __future__ import annotations

from collections.abc import Sequence

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor

from mllmrec.encoding import encode_texts
from mllmrec.errors import ConfigError
from mllmrec.models.cold_start import new_item_representations
from mllmrec.models.mllmrec import MLLMRec
from mllmrec.train.task import CONTENT_INPUTS

__all__ = ["check_new_item_scoring", "new_item_vectors", "score_new_item_texts"]


def check_new_item_scoring(cfg: DictConfig) -> None:
    """ConfigError unless the run of ``cfg`` can score items it was not trained on: an MLLMRec
    (the paper's model, ``model.ui_layers=0``) on a processed dataset (whose item texts the run
    encoded itself, so new texts can be encoded the same way)."""
    import inspect

    target = str(cfg.model._target_)
    model_class = hydra.utils.get_class(target)
    name = target.rsplit(".", 1)[-1]
    if not issubclass(model_class, MLLMRec):
        params = inspect.signature(model_class.__init__).parameters
        if not any(p in params for p in CONTENT_INPUTS):
            raise ConfigError(f"new_items: the run's model {name} ({target}) reads no item content (an ID-only "
                              "model): an item it was not trained on has no trained embedding, so it cannot be "
                              "scored. Use a run of MLLMRec (model=mllmrec), which represents items from their "
                              "content.")
        raise ConfigError(f"new_items: scoring new items is built for MLLMRec runs only; the run's model is "
                          f"{name} ({target}). Use a run of MLLMRec (model=mllmrec).")
    if int(cfg.model.get("ui_layers", 0) or 0) > 0:
        raise ConfigError(f"new_items: the run was trained with model.ui_layers={cfg.model.ui_layers} (w/ GCN_UI), "
                          "which propagates over user-item edges a new item does not have. Use a run with "
                          "model.ui_layers=0 (the paper's model).")
    if str(cfg.dataset.get("format", "processed")) == "mmrec":
        raise ConfigError(f"new_items: the run's dataset ({cfg.dataset.name}) is an MMRec-format folder whose item "
                          "features are fixed .npy files, so there is no encoder to embed new items with. Use a "
                          "run on a processed dataset (prepare.py / dataset=custom / the demo).")


def new_item_vectors(datamodule, model: MLLMRec, texts: Sequence[str]) -> Tensor:
    """``h_n`` of new items described by ``texts``: the run's encoder, then
    :func:`~mllmrec.models.cold_start.new_item_representations` with the run's graph, ``graph.ks``
    and ``graph.alpha``.

    Shapes: texts ``[N]`` -> ``[N, d]``.
    """
    if not texts:
        raise ValueError("texts is empty: give one description per new item")
    features = torch.from_numpy(encode_texts(list(texts), datamodule.encoder_spec, desc="new items"))
    spec = datamodule.graph_spec
    model.eval()
    return new_item_representations(model, datamodule.item_graph, features, spec.ks, spec.alpha)


def score_new_item_texts(datamodule, model: MLLMRec, texts: Sequence[str], users: Tensor) -> Tensor:
    """Scores of ``users`` for new items described by ``texts``, with the run's encoder, graph and
    ``graph.ks`` / ``graph.alpha``.

    ``datamodule`` is the run's (set up; its ``item_graph`` is the graph the model was trained on).

    Shapes: texts ``[N]``, users ``[B]`` -> ``[B, N]``.
    """
    h_new = new_item_vectors(datamodule, model, texts)
    with torch.no_grad():
        return model.user_repr(users.to(h_new.device)) @ h_new.T
