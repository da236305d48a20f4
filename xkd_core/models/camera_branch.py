"""The 2D branch: a timm encoder (several scales), a light FPN decoder and pixel logits.

The camera branch only has to be good enough to teach the LiDAR branch appearance (paint, colour,
texture), so it is a stock timm backbone with `features_only=True` and a small top-down FPN; all FPN
levels have `fpn_dim` channels so any of them can feed a projection head. Its encoder starts from the
weights `image_pretrained` names (see `models/image_weights.py`) and sees images normalised the way
those weights were trained. `sample_at_pixels` reads features at continuous point projections with
`grid_sample(align_corners=True)`, the convention under which pixel centres sit at integer
coordinates (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xkd_core.data.collate import IMAGENET_MEAN, IMAGENET_STD
from xkd_core.models.image_weights import encoder_state_dict, input_normalisation, load_encoder_state


def build_encoder(backbone: str, pretrained: str, out_indices: Sequence[int], load_weights: bool = True
                  ) -> nn.Module:
    """timm `features_only` encoder with the weights `pretrained` names ("none", "hub", "imagenet" or a
    file path); `load_weights=False` builds the same network at random init (a checkpoint brings them)."""
    hub = load_weights and pretrained == "hub"
    try:
        encoder = timm.create_model(backbone, features_only=True, out_indices=tuple(out_indices),
                                    pretrained=hub)
    except Exception as exc:  # noqa: BLE001 - hub downloads fail with OSError, HTTP and hub errors
        if hub:
            raise RuntimeError(f"could not fetch hub weights for image backbone {backbone!r} "
                               f"(offline? use image_pretrained: none, imagenet or a local file): {exc}"
                               ) from exc
        raise
    if load_weights and pretrained not in ("none", "hub"):
        state, source = encoder_state_dict(backbone, pretrained)
        load_encoder_state(encoder, state, source, backbone)
    return encoder


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class CameraBranch(nn.Module):
    """timm encoder + FPN; `forward(images)` -> (per-level features, pixel logits at the finest level).

    Images arrive normalised with the ImageNet statistics (`xkd_core.data.collate.normalize_images`);
    weights trained with other statistics (the TF-trained EfficientNet-Lite of `imagenet`: mean and
    std 0.5) get them re-normalised here, one per-channel affine map, so training and inference agree
    whatever the data pipeline does.
    """

    def __init__(self, backbone: str, pretrained: str, out_indices: Sequence[int], fpn_dim: int,
                 num_classes: int, load_weights: bool = True) -> None:
        super().__init__()
        self.encoder = build_encoder(backbone, pretrained, out_indices, load_weights)
        mean, std = input_normalisation(backbone, pretrained)
        given_mean = torch.from_numpy(IMAGENET_MEAN).double()
        given_std = torch.from_numpy(IMAGENET_STD).double()
        want_mean, want_std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        #: x -> (x * std_given + mean_given - mean_want) / std_want, skipped when the two agree (ImageNet)
        self.renormalise = not (torch.allclose(given_mean, want_mean) and torch.allclose(given_std, want_std))
        # not persistent: derived from the config, so checkpoints keep the same keys
        self.register_buffer("input_scale", (given_std / want_std).float()[None, :, None, None],
                             persistent=False)
        shift = (given_mean - want_mean) / want_std
        self.register_buffer("input_shift", shift.float()[None, :, None, None], persistent=False)
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

    def encoder_input(self, images: Tensor) -> Tensor:
        """ImageNet-normalised images (I, 3, H, W) -> normalised as the encoder's weights expect."""
        if not self.renormalise:
            return images
        return images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Images (I, 3, H, W) ImageNet-normalised -> FPN levels [(I, fpn_dim, h_l, w_l)], finest first,
        and pixel logits (I, C, h_0, w_0)."""
        feats = self.encoder(self.encoder_input(images))
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
