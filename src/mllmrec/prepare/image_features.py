"""The ``image`` item modality of a processed dataset: a vision encoder over the item images.

``python features.py dataset=baby image_encoder.model=<local model folder or hub id>`` runs any
transformers image model (``AutoImageProcessor`` + ``AutoModel``: ViT, CLIP's vision tower, DINOv2,
ResNet, ...) over ``images/`` in batches and writes ``processed/features/image_feat.npy`` ``[I, d]``
(row ``i`` = item ``i``; items without an image get a zero row, as their count is logged). Each image's
vector is cached under ``cache/image_features/<encoder key>/<sha256 of the image file>.npy``, so a
rerun, a changed item set or a second dataset sharing images encodes only what is new.

The vector of an image is the model's ``pooler_output`` when it has one, else the mean of its
``last_hidden_state`` over every position (tokens, or the spatial grid of a CNN), flattened.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mllmrec.cache import atomic_save_npy, atomic_write_json
from mllmrec.data import DatasetLayout, read_items
from mllmrec.data.errors import DatasetError

log = logging.getLogger(__name__)

__all__ = ["ImageEncoderSpec", "IMAGE_FEATURES_FILE", "image_sha256", "encode_images", "build_image_features"]

#: where a processed dataset's ``image`` modality lives, relative to ``processed/``
IMAGE_FEATURES_FILE = Path("features") / "image_feat.npy"


@dataclass(frozen=True)
class ImageEncoderSpec:
    """The vision encoder: a transformers model id or local folder, and how to run it."""

    model: str
    batch_size: int = 32
    device: str | None = None

    def __post_init__(self) -> None:
        from mllmrec.errors import ConfigError

        if not self.model:
            raise ConfigError("image_encoder.model must name a transformers image model (a local folder or hub id)")
        if self.batch_size < 1:
            raise ConfigError(f"image_encoder.batch_size must be >= 1, got {self.batch_size}")

    def key(self) -> str:
        """What the vectors depend on (the device and batch size do not change them)."""
        from mllmrec.cache import stable_hash

        model = Path(self.model)
        # a local folder is identified by its files' content, so replacing the weights re-encodes
        content = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in model.iterdir()
                         if p.is_file()) if model.is_dir() else self.model
        return stable_hash("image-encoder-v1", content)


def image_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def encode_images(paths: Sequence[Path], spec: ImageEncoderSpec) -> np.ndarray:
    """Vectors ``[len(paths), d]`` float32 of the images, ``spec.batch_size`` at a time."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(spec.model)
    model = AutoModel.from_pretrained(spec.model).eval()
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), spec.batch_size):
            images = []
            for p in paths[start:start + spec.batch_size]:
                with Image.open(p) as image:
                    images.append(image.convert("RGB"))
            inputs = processor(images=images, return_tensors="pt").to(device)
            result = model(pixel_values=inputs["pixel_values"])
            pooled = getattr(result, "pooler_output", None)
            if pooled is None:
                hidden = result.last_hidden_state
                # [B, T, d] tokens, or [B, C, H, W] CNN maps: average every position
                pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(-1)
            out.append(pooled.flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def build_image_features(root: str | Path, spec: ImageEncoderSpec) -> Path:
    """Encode the item images of the processed dataset at ``root`` into ``processed/features/image_feat.npy``."""
    layout = DatasetLayout(root)
    items = read_items(layout.root)
    cache = layout.cache / "image_features" / spec.key()
    paths: list[Path | None] = []
    for value in items["image_path"] if "image_path" in items else [None] * len(items):
        path = layout.root / str(value) if isinstance(value, str) and value else None
        paths.append(path if path is not None and path.is_file() else None)
    present = [p for p in paths if p is not None]
    if not present:
        raise DatasetError(f"{layout.items}: no item has an image file under {layout.images}; download them with "
                           "`python prepare.py` (prepare.images=true) before `python features.py`")
    digests = {p: image_sha256(p) for p in present}
    todo = sorted({d: p for p, d in digests.items() if not (cache / f"{d}.npy").is_file()}.items())
    if todo:
        log.info("encoding %d new images (%d cached)", len(todo), len(set(digests.values())) - len(todo))
        vectors = encode_images([p for _, p in todo], spec)
        for (digest, _), vector in zip(todo, vectors):
            atomic_save_npy(cache / f"{digest}.npy", vector.astype(np.float32))
    dim = int(np.load(cache / f"{digests[present[0]]}.npy").shape[0])
    features = np.zeros((len(paths), dim), np.float32)
    for i, p in enumerate(paths):
        if p is not None:
            features[i] = np.load(cache / f"{digests[p]}.npy")
    missing = sum(p is None for p in paths)
    if missing:
        log.warning("%d of %d items have no image file: their image features are zeros", missing, len(paths))
    target = layout.processed / IMAGE_FEATURES_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(target, features)
    atomic_write_json(target.with_name(target.name + ".meta.json"),
                      {**asdict(spec), "encoder_key": spec.key(), "items": len(paths), "missing_images": missing})
    return target
