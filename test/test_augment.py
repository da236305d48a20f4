"""Augmentation keeps point-pixel pairs exact: proven with id images and re-projection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xkd_core.config import ConfigError, from_dict
from xkd_core.data.frame import CameraView
from xkd_core.geometry.augment import (
    ImageAugConfig,
    PointAugConfig,
    ViewAugParams,
    apply_view_aug,
    augment_points,
    augment_view,
    colour_jitter,
    resize_view,
    sample_point_transform,
    sample_view_aug,
    transform_points,
    warp_image,
)
from xkd_core.geometry.projection import point_pixel_pairs, project, views_of

H0, W0 = 60, 90
K0 = np.array([[60.0, 0.0, 44.5], [0.0, 60.0, 29.5], [0.0, 0.0, 1.0]])
T0 = np.array([[0.0, -1.0, 0.0, 0.1], [0.0, 0.0, -1.0, -0.3], [1.0, 0.0, 0.0, 0.2], [0.0, 0.0, 0.0, 1.0]])
FULL_POINT_AUG = PointAugConfig(rotate_z=True, flip_x=0.5, flip_y=0.5, scale=(0.9, 1.1), translate_std=0.5)


def id_image() -> np.ndarray:
    """Each pixel's id (v * W0 + u + 1) written into its RGB bytes, so any warp can be traced back."""
    ids = np.arange(1, H0 * W0 + 1, dtype=np.uint32).reshape(H0, W0)
    return np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], axis=-1).astype(np.uint8)


