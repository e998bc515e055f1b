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
