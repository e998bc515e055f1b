"""Recommender models. Each is a :class:`~mllmrec.models.base.Recommender` + a YAML in conf/model/."""

from mllmrec.models.base import Recommender, bpr_loss
from mllmrec.models.mllmrec import MLLMRec, mlp_tower

__all__ = ["MLLMRec", "Recommender", "bpr_loss", "mlp_tower"]