def decode(rgb: np.ndarray) -> np.ndarray:
    """Pixel ids of an id image; returns (u, v) of the source pixel, shape (..., 2)."""
    ids = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    assert (ids >= 1).all(), "every output pixel must come from some source pixel"
    return np.stack([(ids - 1) % W0, (ids - 1) // W0], axis=-1)


def backproject(uv: np.ndarray, depth: np.ndarray, K: np.ndarray = K0, T: np.ndarray = T0) -> np.ndarray:
    """LiDAR points (N, 4) that land exactly on pixels `uv` at `depth` (intensity = point index)."""
    cam = np.linalg.solve(K, np.column_stack([uv, np.ones(len(uv))]).T).T * depth[:, None]
    xyz = (np.linalg.inv(T) @ np.column_stack([cam, np.ones(len(cam))]).T).T[:, :3]
    return np.column_stack([xyz, np.arange(len(xyz))]).astype(np.float32)


def hand_matrix(p: ViewAugParams) -> np.ndarray:
    """B from the conventions: crop u -> u - x0, resize u -> (u + 0.5) s - 0.5, flip u -> W - 1 - u."""
    sx, sy = p.out_w / p.crop_w, p.out_h / p.crop_h
    B = np.array([[sx, 0.0, (0.5 - p.x0) * sx - 0.5], [0.0, sy, (0.5 - p.y0) * sy - 0.5], [0.0, 0.0, 1.0]])
    if p.flip:
        B = np.array([[-1.0, 0.0, p.out_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ B
    return B


def apply_b(B: np.ndarray, uv: np.ndarray) -> np.ndarray:
    return uv @ B[:2, :2].T + B[:2, 2]


# ------------------------------------------------------------------------------------------ configs


def test_configs_validate_ranges():
    with pytest.raises(ValueError, match="flip_x"):
        PointAugConfig(flip_x=1.5)
    with pytest.raises(ValueError, match="scale"):
        PointAugConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="translate_std"):
        PointAugConfig(translate_std=-0.1)
    with pytest.raises(ValueError, match="crop_scale"):
        ImageAugConfig(crop_scale=(0.5, 1.2))
    with pytest.raises(ValueError, match="out_hw"):
        ImageAugConfig(out_hw=(0, 64))
    with pytest.raises(ValueError, match="hflip"):
        ImageAugConfig(hflip=-0.1)
    with pytest.raises(ValueError, match="saturation"):
        ImageAugConfig(saturation=1.5)
    with pytest.raises(ValueError, match="hue"):
        ImageAugConfig(hue=0.6)


def test_configs_load_from_yaml_mappings():
    cfg = from_dict(ImageAugConfig, {"crop_scale": [0.5, 1.0], "out_hw": [48, 64], "hflip": 0.5})
    assert cfg.crop_scale == (0.5, 1.0) and cfg.out_hw == (48, 64) and cfg.hflip == 0.5
    pcfg = from_dict(PointAugConfig, {"rotate_z": True, "scale": [0.95, 1.05]})
    assert pcfg.rotate_z and pcfg.scale == (0.95, 1.05)
    with pytest.raises(ConfigError, match="hflip"):
        from_dict(ImageAugConfig, {"hflip": 2.0})
    with pytest.raises(ConfigError, match="flip_z"):
        from_dict(PointAugConfig, {"flip_z": 0.5})


# ------------------------------------------------------------------------------------------ points


def test_point_transform_draws():
    rng = np.random.default_rng(0)
    assert np.array_equal(sample_point_transform(rng, PointAugConfig()), np.eye(4))
    assert np.array_equal(sample_point_transform(rng, PointAugConfig(flip_x=1.0)), np.diag([-1.0, 1, 1, 1]))
    assert np.array_equal(sample_point_transform(rng, PointAugConfig(flip_y=1.0)), np.diag([1.0, -1, 1, 1]))
    scaled = sample_point_transform(rng, PointAugConfig(scale=(2.0, 2.0)))
    assert np.array_equal(scaled, np.diag([2.0, 2, 2, 1]))
    yaws = []
    for _ in range(20):
        A = sample_point_transform(rng, PointAugConfig(rotate_z=True))
        R = A[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(R), 1.0) and np.allclose(R[2], [0, 0, 1]) and np.allclose(A[:3, 3], 0)
        yaws.append(np.arctan2(R[1, 0], R[0, 0]))
    assert np.ptp(yaws) > 1.0  # really random
    A = sample_point_transform(rng, PointAugConfig(translate_std=1.0))
    assert np.array_equal(A[:3, :3], np.eye(3)) and np.linalg.norm(A[:3, 3]) > 0


def test_point_augmentation_keeps_every_projection():
    rng = np.random.default_rng(3)
    n = 400
    # pixels over and beyond the image, never within 0.25 px of a border, depths 2..40 m (some behind)
    uv = np.column_stack([rng.integers(-20, W0 + 20, n), rng.integers(-20, H0 + 20, n)]) + 0.25
    depth = rng.uniform(2, 40, n) * np.where(rng.random(n) < 0.1, -1, 1)
    pts = backproject(uv, depth)
    view = CameraView(np.zeros((H0, W0, 3), np.uint8), K0, T0, "cam")
    before = point_pixel_pairs(pts, views_of([view]))
    assert 100 < len(before) < n
    for seed in range(5):
        new_pts, new_views = augment_points(pts, [view], np.random.default_rng(seed), FULL_POINT_AUG)
        assert new_pts.dtype == np.float32 and new_pts.shape == pts.shape
        assert np.array_equal(new_pts[:, 3], pts[:, 3])  # intensity untouched
        assert np.abs(new_pts[:, :3] - pts[:, :3]).max() > 0.1  # the cloud really moved
        assert np.array_equal(new_views[0].K, K0) and new_views[0].image is view.image
        after = point_pixel_pairs(new_pts, views_of(new_views))
        assert np.array_equal(after.point, before.point)
        np.testing.assert_allclose(after.uv, before.uv, atol=2e-3)
    assert np.array_equal(view.T, T0)  # the input view is not modified


def test_transform_points_updates_T_with_inverse():
    A = sample_point_transform(np.random.default_rng(1), FULL_POINT_AUG)
    view = CameraView(np.zeros((2, 2, 3), np.uint8), K0, T0, "c")
    pts = np.array([[5.0, 1.0, 0.5, 0.3]])
    new_pts, (new_view,) = transform_points(pts, [view], A)
    np.testing.assert_allclose(new_pts[0, :3], (A @ [5.0, 1.0, 0.5, 1.0])[:3])
    np.testing.assert_allclose(new_view.T @ A, T0, atol=1e-12)
    with pytest.raises(ValueError, match="A must be"):
        transform_points(pts, [view], np.eye(3))


# ------------------------------------------------------------------------------------------ images


def _pixel_grid(us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    return np.stack(np.meshgrid(us, vs), axis=-1).reshape(-1, 2).astype(np.float64)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "params_kw, us, vs, jitter",
    [
        # shrink by 3 after a crop at multiples of 3: source pixels x0 + 1 + 3k land exactly on pixel k
        # (grid kept one output pixel away from the border so the sub-pixel jitter cannot push it out)
        (dict(x0=3, y0=6, crop_w=63, crop_h=36, out_w=21, out_h=12),
         np.arange(7, 63, 3), np.arange(10, 39, 3), 0.4),
        # enlarge by 3: every source pixel u lands exactly on 3 (u - x0) + 1
        (dict(x0=10, y0=5, crop_w=20, crop_h=15, out_w=60, out_h=45),
         np.arange(10, 30), np.arange(5, 20), 0.16),
    ],
)
def test_pairs_are_exact_after_crop_resize_flip(params_kw, us, vs, jitter, flip):
    """Each recomputed pair's pixel in the augmented image holds exactly the point's original pixel."""
    rng = np.random.default_rng(7)
    inside = _pixel_grid(us, vs)
    outside = np.array([[0.0, 0.0], [W0 - 1.0, H0 - 1.0], [1.0, 30.0], [80.0, 2.0], [45.0, 58.0]])
    uv0 = np.vstack([inside, outside])
    uv0 += rng.uniform(-jitter, jitter, uv0.shape)  # sub-pixel positions that still round to the pixel
    pts = backproject(uv0, rng.uniform(3, 50, len(uv0)))
    orig_view = CameraView(id_image(), K0, T0, "cam2")
    uv_orig, _ = project(pts, K0, T0)
    np.testing.assert_allclose(uv_orig, uv0, atol=1e-3)
    src_pixel = np.rint(uv_orig).astype(np.int64)

    params = ViewAugParams(**params_kw, flip=flip)
    # points first (with T update), then the image (with K update); pairs recomputed from scratch
    aug_pts, (v,) = augment_points(pts, [orig_view], np.random.default_rng(11), FULL_POINT_AUG)
    v = apply_view_aug(v, params, interpolation=cv2.INTER_NEAREST_EXACT)
    assert v.hw == (params.out_h, params.out_w)
    pairs = point_pixel_pairs(aug_pts, views_of([v]))

    # exactly the points of the inner grid pair up (outside points are cropped away)
    assert pairs.point.tolist() == list(range(len(inside)))
    # re-projection equals B applied to the original projection
    B = hand_matrix(params)
    np.testing.assert_allclose(pairs.uv, apply_b(B, uv_orig[pairs.point]), atol=2e-3)
    np.testing.assert_allclose(v.K, B @ K0, atol=1e-12)
    # the augmented id image at each pair's pixel names the point's original pixel
    px = pairs.pixel()
    got = decode(v.image[px[:, 1], px[:, 0]])
    assert np.array_equal(got, src_pixel[pairs.point])


def test_random_augmentation_pairs_trace_back_to_the_point():
    """Random crop/resize/flip (non-integer scales): each pair's pixel comes from near its point."""
    rng = np.random.default_rng(5)
    n = 600
    uv0 = np.column_stack([rng.uniform(-5, W0 + 5, n), rng.uniform(-5, H0 + 5, n)])
    pts = backproject(uv0, rng.uniform(2, 60, n))
    rgb_view = CameraView(rng.integers(0, 256, (H0, W0, 3), dtype=np.uint8), K0, T0, "cam2")
    cfg = ImageAugConfig(crop_scale=(0.4, 0.95), out_hw=(40, 64), hflip=0.5, brightness=0.3, contrast=0.3,
                         saturation=0.3, hue=0.05)
    uv_orig, _ = project(pts, K0, T0)
    checked = 0
    flips = set()
    for seed in range(8):
        params = sample_view_aug(np.random.default_rng(seed), cfg, rgb_view.hw)
        flips.add(params.flip)
        aug = augment_view(rgb_view, np.random.default_rng(seed), cfg)
        assert aug.image.shape == (40, 64, 3) and aug.image.dtype == np.uint8
        assert np.array_equal(aug.T, T0) and aug.name == "cam2"
        # the same geometric draw applied to the id image (no colour jitter on ids)
        ids = warp_image(id_image(), params, interpolation=cv2.INTER_NEAREST_EXACT)
        B = hand_matrix(params)
        np.testing.assert_allclose(aug.K, B @ K0, atol=1e-12)

        pairs = point_pixel_pairs(pts, views_of([aug]))
        expect = apply_b(B, uv_orig)
        inside = (expect[:, 0] >= 0) & (expect[:, 0] <= 63) & (expect[:, 1] >= 0) & (expect[:, 1] <= 39)
        assert pairs.point.tolist() == np.flatnonzero(inside).tolist()
        np.testing.assert_allclose(pairs.uv, expect[pairs.point], atol=2e-3)

        px = pairs.pixel()
        src = decode(ids[px[:, 1], px[:, 0]])
        # the output pixel's content is the source pixel nearest to its pre-image ...
        pre = apply_b(np.linalg.inv(B), px.astype(np.float64))
        assert (np.abs(src - pre) <= 0.5 + 1e-6).all()
        # ... which lies within half an output pixel (in source units) plus rounding of the point itself
        scale = np.array([params.out_w / params.crop_w, params.out_h / params.crop_h])
        assert (np.abs(src - uv_orig[pairs.point]) <= 0.5 + 0.5 / scale + 1e-6).all()
        checked += len(pairs)
    assert checked > 1000 and flips == {False, True}


def test_augment_view_is_a_draw_then_apply():
    view = CameraView(np.random.default_rng(0).integers(0, 256, (H0, W0, 3), dtype=np.uint8), K0, T0, "c")
    cfg = ImageAugConfig(crop_scale=(0.5, 0.9), hflip=0.5, brightness=0.2)
    a = augment_view(view, np.random.default_rng(4), cfg, out_hw=(30, 50))
    b = apply_view_aug(view, sample_view_aug(np.random.default_rng(4), cfg, view.hw, (30, 50)))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.K, b.K)
    assert a.image.shape == (30, 50, 3)
    # out_hw argument overrides the config, no out_hw anywhere keeps the input size
    cfg_hw = ImageAugConfig(out_hw=(20, 20))
    assert augment_view(view, np.random.default_rng(1), cfg_hw, (10, 12)).hw == (10, 12)
    assert augment_view(view, np.random.default_rng(1), cfg_hw).hw == (20, 20)
    assert augment_view(view, np.random.default_rng(1), ImageAugConfig(crop_scale=(0.5, 0.5))).hw == (H0, W0)
    # the identity config returns the same pixels and calibration
    same = augment_view(view, np.random.default_rng(2), ImageAugConfig())
    assert np.array_equal(same.image, view.image) and np.array_equal(same.K, K0)


def test_resize_view_hand_computed_K():
    view = CameraView(np.zeros((H0, W0, 3), np.uint8), K0, T0, "c")
    half = resize_view(view, (30, 45))
    assert half.hw == (30, 45)
    # s = 0.5: f -> 30, c -> (c + 0.5) * 0.5 - 0.5
    np.testing.assert_allclose(half.K, [[30.0, 0, 22.0], [0, 30.0, 14.5], [0, 0, 1]])
    np.testing.assert_allclose(half.T, T0)
    up = resize_view(view, (120, 270))  # sx = 3, sy = 2
    np.testing.assert_allclose(up.K, [[180.0, 0, 134.5], [0, 120.0, 59.5], [0, 0, 1]])
    with pytest.raises(ValueError, match="out_hw"):
        resize_view(view, (0, 10))


def test_warp_image_rejects_bad_crops_and_plain_nearest():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="crop box"):
        warp_image(img, ViewAugParams(x0=5, y0=0, crop_w=8, crop_h=8, out_h=8, out_w=8))
    with pytest.raises(ValueError, match="INTER_NEAREST_EXACT"):
        warp_image(img, ViewAugParams(x0=0, y0=0, crop_w=8, crop_h=8, out_h=4, out_w=4), cv2.INTER_NEAREST)


def test_colour_jitter_factors():
    flat = np.full((4, 4, 3), 100, np.uint8)
    base = dict(x0=0, y0=0, crop_w=4, crop_h=4, out_h=4, out_w=4)
    assert (colour_jitter(flat, ViewAugParams(**base, brightness=1.2)) == 120).all()
    # a flat image has no contrast to scale
    assert (colour_jitter(flat, ViewAugParams(**base, contrast=0.3)) == 100).all()
    ramp = np.repeat(np.arange(0, 160, 10, dtype=np.uint8).reshape(4, 4, 1), 3, axis=2)
    flat_out = colour_jitter(ramp, ViewAugParams(**base, contrast=0.0))
    assert np.ptp(flat_out) <= 1 and abs(int(flat_out[0, 0, 0]) - 75) <= 1  # all pixels at the mean
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 0] = 200
    colour[..., 2] = 40
    grey = colour_jitter(colour, ViewAugParams(**base, saturation=0.0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    shifted = colour_jitter(red, ViewAugParams(**base, hue=1.0 / 3.0))  # red -> green
    assert (shifted[..., 1] > 200).all() and (shifted[..., 0] < 30).all() and (shifted[..., 2] < 30).all()
    assert colour_jitter(red, ViewAugParams(**base)) is red
