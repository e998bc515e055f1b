"""Datasets: the in-memory :class:`InteractionData`, MMRec-format and processed-format loaders."""

from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import TEST, TRAIN, VALID, InteractionData, interaction_data_from_frame
from mllmrec.data.mmrec import load_mmrec_dataset
from mllmrec.data.processed import (
    DatasetLayout,
    is_processed,
    load_processed_dataset,
    read_items,
    read_manifest,
    write_processed_dataset,
)
from mllmrec.data.split import mmrec_split, split_sizes
from mllmrec.data.text import clean_text, history_text, mmrec_item_text

__all__ = [
    "DatasetError",
    "DatasetLayout",
    "InteractionData",
    "TRAIN",
    "VALID",
    "TEST",
    "clean_text",
    "history_text",
    "interaction_data_from_frame",
    "is_processed",
    "load_mmrec_dataset",
    "load_processed_dataset",
    "mmrec_item_text",
    "mmrec_split",
    "read_items",
    "read_manifest",
    "split_sizes",
    "write_processed_dataset",
]
