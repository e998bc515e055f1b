"""Item image features of a processed dataset (its ``image`` modality, read by VBPR, FREEDOM, LATTICE, LGMRec).

    python features.py dataset=baby image_encoder.model=/path/to/vit-or-clip-vision-model
    python features.py dataset=baby image_encoder.library=timm image_encoder.model=resnet50 image_encoder.pretrained=true
    python features.py dataset=baby image_encoder.library=torchvision image_encoder.model=vgg16 image_encoder.weights=DEFAULT

See src/mllmrec/prepare/image_features.py and docs/models.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dotenv import load_dotenv

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
load_dotenv(Path(__file__).resolve().parent / ".env")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("features")


@hydra.main(version_base="1.3", config_path="conf", config_name="features")
def main(cfg: DictConfig) -> str:
    """Encode ``cfg.dataset``'s item images; returns the features file."""
    from mllmrec.errors import exit_on_user_error
    from mllmrec.prepare.image_features import ImageEncoderSpec, build_image_features

    with exit_on_user_error(log):
        spec = ImageEncoderSpec(**OmegaConf.to_container(cfg.image_encoder, resolve=True))
        path = build_image_features(cfg.dataset.root, spec)
    log.info("image features: %s", path)
    return str(path)


if __name__ == "__main__":
    main()
