"""Named item modalities: ``text``, ``image``, ``mllm``, ... each a float32 ``[I, d_m]`` matrix.

A dataset config maps modality names to ``.npy`` files with ``dataset.modalities.<name>: <file>``
(relative to ``dataset.root``, or absolute). For an MMRec folder (``conf/dataset/mmrec.yaml``) these
are MMRec's own ``text_feat.npy`` / ``image_feat.npy``; the ``mllm`` modality is the
``dataset.item_features`` file (the authors' ``image_text_feat.npy``), MLLMRec's ``E_I``.
Processed datasets build ``text`` (the encoded item text) and ``mllm`` (the encoded item
descriptions) themselves (:data:`BUILT_MODALITIES`); their ``image`` modality is
``processed/features/image_feat.npy``, written by ``python features.py``
(:mod:`mllmrec.prepare.image_features`); other modalities come from files.

A model declares the modalities it reads (``modalities = ("text", "image")``, a class attribute,
overridable with ``model.modalities``); :func:`check_modalities` fails at start-up, before any data
is loaded, naming the key and the file to add for each missing one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mllmrec.data.errors import DatasetError

__all__ = ["BUILT_MODALITIES", "MLLM_MODALITY", "check_modalities", "modality_files"]

#: the modality that is MLLMRec's item input ``E_I`` (``dataset.item_features`` of an MMRec folder)
MLLM_MODALITY = "mllm"
#: modalities a processed dataset builds itself by encoding texts (no file needed)
BUILT_MODALITIES = ("text", MLLM_MODALITY)


def _is_mmrec(dataset: Mapping[str, Any]) -> bool:
    return dataset.get("format", "processed") == "mmrec"


#: a processed dataset's ``image`` modality, written by ``python features.py`` (relative to its root)
PROCESSED_IMAGE_FEATURES = Path("processed") / "features" / "image_feat.npy"


def modality_files(dataset: Mapping[str, Any]) -> dict[str, Path]:
    """``{name: path}`` of the modalities a dataset config maps to files (unset ones left out)."""
    root = Path(dataset["root"])
    files = {str(name): root / str(file) for name, file in (dataset.get("modalities") or {}).items() if file}
    if _is_mmrec(dataset) and dataset.get("item_features") and MLLM_MODALITY not in files:
        files[MLLM_MODALITY] = root / str(dataset["item_features"])
    if not _is_mmrec(dataset) and "image" not in files:
        files["image"] = root / PROCESSED_IMAGE_FEATURES
    return files


def check_modalities(dataset: Mapping[str, Any], names: Iterable[str], model: str) -> None:
    """Every modality in ``names`` is built by the dataset or mapped to an existing file.

    Raises :class:`DatasetError` naming the modality, the key to set and the file it expects.
    """
    files = modality_files(dataset)
    built = () if _is_mmrec(dataset) else BUILT_MODALITIES
    for name in names:
        if name in built:
            continue
        path = files.get(name)
        default = {"text": "text_feat.npy", "image": "image_feat.npy"}.get(name, f"{name}_feat.npy")
        if path is None:
            raise DatasetError(
                f"{model} reads the item modality {name!r}, which dataset={dataset.get('name')} does not "
                f"provide. Add an [n_items, d] float .npy file (e.g. {default}) to {dataset['root']} and "
                f"set dataset.modalities.{name}={default}, or set model.modalities to the ones it has "
                f"({sorted(set(files) | set(built))})."
            )
        if not path.is_file() and not _is_mmrec(dataset) and name == "image":
            raise DatasetError(
                f"{model} reads the item modality 'image': {path} does not exist. Encode the item images "
                f"with `python features.py dataset={dataset.get('name')} image_encoder.model=<image model>`, "
                "or set dataset.modalities.image to an [n_items, d] .npy file, or train with "
                "model.modalities=[text]."
            )
        if not path.is_file():
            raise DatasetError(
                f"{model} reads the item modality {name!r}: file {path} does not exist. Add it "
                f"(an [n_items, d] float .npy array) or point dataset.modalities.{name} at the right file."
            )
