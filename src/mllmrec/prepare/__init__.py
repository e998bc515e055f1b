"""Dataset preparation: raw Amazon files (2014 / 2018 releases) or MMRec's released folders ->
the processed format of :mod:`mllmrec.data.processed`. Entry point: ``python prepare.py``."""

from mllmrec.prepare.download import DownloadError
from mllmrec.prepare.pipeline import PREPARE_VERSION, AmazonSource, PrepareOptions, PrepareOutcome, prepare_amazon

__all__ = [
    "PREPARE_VERSION",
    "AmazonSource",
    "DownloadError",
    "PrepareOptions",
    "PrepareOutcome",
    "prepare_amazon",
]
