"""The 3D branch: a MinkUNet / SPVCNN-style sparse UNet on the spconv 2.x API.

Encoder level `s` works at stride 2^s (level 0 = the input voxels): strided `SparseConv3d`
(kernel 2, stride 2) goes down, `SubMConv3d` residual blocks work within a level, and
`SparseInverseConv3d` with the down-convolution's `indice_key` comes back up onto exactly the
encoder's voxels, so skip connections are a feature concatenation. The network returns the decoder
output of every level (and the bottleneck), because xModel-KD aligns 3D and 2D features at several
scales; `point_rows_at_level` maps points to their voxel rows at any level by hashing coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from xkd_core.models.sparse_backend import Backend, conv_algo, get_spconv, set_conv_algo


class ResidualBlock(nn.Module):
    """Two 3x3x3 submanifold convolutions with BatchNorm, ReLU and an identity (or 1x1x1) shortcut."""

    def __init__(self, sp: ModuleType, cin: int, cout: int, indice_key: str, algo: Any) -> None:
        super().__init__()
        self.conv1 = sp.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=indice_key, algo=algo)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = sp.SubMConv3d(cout, cout, 3, padding=1, bias=False, indice_key=indice_key, algo=algo)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = (
            None if cin == cout
            else sp.SubMConv3d(cin, cout, 1, bias=False, indice_key=indice_key + "_1x1", algo=algo)
        )
        self.shortcut_bn = None if cin == cout else nn.BatchNorm1d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Any) -> Any:
        y = self.conv1(x)
        y = y.replace_feature(self.relu(self.bn1(y.features)))
        y = self.conv2(y)
        if self.shortcut is None:
            identity = x.features
        else:
            identity = self.shortcut_bn(self.shortcut(x).features)
        return y.replace_feature(self.relu(self.bn2(y.features) + identity))


class SparseUNet(nn.Module):
    """Sparse UNet; `forward` returns one `SparseConvTensor` per level, index = log2(stride).

    `channels[s]` is the encoder width at level s (len(channels) - 1 downsamplings), `decoder_channels[s]`
    the decoder output width at level s < L; level L (the bottleneck) is returned as is.
    `blocks` residual blocks follow every down and up step.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], decoder_channels: Sequence[int],
                 blocks: int = 1, backend: Backend = "auto",
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        depth = len(channels) - 1
        if depth < 1 or len(decoder_channels) != depth:
            raise ValueError(f"SparseUNet: need len(channels) >= 2 and len(decoder_channels) == "
                             f"len(channels) - 1, got {list(channels)} / {list(decoder_channels)}")
        if blocks < 1 or min(channels) < 1 or min(decoder_channels) < 1:
            raise ValueError("SparseUNet: blocks and channel counts must be >= 1")
        device = torch.device(device) if device is not None else torch.device("cpu")
        sp = get_spconv(backend, device)
        self._sp = sp
        self._algo_device = device.type
        algo = conv_algo(sp, device)
        self.depth = depth
        #: channels of the tensor returned for each level (decoder levels, then the bottleneck)
        self.level_channels: list[int] = list(decoder_channels) + [channels[-1]]

        c0 = channels[0]
        self.stem = sp.SparseSequential(
            sp.SubMConv3d(in_channels, c0, 3, padding=1, bias=False, indice_key="subm0", algo=algo),
            nn.BatchNorm1d(c0), nn.ReLU(inplace=True),
        )
        self.enc0 = nn.ModuleList(ResidualBlock(sp, c0, c0, "subm0", algo) for _ in range(blocks))
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        for s in range(1, depth + 1):
            cin, cout = channels[s - 1], channels[s]
            self.down.append(sp.SparseSequential(
                sp.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=f"down{s}", algo=algo),
                nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
            ))
            self.enc.append(nn.ModuleList(
                ResidualBlock(sp, cout, cout, f"subm{s}", algo) for _ in range(blocks)
            ))
        # decoder, coarsest first: up[k] goes from level depth-k to level depth-k-1
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = channels[-1]
        for s in range(depth - 1, -1, -1):
            cout = decoder_channels[s]
            self.up.append(sp.SparseSequential(
                sp.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key=f"down{s + 1}", algo=algo),
                nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
            ))
            blocks_s = [ResidualBlock(sp, cout + channels[s], cout, f"subm{s}", algo)]
            blocks_s += [ResidualBlock(sp, cout, cout, f"subm{s}", algo) for _ in range(blocks - 1)]
            self.dec.append(nn.ModuleList(blocks_s))
            cin = cout

    @property
    def spconv(self) -> ModuleType:
        """The `spconv.pytorch`-compatible module the layers come from."""
        return self._sp

    def forward(self, features: Tensor, coords: Tensor, spatial_shape: Sequence[int],
                batch_size: int) -> list[Any]:
        """Voxel features (V, in) at `coords` (V, 4) int32 [b, x, y, z] -> [level 0 .. level L] tensors."""
        if features.device.type != self._algo_device:
            set_conv_algo(self, self._sp, features.device)
            self._algo_device = features.device.type
        # every level must halve exactly, or border voxels would fall off the strided convolutions
        m = 1 << self.depth
        shape = [((int(s) + m - 1) // m) * m for s in spatial_shape]
        x = self._sp.SparseConvTensor(features, coords.int(), shape, batch_size)
        x = _chain(self.enc0, self.stem(x))
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = _chain(enc, down(x))
            skips.append(x)
        levels: list[Any] = [None] * (self.depth + 1)
        levels[self.depth] = x
        for k, (up, dec) in enumerate(zip(self.up, self.dec)):
            s = self.depth - 1 - k
            y = up(x)
            y = y.replace_feature(torch.cat([y.features, skips[s].features], dim=1))
            x = _chain(dec, y)
            levels[s] = x
        return levels


def _chain(blocks: nn.ModuleList, x: Any) -> Any:
    for block in blocks:
        x = block(x)
    return x


def point_rows_at_level(level_indices: Tensor, point_coords: Tensor, level: int) -> Tensor:
    """Row of `level_indices` (V_s, 4) [b, x, y, z] at stride 2^level holding each point.

    `point_coords` (N, 4) are the points' level-0 voxel coordinates. A stride-2 kernel-2 convolution
    maps voxel c to c // 2, so a point's voxel at level s is `c >> s`; rows are found by sorting a
    linear key of the level's voxels and `searchsorted` (no Python loop). Every point must find its
    voxel, else the coordinates do not belong to this network pass (RuntimeError).
    """
    if point_coords.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=point_coords.device)
    lv = level_indices.long()
    q = point_coords.long().clone()
    q[:, 1:] = q[:, 1:] >> level
    dims = torch.maximum(lv.max(0).values, q.max(0).values) + 1
    scale = torch.tensor([dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1], device=lv.device)
    keys = (lv * scale).sum(1)
    qkeys = (q * scale).sum(1)
    sorted_keys, order = torch.sort(keys)
    pos = torch.searchsorted(sorted_keys, qkeys).clamp_max(len(sorted_keys) - 1)
    if not bool((sorted_keys[pos] == qkeys).all()):
        raise RuntimeError(f"point_rows_at_level: some points have no voxel at level {level}")
    return order[pos]
