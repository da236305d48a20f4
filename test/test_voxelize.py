"""Voxelization: round trip point <-> voxel, agreement with a numpy reference, scatter_mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xkd_core.geometry.voxelize import scatter_mean, voxelize


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cloud(seed: int, n: int = 3000, batch_size: int = 3):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-5, 5, (n, 3)) * np.array([3.0, 2.0, 0.5])
    batch = np.sort(rng.integers(0, batch_size, n))
    xyz[batch == 1] += 100.0  # samples far apart: coordinates must still start at 0 per sample
    return torch.from_numpy(xyz), torch.from_numpy(batch)


def _numpy_reference(xyz: np.ndarray, batch: np.ndarray, vs: float):
    B = batch.max() + 1
    origin = np.stack([xyz[batch == b].min(0) for b in range(B)])
    q = np.floor((xyz - origin[batch]) / vs).astype(np.int64)
    rows = np.concatenate([batch[:, None], q], 1)
    uniq, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return uniq, inverse.reshape(-1), counts, origin


def test_every_point_lies_in_its_voxel_and_maps_are_consistent():
    xyz, batch = _cloud(0)
    vs = 0.25
    vox = voxelize(xyz, batch, vs)
    c = vox.coords.long()
    assert vox.coords.dtype == torch.int32 and vox.coords.shape[1] == 4
    assert int(c.min()) == 0
    assert len(torch.unique(c, dim=0)) == len(c)
    lo = vox.origin[c[vox.point2voxel, 0]] + vs * c[vox.point2voxel, 1:].double()
    assert bool((xyz >= lo - 1e-9).all()) and bool((xyz < lo + vs + 1e-9).all())
    assert torch.equal(c[vox.point2voxel, 0], batch)
    assert torch.equal(vox.point2voxel[vox.voxel2point], torch.arange(vox.num_voxels))
    assert torch.equal(vox.counts, torch.bincount(vox.point2voxel, minlength=vox.num_voxels))
    assert int(vox.counts.sum()) == len(xyz)
    # voxel2point is the first point of its voxel
    first = np.full(vox.num_voxels, len(xyz))
    np.minimum.at(first, vox.point2voxel.numpy(), np.arange(len(xyz)))
    assert np.array_equal(vox.voxel2point.numpy(), first)
    assert vox.spatial_shape == (c[:, 1:].max(0).values + 1).tolist()
    assert bool(((vox.centers()[vox.point2voxel] - xyz).abs() <= vs / 2 + 1e-9).all())


def test_matches_numpy_reference():
    xyz, batch = _cloud(1)
    vs = 0.4
    vox = voxelize(xyz, batch, vs)
    uniq, inverse, counts, origin = _numpy_reference(xyz.numpy(), batch.numpy(), vs)
    assert np.array_equal(vox.coords.numpy(), uniq)
    assert np.array_equal(vox.point2voxel.numpy(), inverse)
    assert np.array_equal(vox.counts.numpy(), counts)
    assert np.allclose(vox.origin.numpy(), origin)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 200), vs=st.floats(0.05, 2.0))
def test_round_trip_property(seed: int, n: int, vs: float):
    rng = np.random.default_rng(seed)
    xyz = torch.from_numpy(rng.normal(0, 3, (n, 3)).astype(np.float32))
    batch = torch.from_numpy(rng.integers(0, 2, n))
    vox = voxelize(xyz, batch, vs, batch_size=2)
    c = vox.coords.long()
    lo = vox.origin[c[vox.point2voxel, 0]].double() + vs * c[vox.point2voxel, 1:].double()
    assert bool((xyz.double() >= lo - 1e-6).all()) and bool((xyz.double() < lo + vs + 1e-6).all())
    assert torch.equal(vox.point2voxel[vox.voxel2point], torch.arange(vox.num_voxels))
    assert int(vox.counts.sum()) == n


def test_empty_sample_in_batch_and_bad_input():
    xyz, batch = _cloud(2, n=100, batch_size=1)
    vox = voxelize(xyz, batch, 0.5, batch_size=3)  # samples 1 and 2 have no points
    assert vox.batch_size == 3 and bool((vox.coords[:, 0] == 0).all())
    bad = xyz.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        voxelize(bad, batch, 0.5)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(xyz, batch, 0.0)
    with pytest.raises(ValueError, match="xyz must be"):
        voxelize(xyz[:, :2], batch, 0.5)
    with pytest.raises(ValueError, match="batch ids"):
        voxelize(xyz, batch + 5, 0.5, batch_size=2)
    with pytest.raises(ValueError, match="too large"):
        voxelize(xyz * 1e9, batch, 0.001)


def test_scatter_mean_matches_numpy_and_has_the_right_gradient():
    rng = np.random.default_rng(3)
    values = torch.from_numpy(rng.normal(size=(50, 3))).requires_grad_(True)
    index = torch.from_numpy(rng.integers(0, 7, 50))
    out = scatter_mean(values, index, 9)  # rows 7 and 8 receive nothing
    ref = np.zeros((9, 3))
    for r in range(9):
        sel = index.numpy() == r
        if sel.any():
            ref[r] = values.detach().numpy()[sel].mean(0)
    assert np.allclose(out.detach().numpy(), ref)
    out.sum().backward()
    counts = np.bincount(index.numpy(), minlength=9)
    assert np.allclose(values.grad.numpy(), (1.0 / counts[index.numpy()])[:, None].repeat(3, 1))
    with pytest.raises(ValueError, match="index must be"):
        scatter_mean(values, index[:-1], 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_sample_path_matches_the_batched_path_and_leaves_the_input_alone(dtype):
    # batch_size=1 takes a shortcut (one min/max pass, no per-point gather): same voxels as the
    # general path, which a second, empty sample forces
    xyz, batch = _cloud(4, n=2000, batch_size=1)
    xyz = xyz.to(dtype)
    before = xyz.clone()
    one = voxelize(xyz, batch, 0.3, batch_size=1)
    two = voxelize(xyz, batch, 0.3, batch_size=2)
    assert torch.equal(xyz, before)  # float64 input: no in-place arithmetic on the caller's tensor
    for name in ("coords", "point2voxel", "voxel2point", "counts"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    assert torch.equal(one.origin[0], two.origin[0]) and one.origin.dtype == dtype
    assert one.spatial_shape == two.spatial_shape == (one.coords[:, 1:].max(0).values + 1).tolist()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_sample_path_refuses_non_finite_and_foreign_batch_ids(bad):
    xyz, batch = _cloud(5, n=50, batch_size=1)
    dirty = xyz.clone()
    dirty[7, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        voxelize(dirty, batch, 0.5, batch_size=1)
    with pytest.raises(ValueError, match=r"batch ids must lie in \[0, 1\), got \[0, 1\]"):
        voxelize(xyz, batch.clone().index_fill_(0, torch.tensor([3]), 1), 0.5, batch_size=1)
    empty = voxelize(xyz[:0], batch[:0], 0.5, batch_size=1)
    assert empty.num_voxels == 0 and empty.origin.shape == (1, 3) and empty.spatial_shape == [1, 1, 1]
