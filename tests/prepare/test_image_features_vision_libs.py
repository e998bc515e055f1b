"""Opt-in tier `vision_libs`: `python features.py` with real timm and torchvision image models (tiny or
random-weight models built here and saved as checkpoints: nothing can be downloaded). Run in the venv of
scripts/vision_libs_env.sh: `.venv-vision/bin/python -m pytest -m vision_libs tests/prepare`.

Each vector is compared with the same model run directly through the library's own API (its data
config / its weights' transforms), and the cache is keyed by library, checkpoint and preprocessing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mllmrec.data import read_items
from mllmrec.data.demo import ensure_demo_dataset
from mllmrec.errors import ConfigError
from mllmrec.prepare import image_features
from mllmrec.prepare.image_features import ImageEncoderSpec, build_image_features

pytestmark = pytest.mark.vision_libs


@pytest.fixture
def dataset(tmp_path):
    layout = ensure_demo_dataset(tmp_path / "demo", n_users=20, n_items=6)
    paths = [layout.root / p for p in read_items(layout.root)["image_path"]]
    shutil.copyfile(paths[1], paths[2])  # items 1 and 2 share one image
    paths[4].unlink()  # item 4 has no image
    return layout, paths


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = image_features.encode_images
    monkeypatch.setattr(image_features, "encode_images", lambda p, s: calls.append(len(p)) or real(p, s))
    return calls


def _open(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_timm_model_with_its_own_data_config(tmp_path, dataset, counted):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    layout, paths = dataset
    torch.manual_seed(0)
    checkpoint = tmp_path / "test_vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), checkpoint)
    spec = ImageEncoderSpec(model="test_vit", library="timm", checkpoint=str(checkpoint), batch_size=2)
    features = np.load(build_image_features(layout.root, spec))

    reference = timm.create_model("test_vit", pretrained=False)
    reference.load_state_dict(torch.load(checkpoint, weights_only=True))
    reference.reset_classifier(0)
    reference.eval()
    transform = create_transform(**resolve_model_data_config(reference))
    assert features.shape == (6, reference.num_features) and counted == [4]
    with torch.no_grad():
        for i in (0, 1, 2, 5):
            expected = reference(transform(_open(paths[i]))[None])[0].numpy()
            np.testing.assert_allclose(features[i], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(features[4], 0.0)

    build_image_features(layout.root, spec)  # cached by image sha256: nothing encoded again
    assert counted == [4]
    # explicit preprocessing is another cache entry, with other vectors
    explicit = ImageEncoderSpec(model="test_vit", library="timm", checkpoint=str(checkpoint), image_size=160,
                                mean=[0.4, 0.4, 0.4], std=[0.3, 0.3, 0.3])
    other = np.load(build_image_features(layout.root, explicit))
    assert counted == [4, 4] and not np.allclose(other[0], features[0])


def test_torchvision_resnet_with_explicit_preprocessing_and_with_its_weights_transforms(tmp_path, dataset, counted):
    import torchvision
    from torchvision import transforms as T

    layout, paths = dataset
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(checkpoint, weights_only=True))
    reference.fc = torch.nn.Identity()  # the 512-d pooled features the classifier would read
    reference.eval()

    spec = ImageEncoderSpec(model="resnet18", library="torchvision", checkpoint=str(checkpoint), image_size=64,
                            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], batch_size=3)
    features = np.load(build_image_features(layout.root, spec))
    # torchvision's own transforms with the same settings (PIL bicubic resize, centre crop, normalise)
    transform = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    assert features.shape == (6, 512) and counted == [4]
    with torch.no_grad():
        for i in (0, 1, 2, 5):
            np.testing.assert_allclose(features[i], reference(transform(_open(paths[i]))[None])[0].numpy(),
                                       rtol=1e-4, atol=1e-4)

    # weights=DEFAULT: its transforms() preprocess (resize 256, crop 224), the checkpoint's parameters
    weighted = ImageEncoderSpec(model="resnet18", library="torchvision", weights="DEFAULT", checkpoint=str(checkpoint))
    got = np.load(build_image_features(layout.root, weighted))
    weights_transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert counted == [4, 4]
    with torch.no_grad():
        np.testing.assert_allclose(got[0], reference(weights_transform(_open(paths[0]))[None])[0].numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_torchvision_vgg_features_are_the_4096_d_input_of_its_last_linear_layer(tmp_path, dataset):
    import torchvision

    layout, paths = dataset
    torch.manual_seed(1)
    model = torchvision.models.vgg11(weights=None)
    checkpoint = tmp_path / "vgg11.pth"
    torch.save(model.state_dict(), checkpoint)
    spec = ImageEncoderSpec(model="vgg11", library="torchvision", checkpoint=str(checkpoint), image_size=32,
                            mean=[0.5] * 3, std=[0.5] * 3)
    features = np.load(build_image_features(layout.root, spec))
    assert features.shape == (6, 4096)  # MMRec's image_feat.npy width (VGG fc7)
    model.classifier[-1] = torch.nn.Identity()
    model.eval()
    from mllmrec.prepare.image_features import explicit_transform

    with torch.no_grad():
        expected = model(explicit_transform(32, [0.5] * 3, [0.5] * 3)(_open(paths[0]))[None])[0].numpy()
    np.testing.assert_allclose(features[0], expected, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_another_model_and_an_unknown_weights_name_are_config_errors(tmp_path, dataset):
    import torchvision

    layout, _ = dataset
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    with pytest.raises(ConfigError, match=r"image_encoder.checkpoint=.*does not fit torchvision model 'vgg11'"):
        build_image_features(layout.root, ImageEncoderSpec(model="vgg11", library="torchvision",
                                                           checkpoint=str(checkpoint), image_size=32,
                                                           mean=[0.5] * 3, std=[0.5] * 3))
    with pytest.raises(ConfigError, match=r"image_encoder.weights='NOPE'"):
        build_image_features(layout.root, ImageEncoderSpec(model="resnet18", library="torchvision", weights="NOPE",
                                                           checkpoint=str(checkpoint)))
