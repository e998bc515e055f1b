"""Score new catalogue items (not in the dataset) for a trained run's users, from their descriptions.

The texts are what the run's item features were made from: ``mllm=none``, the item text (title, brand,
categories, description: :func:`mllmrec.data.mmrec_item_text`); ``mllm=<model>``, that text plus the
MLLM's image description (``reason.py`` on the new items). They are encoded with the run's encoder and
placed in the refined graph with semantic neighbours only (:mod:`mllmrec.models.cold_start`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mllmrec.encoding import encode_texts
from mllmrec.models.cold_start import score_new_items
from mllmrec.models.mllmrec import MLLMRec

__all__ = ["score_new_item_texts"]


def score_new_item_texts(datamodule, model: MLLMRec, texts: Sequence[str], users: Tensor) -> Tensor:
    """Scores of ``users`` for new items described by ``texts``, with the run's encoder, graph and
    ``graph.ks`` / ``graph.alpha``.

    ``datamodule`` is the run's (set up; its ``item_graph`` is the graph the model was trained on).

    Shapes: texts ``[N]``, users ``[B]`` -> ``[B, N]``.
    """
    if not texts:
        raise ValueError("texts is empty: give one description per new item")
    features = torch.from_numpy(encode_texts(list(texts), datamodule.encoder_spec, desc="new items"))
    spec = datamodule.graph_spec
    model.eval()
    return score_new_items(model, datamodule.item_graph, features, users, spec.ks, spec.alpha)
