"""Recommender models. Each is a :class:`~mllmrec.models.base.Recommender` + a YAML in conf/model/.

Models are found by their config's ``_target_`` (any importable class), never by a name lookup here;
this package only exports the ones it ships. See docs/models.md ("add your own model").
"""

from mllmrec.models.base import Recommender, bpr_loss
from mllmrec.models.bpr import BPR
from mllmrec.models.freedom import FREEDOM, degree_sensitive_pruning
from mllmrec.models.gume import GUME
from mllmrec.models.lattice import LATTICE
from mllmrec.models.lgmrec import LGMRec
from mllmrec.models.lightgcn import LightGCN
from mllmrec.models.mllmrec import MLLMRec, mlp_tower
from mllmrec.models.mmrec_parts import emb_loss, mmrec_bpr_loss
from mllmrec.models.vbpr import VBPR

__all__ = [
    "BPR",
    "FREEDOM",
    "GUME",
    "LATTICE",
    "LGMRec",
    "LightGCN",
    "MLLMRec",
    "Recommender",
    "VBPR",
    "bpr_loss",
    "degree_sensitive_pruning",
    "emb_loss",
    "mmrec_bpr_loss",
    "mlp_tower",
]
