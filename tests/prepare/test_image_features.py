"""`python features.py`: the `image` modality of a processed dataset from a transformers vision model
(a tiny randomly initialised ViT built here: nothing can be downloaded), batched, cached by the image
file's sha256, zeros for items without an image; the datamodule serves the result to models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mllmrec.data import read_items
from mllmrec.data.demo import ensure_demo_dataset
from mllmrec.data.errors import DatasetError
from mllmrec.prepare import image_features
from mllmrec.prepare.image_features import ImageEncoderSpec, build_image_features


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _reference(model_dir, image_file) -> np.ndarray:
    """The vector of one image, computed here directly with transformers."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor, model = AutoImageProcessor.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    with Image.open(image_file) as image, torch.no_grad():
        return model(**processor(images=[image.convert("RGB")], return_tensors="pt")).pooler_output[0].numpy()


def test_image_features_are_the_models_vectors_cached_by_sha256(tmp_path, tiny_vit, monkeypatch):
    layout = ensure_demo_dataset(tmp_path / "demo", n_users=20, n_items=8)
    items = read_items(layout.root)
    paths = [layout.root / p for p in items["image_path"]]
    shutil.copyfile(paths[1], paths[2])  # items 1 and 2 now share one image: encoded once
    paths[5].unlink()  # item 5 has no image: a zero row

    calls = []
    real = image_features.encode_images
    monkeypatch.setattr(image_features, "encode_images", lambda p, s: calls.append(len(p)) or real(p, s))
    spec = ImageEncoderSpec(model=str(tiny_vit), batch_size=3)  # several batches
    target = build_image_features(layout.root, spec)
    features = np.load(target)
    assert features.shape == (8, 16) and features.dtype == np.float32
    assert calls == [6]  # 8 items - 1 duplicate - 1 missing
    for i in (0, 1, 2, 7):
        np.testing.assert_allclose(features[i], _reference(tiny_vit, paths[i]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(features[5], 0.0)

    build_image_features(layout.root, spec)  # a rerun reads every vector from the cache
    assert calls == [6]
    shutil.copyfile(paths[0], paths[7])  # item 7 now shows image 0, whose vector is cached: no encoding
    build_image_features(layout.root, spec)
    assert calls == [6]
    np.testing.assert_array_equal(np.load(target)[7], features[0])
    paths[7].write_bytes(paths[3].read_bytes())  # and now image 3's
    paths[3].unlink()
    shutil.copyfile(paths[0], paths[3])  # item 3's file changed to image 0's
    build_image_features(layout.root, spec)
    assert calls == [6]  # every content seen before
    np.testing.assert_array_equal(np.load(target)[3], features[0])
    np.testing.assert_array_equal(np.load(target)[7], features[3])
    from PIL import Image

    with Image.open(paths[0]) as image:  # genuinely new content: encoded, alone
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[7])
    build_image_features(layout.root, spec)
    assert calls == [6, 1]
    np.testing.assert_allclose(np.load(target)[7], _reference(tiny_vit, paths[7]), rtol=1e-4, atol=1e-5)


def test_no_images_at_all_is_a_clear_error(tmp_path, tiny_vit):
    layout = ensure_demo_dataset(tmp_path / "demo", n_users=20, n_items=6)
    shutil.rmtree(layout.images)
    with pytest.raises(DatasetError, match="python prepare.py"):
        build_image_features(layout.root, ImageEncoderSpec(model=str(tiny_vit)))


def test_the_datamodule_serves_the_features_as_the_image_modality(train_cfg, data_dir, tmp_path, tiny_vit):
    from mllmrec.train.task import build_datamodule

    cfg = train_cfg("model=vbpr", f"paths.data_dir={tmp_path}")
    dm = build_datamodule(cfg)
    with pytest.raises(DatasetError, match=r"python features.py dataset=demo"):
        dm.check_modalities(("text", "image"), "VBPR")
    dm.setup("fit")
    target = build_image_features(cfg.dataset.root, ImageEncoderSpec(model=str(tiny_vit)))
    dm.check_modalities(("text", "image"), "VBPR")
    served = dm.item_modalities(("image",))["image"]
    torch.testing.assert_close(served, torch.from_numpy(np.load(target)))


# ------------------------------------------------------------------ image_encoder.library=timm|torchvision
# (the real libraries run in the opt-in vision_libs tier: tests/prepare/test_image_features_vision_libs.py)
@pytest.mark.parametrize(("fields", "message"), [
    ({"library": "keras"}, r"image_encoder.library='keras': must be one of"),
    ({"checkpoint": "w.pth"}, r"image_encoder.checkpoint applies to library=timm\|torchvision"),
    ({"library": "timm"}, r"neither pretrained=true nor a checkpoint"),
    ({"library": "timm", "pretrained": True, "weights": "DEFAULT"}, r"image_encoder.weights is torchvision's"),
    ({"library": "torchvision", "pretrained": True}, r"image_encoder.pretrained is timm's"),
    ({"library": "torchvision"}, r"neither weights nor a checkpoint"),
    ({"library": "torchvision", "checkpoint": "CKPT"}, r"no preprocessing of its own"),
    ({"library": "timm", "pretrained": True, "image_size": 32}, r"image_size, mean and std go together"),
    ({"library": "timm", "pretrained": True, "image_size": 32, "mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]},
     r"image_encoder.std=\[0.5, 0.0, 0.5\]: three values"),
    ({"library": "timm", "checkpoint": "missing.pth"}, r"image_encoder.checkpoint=missing.pth: no such file"),
])
def test_image_encoder_settings_are_checked_with_their_keys(tmp_path, fields, message):
    from mllmrec.errors import ConfigError

    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"x")
    fields = {k: str(checkpoint) if v == "CKPT" else v for k, v in fields.items()}
    with pytest.raises(ConfigError, match=message):
        ImageEncoderSpec(model="resnet18", **fields)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_library_that_does_not_import_stops_before_any_image_is_read(tmp_path, monkeypatch, library):
    import sys

    from mllmrec.errors import ConfigError

    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, library, None)  # `import <library>` raises ImportError
    spec = ImageEncoderSpec(model="resnet18", library=library, checkpoint=str(checkpoint), image_size=32,
                            mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ConfigError, match=rf"image_encoder.library={library}: `import {library}` failed"):
        build_image_features(tmp_path / "no-dataset-here", spec)


