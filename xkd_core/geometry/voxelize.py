"""Points -> sparse voxels (and back) in torch, on whatever device the points live.

The 3D network needs integer voxel coordinates for spconv, and every per-point output (logits,
features at several scales) is read back through `point2voxel`; both come from one `torch.unique`
over a linear voxel key, so there is no Python loop over points and the GPU path is the CPU path.

Coordinates are `[batch, x, y, z]` (int32, non-negative) relative to each sample's own minimum
corner: voxel `(x, y, z)` of sample `b` covers `origin[b] + voxel_size * [x, x+1) x [y, y+1) x [z, z+1)`
with `origin[b]` the per-axis minimum of that sample's points. `spatial_shape` is `[X, Y, Z]`, the
per-axis maximum coordinate + 1 over the batch, in the same axis order as `coords[:, 1:]` (spconv
only needs the two to agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Largest linear key used for the voxel hash; keeps `batch * X * Y * Z` exact in int64.
_MAX_KEY = 1 << 62


@dataclass
class Voxels:
    """The occupied voxels of a batch of clouds and the point <-> voxel maps."""

    coords: Tensor  # (V, 4) int32 [batch, x, y, z], sorted lexicographically, unique
    point2voxel: Tensor  # (N,) int64 row of `coords` holding each point
    voxel2point: Tensor  # (V,) int64 one point (the first, in input order) of each voxel
    counts: Tensor  # (V,) int64 points per voxel
    origin: Tensor  # (B, 3) float, per-sample minimum corner (voxel (0, 0, 0) starts here)
    spatial_shape: list[int]  # [X, Y, Z]
    batch_size: int
    voxel_size: float

    @property
    def num_voxels(self) -> int:
        """Number of occupied voxels V."""
        return int(self.coords.shape[0])

    def centers(self) -> Tensor:
        """(V, 3) metric centre of every voxel, in the input frame."""
        xyz = self.coords[:, 1:].to(self.origin.dtype)
        return self.origin[self.coords[:, 0].long()] + (xyz + 0.5) * self.voxel_size


def voxelize(xyz: Tensor, batch: Tensor, voxel_size: float, batch_size: int | None = None) -> Voxels:
    """Assign points (N, 3) with sample ids `batch` (N,) int64 to voxels of edge `voxel_size` metres.

    `batch_size` defaults to `batch.max() + 1`; samples with no points get a zero origin and no
    voxels. Non-finite coordinates are refused (drop them first, as `prepare_sample` does).
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"voxelize: xyz must be (N, 3), got {tuple(xyz.shape)}")
    if batch.shape != (xyz.shape[0],):
        raise ValueError(f"voxelize: batch must be (N,) = ({xyz.shape[0]},), got {tuple(batch.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"voxelize: voxel_size must be > 0, got {voxel_size}")
    if not xyz.is_floating_point():
        raise ValueError(f"voxelize: xyz must be a float tensor, got {xyz.dtype}")
    n = xyz.shape[0]
    device = xyz.device
    batch = batch.to(device=device, dtype=torch.int64)
    if n == 0:
        batch_size = batch_size or 0
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return Voxels(torch.zeros((0, 4), dtype=torch.int32, device=device), none, none, none,
                      xyz.new_zeros((batch_size, 3)), [1, 1, 1], int(batch_size), float(voxel_size))
    # Host syncs stall a GPU pipeline, so the checks read their values together: one sync for a
    # single sample; for a batch, one for the batch ids (before anything is scattered by them) and
    # one for the grid shape and finiteness.
    if batch_size != 1:
        ids = torch.stack(torch.aminmax(batch)).tolist()
        if batch_size is None:
            batch_size = int(ids[1]) + 1
        _check_batch_ids(ids, batch_size)
    if batch_size == 1:
        # One sample (inference): the corner and the grid extent come from one min/max pass, which
        # is also the finiteness check (min/max propagate NaN), and no per-point gather is needed.
        lo, hi = torch.aminmax(xyz, dim=0)
        origin = lo[None]
        q = _voxel_index(xyz, origin, voxel_size)
        extent = _voxel_index(hi[None], origin, voxel_size)[0] + 1  # floor is monotonic: max q
        finite = torch.isfinite(lo).all() & torch.isfinite(hi).all()
        ids = torch.stack(torch.aminmax(batch))
        *shape, b_lo, b_hi, ok = torch.cat([extent, ids, finite.view(1)]).tolist()
        _check_batch_ids([b_lo, b_hi], 1)
    else:
        origin = torch.full((batch_size, 3), float("inf"), dtype=xyz.dtype, device=device)
        origin = origin.scatter_reduce(0, batch[:, None].expand(-1, 3), xyz, reduce="amin", include_self=True)
        origin = torch.where(torch.isfinite(origin), origin, torch.zeros_like(origin))
        q = _voxel_index(xyz, origin[batch], voxel_size)
        *shape, ok = torch.cat([q.max(dim=0).values + 1, torch.isfinite(xyz).all().view(1)]).tolist()
    if not ok:
        raise ValueError("voxelize: xyz holds non-finite values; drop them before voxelizing")
    X, Y, Z = (int(s) for s in shape)
    grid = max(batch_size, 1) * X * Y * Z
    if grid >= _MAX_KEY or max(X, Y, Z) >= 2**31:
        raise ValueError(f"voxelize: grid {X}x{Y}x{Z} at voxel_size={voxel_size} is too large; "
                         "filter far points or use a larger voxel_size")
    # key = ((batch * X + x) * Y + y) * Z + z, built in place; int32 when it fits (sorts ~2x faster)
    key = q[:, 0] * (Y * Z)
    key.add_(q[:, 1], alpha=Z).add_(q[:, 2])
    if batch_size > 1:
        key.add_(batch, alpha=X * Y * Z)
    if grid < 2**31:
        key = key.to(torch.int32)
    _, point2voxel, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    v = counts.shape[0]
    first = torch.full((v,), n, dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, point2voxel, torch.arange(n, device=device), reduce="amin")
    # every point of a voxel has the voxel's coordinates: read them at its first point
    coords = torch.empty((v, 4), dtype=torch.int32, device=device)
    coords[:, 0] = batch[first]
    coords[:, 1:] = q[first]
    return Voxels(coords, point2voxel, first, counts, origin, [X, Y, Z], int(batch_size), float(voxel_size))


def _check_batch_ids(lo_hi: list[int], batch_size: int) -> None:
    lo, hi = (int(v) for v in lo_hi)
    if lo < 0 or hi >= batch_size:
        raise ValueError(f"voxelize: batch ids must lie in [0, {batch_size}), got [{lo}, {hi}]")


def _voxel_index(xyz: Tensor, origin: Tensor, voxel_size: float) -> Tensor:
    """floor((xyz - origin) / voxel_size) in float64, so a point exactly on a voxel face lands in the
    upper voxel; clamped at 0 because rounding can only push the minimum point itself below it."""
    rel = xyz.double() - origin.double()  # a new tensor: the in-place steps below never touch xyz
    return rel.div_(voxel_size).floor_().long().clamp_min_(0)


def scatter_mean(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Mean of the rows of `values` (N, C) that share an `index` (N,) in [0, size); empty rows are 0.

    Differentiable in `values` (index_add_), which is what pooling point features into voxels and
    averaging a point's features over several camera views need.
    """
    if values.ndim != 2:
        raise ValueError(f"scatter_mean: values must be (N, C), got {tuple(values.shape)}")
    if index.shape != (values.shape[0],):
        raise ValueError(f"scatter_mean: index must be (N,) = ({values.shape[0]},), got {tuple(index.shape)}")
    index = index.to(device=values.device, dtype=torch.int64)
    total = values.new_zeros((size, values.shape[1])).index_add_(0, index, values)
    count = torch.bincount(index, minlength=size)[:size].clamp_min(1).to(values.dtype)
    return total / count[:, None]
