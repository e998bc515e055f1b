"""The ``image`` item modality of a processed dataset: a vision encoder over the item images.

``python features.py dataset=baby image_encoder.model=<model>`` runs an image model over ``images/`` in
batches and writes ``processed/features/image_feat.npy`` ``[I, d]`` (row ``i`` = item ``i``; items
without an image get a zero row, as their count is logged). Each image's vector is cached under
``cache/image_features/<encoder key>/<sha256 of the image file>.npy``, so a rerun, a changed item set
or a second dataset sharing images encodes only what is new.

``image_encoder.library`` picks the model library:

* ``transformers`` (default): ``AutoImageProcessor`` + ``AutoModel`` from a local folder or hub id
  (ViT, CLIP's vision tower, DINOv2, ResNet, ...). The vector is the model's ``pooler_output`` when
  it has one, else the mean of its ``last_hidden_state`` over every position, flattened.
* ``timm``: ``timm.create_model(model, pretrained=...)``, parameters from ``checkpoint`` when given,
  the classifier removed (``reset_classifier(0)``: the pooled pre-logits features); preprocessing
  from timm's own data config (``resolve_model_data_config`` + ``create_transform``).
* ``torchvision``: ``torchvision.models.get_model(model)``, parameters from ``weights`` (e.g.
  ``DEFAULT``, downloaded by torchvision) or a ``checkpoint`` file; the last ``nn.Linear`` replaced by
  the identity (the features it would classify: for VGG16 the 4096-d fc7, MMRec's image features);
  preprocessing from the weights' own ``transforms()``.

For timm and torchvision, ``image_size`` + ``mean`` + ``std`` replace the library's preprocessing
(:func:`explicit_transform`). The cache key covers the library, the model's identity (name or folder
content, weights, the checkpoint file's sha256, the library's version) and the preprocessing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mllmrec.cache import atomic_save_npy, atomic_write_json
from mllmrec.data import DatasetLayout, read_items
from mllmrec.data.errors import DatasetError
from mllmrec.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ImageEncoderSpec", "IMAGE_LIBRARIES", "IMAGE_FEATURES_FILE", "image_sha256", "encode_images",
           "build_image_features", "explicit_transform", "require_library"]

#: where a processed dataset's ``image`` modality lives, relative to ``processed/``
IMAGE_FEATURES_FILE = Path("features") / "image_feat.npy"
#: the values of ``image_encoder.library``
IMAGE_LIBRARIES = ("transformers", "timm", "torchvision")
_INSTALL_HINT = {
    "timm": "pip install timm (it imports torchvision: install the torchvision release built for your torch)",
    "torchvision": "pip install the torchvision release built for your torch (torch 2.13 -> torchvision 0.28)",
}


@dataclass(frozen=True)
class ImageEncoderSpec:
    """The vision encoder (``conf/features.yaml``'s ``image_encoder``) and how to run it.

    Args:
        model: transformers: a local folder or hub id; timm: a model name (``timm.list_models()``);
            torchvision: a model builder name (``torchvision.models.list_models()``).
        library: ``transformers`` | ``timm`` | ``torchvision``.
        checkpoint: timm / torchvision: a state-dict file (``.pth``/``.pt``/``.safetensors``) with the
            model's parameters.
        pretrained: timm: ``create_model(pretrained=True)`` (timm downloads the weights).
        weights: torchvision: a weights name (``DEFAULT``, ``IMAGENET1K_V1`` or
            ``ResNet18_Weights.IMAGENET1K_V1``): its ``transforms()`` preprocess the images, and its
            parameters are used unless ``checkpoint`` is given.
        image_size, mean, std: timm / torchvision: explicit preprocessing instead of the library's own
            (all three or none): resize the shorter side to ``image_size``, centre crop, normalise.
        batch_size: images per forward pass. device: ``cuda``/``cpu``/... (None: cuda when available).
    """

    model: str
    library: str = "transformers"
    checkpoint: str | None = None
    pretrained: bool = False
    weights: str | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch_size: int = 32
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("image_encoder.model must name an image model (transformers: a local folder or hub "
                              "id; timm / torchvision: a model name)")
        if self.library not in IMAGE_LIBRARIES:
            raise ConfigError(f"image_encoder.library={self.library!r}: must be one of {IMAGE_LIBRARIES}")
        if self.batch_size < 1:
            raise ConfigError(f"image_encoder.batch_size must be >= 1, got {self.batch_size}")
        for name in ("mean", "std"):  # Hydra hands lists
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        explicit = (self.image_size, self.mean, self.std)
        if self.library == "transformers":
            given = [k for k in ("checkpoint", "weights", "image_size", "mean", "std") if getattr(self, k) is not None]
            if given or self.pretrained:
                raise ConfigError(f"image_encoder.{(given or ['pretrained'])[0]} applies to library=timm|torchvision; "
                                  "a transformers model brings its own weights and image processor (image_encoder.model)")
            return
        if any(v is not None for v in explicit) and any(v is None for v in explicit):
            raise ConfigError("image_encoder.image_size, mean and std go together (explicit preprocessing): give all "
                              "three, or none for the library's own preprocessing")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_encoder.image_size must be >= 1, got {self.image_size}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ConfigError(f"image_encoder.{name}={list(value)}: three values (R, G, B)"
                                  + (", all > 0" if name == "std" else ""))
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise ConfigError(f"image_encoder.checkpoint={self.checkpoint}: no such file")
        if self.library == "timm":
            if self.weights is not None:
                raise ConfigError("image_encoder.weights is torchvision's; for timm use image_encoder.pretrained=true "
                                  "or image_encoder.checkpoint=<file>")
            if not self.pretrained and self.checkpoint is None:
                raise ConfigError(f"image_encoder: timm model {self.model!r} has neither pretrained=true nor a "
                                  "checkpoint: random weights would give different vectors on every run")
        else:  # torchvision
            if self.pretrained:
                raise ConfigError("image_encoder.pretrained is timm's; for torchvision use image_encoder.weights="
                                  "DEFAULT (or a weights name) or image_encoder.checkpoint=<file>")
            if self.weights is None and self.checkpoint is None:
                raise ConfigError(f"image_encoder: torchvision model {self.model!r} has neither weights nor a "
                                  "checkpoint: random weights would give different vectors on every run")
            if self.weights is None and self.image_size is None:
                raise ConfigError("image_encoder: a torchvision model without weights has no preprocessing of its "
                                  "own; give image_encoder.weights=<name> (its transforms) or image_size, mean and std")

    def key(self) -> str:
        """What the vectors depend on (the device and batch size do not change them)."""
        from mllmrec.cache import stable_hash

        if self.library == "transformers":  # the key of entries written before timm/torchvision existed
            model = Path(self.model)
            # a local folder is identified by its files' content, so replacing the weights re-encodes
            content = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in model.iterdir()
                             if p.is_file()) if model.is_dir() else self.model
            return stable_hash("image-encoder-v1", content)
        identity = {
            "library": self.library, "version": importlib.metadata.version(self.library), "model": self.model,
            "pretrained": self.pretrained, "weights": self.weights,
            "checkpoint": image_sha256(Path(self.checkpoint)) if self.checkpoint else None,
            "preprocess": [self.image_size, self.mean, self.std],
        }
        return stable_hash("image-encoder-v2", identity)


def image_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def require_library(spec: ImageEncoderSpec) -> None:
    """Import ``spec.library`` now, so that a missing or broken install stops the run before any
    image is read, with the install line."""
    if spec.library == "transformers":
        return
    try:
        __import__(spec.library)
    except Exception as err:  # ImportError, or torchvision's RuntimeError against a mismatched torch
        raise ConfigError(f"image_encoder.library={spec.library}: `import {spec.library}` failed ({type(err).__name__}: "
                          f"{err}). Fix: {_INSTALL_HINT[spec.library]}; on a CPU-only torch see "
                          "scripts/vision_libs_env.sh") from err


def explicit_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], Any]:
    r"""Explicit preprocessing: resize so that the shorter side is ``image_size`` (bicubic, the longer
    side ``int(image_size * long / short)`` as torchvision's ``Resize``), centre crop
    ``image_size``², scale to [0, 1], then :math:`(x - \mathrm{mean}) / \mathrm{std}` per channel.

    Shapes: a PIL RGB image -> float32 tensor ``[3, image_size, image_size]``.
    """
    import torch
    from PIL import Image

    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def transform(image: Image.Image) -> torch.Tensor:
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(image_size * long / short)
        size = (image_size, new_long) if w <= h else (new_long, image_size)
        resized = image.resize(size, Image.Resampling.BICUBIC)
        left, top = int(round((resized.width - image_size) / 2.0)), int(round((resized.height - image_size) / 2.0))
        cropped = resized.crop((left, top, left + image_size, top + image_size))
        x = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - mean_t) / std_t

    return transform


def _load_checkpoint(model: Any, spec: ImageEncoderSpec) -> None:
    """``spec.checkpoint``'s parameters into ``model`` (strict: every parameter, nothing else)."""
    import torch

    path = Path(spec.checkpoint)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"image_encoder.checkpoint={path} does not fit {spec.library} model {spec.model!r}: "
                          f"{str(err).splitlines()[0]}") from err


def _timm_encoder(spec: ImageEncoderSpec) -> tuple[Any, Callable[[Any], Any]]:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    model = timm.create_model(spec.model, pretrained=spec.pretrained)
    if spec.checkpoint:
        _load_checkpoint(model, spec)
    model.reset_classifier(0)  # forward() now returns the pooled pre-logits features
    if spec.image_size is not None:
        return model, explicit_transform(spec.image_size, spec.mean, spec.std)
    return model, create_transform(**resolve_model_data_config(model))


def _torchvision_weights(spec: ImageEncoderSpec) -> Any:
    from torchvision import models

    try:
        if "." in spec.weights:
            return models.get_weight(spec.weights)
        return getattr(models.get_model_weights(spec.model), spec.weights)
    except (AttributeError, KeyError, ValueError) as err:
        raise ConfigError(f"image_encoder.weights={spec.weights!r}: not a weights name of torchvision model "
                          f"{spec.model!r} ({err})") from err


def _drop_last_linear(model: Any) -> None:
    """Replace the model's last ``nn.Linear`` (its classifier) by the identity, in place."""
    from torch import nn

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        return  # no linear classifier (e.g. SqueezeNet): the output itself is the vector
    *parents, last = names[-1].split(".")
    owner = model.get_submodule(".".join(parents)) if parents else model
    setattr(owner, last, nn.Identity())


def _torchvision_encoder(spec: ImageEncoderSpec) -> tuple[Any, Callable[[Any], Any]]:
    from torchvision import models

    weights = _torchvision_weights(spec) if spec.weights else None
    try:
        model = models.get_model(spec.model, weights=None if spec.checkpoint else weights)
    except ValueError as err:
        raise ConfigError(f"image_encoder.model={spec.model!r}: not a torchvision model ({err})") from err
    if spec.checkpoint:
        _load_checkpoint(model, spec)
    _drop_last_linear(model)
    if spec.image_size is not None:
        return model, explicit_transform(spec.image_size, spec.mean, spec.std)
    return model, weights.transforms()


def encode_images(paths: Sequence[Path], spec: ImageEncoderSpec) -> np.ndarray:
    """Vectors ``[len(paths), d]`` float32 of the images, ``spec.batch_size`` at a time."""
    import torch
    from PIL import Image

    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.library == "transformers":
        from transformers import AutoImageProcessor, AutoModel

        processor = AutoImageProcessor.from_pretrained(spec.model)
        model = AutoModel.from_pretrained(spec.model).eval()
    else:
        model, transform = (_timm_encoder if spec.library == "timm" else _torchvision_encoder)(spec)
        model = model.eval()
    model.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), spec.batch_size):
            images = []
            for p in paths[start:start + spec.batch_size]:
                with Image.open(p) as image:
                    images.append(image.convert("RGB"))
            if spec.library != "transformers":
                pixels = torch.stack([transform(image) for image in images]).to(device)
                out.append(model(pixels).flatten(1).float().cpu().numpy())
                continue
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
    require_library(spec)
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