def test_explicit_preprocessing_resizes_the_shorter_side_crops_and_normalises():
    from PIL import Image

    from mllmrec.prepare.image_features import explicit_transform

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)  # H=40, W=60
    image = Image.fromarray(pixels)
    out = explicit_transform(20, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(image)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32
    # by hand: bicubic resize to 30 x 20 (W x H), crop columns 5..24, scale, normalise
    resized = np.asarray(image.resize((30, 20), Image.Resampling.BICUBIC), dtype=np.float32)[:, 5:25] / 255.0
    expected = (resized - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_the_cache_key_covers_library_model_checkpoint_and_preprocessing(tmp_path, monkeypatch):
    import importlib.metadata

    # the key records the library's version; the libraries themselves are not needed to compute it
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"timm": "1.0.31", "torchvision": "0.28.0"}[name])
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights a")
    b.write_bytes(b"weights b")
    base = dict(model="resnet18", library="timm", checkpoint=str(a))
    keys = {
        ImageEncoderSpec(**base).key(),
        ImageEncoderSpec(**{**base, "library": "torchvision", "weights": "DEFAULT"}).key(),
        ImageEncoderSpec(**{**base, "model": "resnet34"}).key(),
        ImageEncoderSpec(**{**base, "checkpoint": str(b)}).key(),
        ImageEncoderSpec(**base, image_size=32, mean=[0.5] * 3, std=[0.5] * 3).key(),
        ImageEncoderSpec(**base, image_size=48, mean=[0.5] * 3, std=[0.5] * 3).key(),
        ImageEncoderSpec(**base, image_size=32, mean=[0.4] * 3, std=[0.5] * 3).key(),
    }
    assert len(keys) == 7
    assert ImageEncoderSpec(**base, batch_size=5, device="cpu").key() == ImageEncoderSpec(**base).key()
    c = tmp_path / "c.pth"
    c.write_bytes(b"weights a")  # same content, other file: same vectors, same key
    assert ImageEncoderSpec(**{**base, "checkpoint": str(c)}).key() == ImageEncoderSpec(**base).key()
