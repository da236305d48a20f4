"""Small per-point heads of xModel-KD: classifiers, projection heads and the fused head.

They work on rows of points or point-pixel pairs whose number changes from batch to batch (and can
be 1), so they use LayerNorm rather than BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xkd_core.classes import IGNORE_INDEX


def labels_from_logits(logits: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Learning ids from (N, C) logits or log-probabilities; the ignore class is never predicted (as in
    `Segmenter`)."""
    scores = logits.detach().float().clone()
    scores[:, ignore_index] = float("-inf")
    return scores.argmax(dim=1)


def mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(cin, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, cout))


class ProjectionHead(nn.Module):
    """Maps one branch's features at one scale into the shared D-dim space, L2-normalised."""

    def __init__(self, cin: int, embed_dim: int) -> None:
        super().__init__()
        self.net = mlp(cin, max(cin, embed_dim), embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


class FusionHead(nn.Module):
    """Classifies a paired point from its 3D feature and its (view-averaged) 2D feature together."""

    def __init__(self, dim_3d: int, dim_2d: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = mlp(dim_3d + dim_2d, hidden, num_classes)

    def forward(self, f3d: Tensor, f2d: Tensor) -> Tensor:
        return self.net(torch.cat([f3d, f2d.to(f3d.dtype)], dim=1))


class PointHead(nn.Module):
    """Per-point refinement (SPVCNN-style point branch) plus the 3D classifier.

    Points sharing a voxel get the voxel's decoder feature plus an MLP of their own raw input, so
    they can still be told apart (a lane marking in a road voxel).
    """

    def __init__(self, point_in: int, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.point_mlp = mlp(point_in, feat_dim, feat_dim)
        self.classifier = nn.Sequential(nn.LayerNorm(feat_dim), nn.ReLU(inplace=True),
                                        nn.Linear(feat_dim, num_classes))

    def features(self, voxel_feat: Tensor, point_in: Tensor) -> Tensor:
        """(N, feat_dim) per-point features."""
        return voxel_feat + self.point_mlp(point_in)

    def forward(self, point_feat: Tensor) -> Tensor:
        return self.classifier(point_feat)
