"""The 2D branch: a timm encoder (several scales), a light FPN decoder and pixel logits.

The camera branch only has to be good enough to teach the LiDAR branch appearance (paint, colour,
texture), so it is a stock timm backbone with `features_only=True` and a small top-down FPN; all FPN
levels have `fpn_dim` channels so any of them can feed a projection head. `sample_at_pixels` reads
features at continuous point projections with `grid_sample(align_corners=True)`, the convention
under which pixel centres sit at integer coordinates (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Prefixes that wrappers (DDP, Lightning, EMA) put in front of parameter names.
_WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"image weights file {path} does not hold a state_dict (name -> tensor)")
    return obj


def load_encoder_weights(encoder: nn.Module, path: str | Path, backbone: str) -> None:
    """Load a local state_dict into a `features_only` encoder; every encoder tensor must be found.

    A full classification checkpoint works too: its head (keys the encoder does not have) is
    ignored. Missing keys or mismatched shapes raise a `ValueError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image weights file not found: {path} (image_pretrained must be "
                                "'none', 'hub' or a path to a state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"image weights file {path} cannot be read by torch.load: {exc}") from exc
    state = _unwrap_state_dict(obj, path)
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
        raise ValueError(f"image weights file {path} does not match backbone {backbone!r}: "
                         f"{len(missing)} of {len(own)} encoder tensors missing, e.g. {missing[:5]}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"image weights file {path} does not match backbone {backbone!r}: "
                         f"shape mismatch for {bad[:5]}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


def build_encoder(backbone: str, pretrained: str, out_indices: Sequence[int]) -> nn.Module:
    """timm `features_only` encoder; `pretrained` is "none", "hub" (timm's hub weights) or a file path."""
    try:
        encoder = timm.create_model(backbone, features_only=True, out_indices=tuple(out_indices),
                                    pretrained=pretrained == "hub")
    except Exception as exc:  # noqa: BLE001 - hub downloads fail with OSError, HTTP and hub errors
        if pretrained == "hub":
            raise RuntimeError(f"could not fetch hub weights for image backbone {backbone!r} "
                               f"(offline? use image_pretrained: none or a local file): {exc}") from exc
        raise
    if pretrained not in ("none", "hub"):
        load_encoder_weights(encoder, pretrained, backbone)
    return encoder


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ImageNet(nn.Module):
    """timm encoder + FPN; `forward(images)` -> (per-level features, pixel logits at the finest level)."""

    def __init__(self, backbone: str, pretrained: str, out_indices: Sequence[int], fpn_dim: int,
                 num_classes: int) -> None:
        super().__init__()
        self.encoder = build_encoder(backbone, pretrained, out_indices)
        channels = self.encoder.feature_info.channels()
        #: stride of every FPN level w.r.t. the input image, finest first
        self.reductions: list[int] = list(self.encoder.feature_info.reduction())
        self.fpn_dim = fpn_dim
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_dim, 1) for c in channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(fpn_dim, fpn_dim) for _ in channels)
        self.classifier = nn.Sequential(_conv_bn_relu(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, num_classes, 1))

    @property
    def num_levels(self) -> int:
        """Number of FPN levels (= len(out_indices))."""
        return len(self.lateral)

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Images (I, 3, H, W) normalised -> FPN levels [(I, fpn_dim, h_l, w_l)], finest first, and
        pixel logits (I, C, h_0, w_0)."""
        feats = self.encoder(images)
        # top-down: each smoothed level feeds the next finer one, so every layer reaches the logits
        # (no parameter is unused whichever levels the projection heads read - DDP needs that)
        top = self.smooth[-1](self.lateral[-1](feats[-1]))
        outs = [top]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            top = self.smooth[i](lat + F.interpolate(top, size=lat.shape[-2:], mode="bilinear",
                                                     align_corners=False))
            outs.append(top)
        outs.reverse()
        return outs, self.classifier(outs[0])


def sample_at_pixels(fmap: Tensor, image_index: Tensor, uv: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Bilinear features (M, C) of `fmap` (I, C, h, w) at continuous input-image pixels `uv` (M, 2).

    `uv` is in the pixel frame of the network input (size `image_hw` = (H, W)), whatever the stride
    of `fmap`: with `align_corners=True` the normalised coordinate 2u/(W-1) - 1 puts input pixel
    centre 0 and W-1 on the first and last feature centres. Pairs of all images go through one
    `grid_sample` call, padded per image.
    """
    m = uv.shape[0]
    num_images, c = fmap.shape[:2]
    if m == 0:
        return fmap.new_zeros((0, c))
    h, w = image_hw
    image_index = image_index.long()
    counts = torch.bincount(image_index, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(image_index, stable=True)
    rank = torch.empty_like(image_index)
    rank[order] = torch.arange(m, device=uv.device) - starts[image_index[order]]
    norm = torch.stack([uv[:, 0] * (2.0 / max(w - 1, 1)) - 1.0, uv[:, 1] * (2.0 / max(h - 1, 1)) - 1.0], 1)
    grid = uv.new_zeros((num_images, int(counts.max()), 2))
    grid[image_index, rank] = norm.to(grid.dtype)
    out = F.grid_sample(fmap, grid[:, None].to(fmap.dtype), mode="bilinear", align_corners=True)
    return out[:, :, 0].permute(0, 2, 1)[image_index, rank]
