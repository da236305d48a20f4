"""prepare_sample / collate: finite filtering, exact pairs after augmentation, global batch indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import camera, random_frame

from xkd_core.data.collate import IMAGENET_MEAN, IMAGENET_STD, collate, prepare_sample
from xkd_core.geometry.augment import ImageAugConfig, PointAugConfig
from xkd_core.geometry.projection import project


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_non_finite_points_are_dropped_and_tracked():
    rng = np.random.default_rng(0)
    frame = random_frame(rng, n=300, views=[camera(rng)])
    frame.points[[3, 10, 11], [0, 2, 3]] = [np.nan, np.inf, -np.inf]
    s = prepare_sample(frame, train=False, rng=None, point_aug=None, image_aug=None, image_hw=(20, 40),
                       use_camera=True)
    assert s.num_input_points == 300 and len(s.points) == 297
    assert not np.isin([3, 10, 11], s.kept_index).any()
    assert np.array_equal(s.points, frame.points[s.kept_index])
    assert np.array_equal(s.labels, frame.labels[s.kept_index])
    assert s.images[0].shape == (20, 40, 3)


def test_pairs_are_exact_after_augmentation():
    rng = np.random.default_rng(1)
    frame = random_frame(rng, n=2000, views=[camera(rng, (60, 120)), camera(rng, (60, 120), 60.0)])
    s = prepare_sample(
        frame, train=True, rng=np.random.default_rng(5),
        point_aug=PointAugConfig(rotate_z=True, flip_x=0.5, flip_y=0.5, scale=(0.9, 1.1), translate_std=0.2),
        image_aug=ImageAugConfig(crop_scale=(0.6, 0.9), hflip=1.0), image_hw=(30, 64), use_camera=True,
    )
    assert len(s.pair_point) > 50
    assert set(np.unique(s.pair_view)) == {0, 1}
    for v, view in enumerate(s.views):
        sel = s.pair_view == v
        uv, depth = project(s.points[s.pair_point[sel], :3], view.K, view.T)
        assert np.allclose(uv, s.pair_uv[sel], atol=1e-3)
        assert (depth > 0).all()
        assert (s.pair_uv[sel] >= 0).all()
        assert (s.pair_uv[sel, 0] <= 63).all() and (s.pair_uv[sel, 1] <= 29).all()
        # the pair is the original scene point seen through the original extrinsics and the augmented
        # intrinsics (T_aug @ A = T): augmentation moved nothing by hand
        orig = frame.points[s.kept_index[s.pair_point[sel]], :3]
        uv_orig, _ = project(orig, view.K, frame.views[v].T)
        assert np.allclose(uv_orig, s.pair_uv[sel], atol=1e-3)


def test_lidar_only_sample_has_no_views_or_pairs():
    rng = np.random.default_rng(2)
    frame = random_frame(rng, n=100, views=[camera(rng)])
    s = prepare_sample(frame, train=False, rng=None, point_aug=None, image_aug=None, image_hw=(20, 40),
                       use_camera=False)
    b = collate([s])
    assert b.images is None and b.pair_point.numel() == 0 and b.image_batch.numel() == 0
    assert b.points.shape == (100, 4) and b.image_hw is None


def test_collate_uses_global_indices():
    rng = np.random.default_rng(3)
    samples = [
        prepare_sample(random_frame(rng, n=n, views=[camera(rng, yaw_deg=y) for y in yaws]), train=False,
                       rng=None, point_aug=None, image_aug=None, image_hw=(20, 40), use_camera=True)
        for n, yaws in ((400, (0.0,)), (300, (0.0, 90.0)), (500, (180.0,)))
    ]
    b = collate(samples)
    assert b.num_samples == 3 and b.points.shape == (1200, 4) and b.points.dtype == torch.float32
    assert b.point_offsets == [0, 400, 700, 1200]
    assert torch.equal(b.batch_idx, torch.repeat_interleave(torch.arange(3), torch.tensor([400, 300, 500])))
    assert b.images.shape == (4, 3, 20, 40) and torch.equal(b.image_batch, torch.tensor([0, 1, 1, 2]))
    m = 0
    for k, s in enumerate(samples):
        sl = slice(m, m + len(s.pair_point))
        assert torch.equal(b.points[b.pair_point[sl]], torch.from_numpy(s.points[s.pair_point]))
        assert torch.equal(b.image_batch[b.pair_image[sl]], torch.full((len(s.pair_point),), k))
        m += len(s.pair_point)
    assert m == len(b.pair_point) and b.pair_uv.shape == (m, 2)
    assert b.labels.dtype == torch.int64 and b.labels.shape == (1200,)
    # images are ImageNet-normalised RGB
    img = b.images[3].permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    assert np.allclose(img * 255.0, samples[2].images[0], atol=1e-3)
    moved = b.to("cpu")
    assert moved.num_samples == 3 and torch.equal(moved.pair_point, b.pair_point)


def test_labels_are_none_when_any_sample_is_unlabelled():
    rng = np.random.default_rng(4)
    kw = dict(train=False, rng=None, point_aug=None, image_aug=None, image_hw=(20, 40), use_camera=False)
    b = collate([prepare_sample(random_frame(rng, 50), **kw),
                 prepare_sample(random_frame(rng, 50, labels=False), **kw)])
    assert b.labels is None
    with pytest.raises(ValueError, match="image_hw"):
        prepare_sample(random_frame(rng, 50), **{**kw, "image_hw": (0, 4)})


def test_label_points_land_on_the_pixels_of_the_pairs_after_augmentation():
    """The camera branch's extra labels go through the same point and image augmentation as the
    points: projecting the sample's own points as `label_points` reproduces its pairs exactly."""
    rng = np.random.default_rng(7)
    frame = random_frame(rng, n=1500, views=[camera(rng, (60, 120)), camera(rng, (60, 120), 60.0)])
    kw = dict(train=True, point_aug=PointAugConfig(rotate_z=True, flip_x=0.5, flip_y=0.5, scale=(0.9, 1.1),
                                                   translate_std=0.2),
              image_aug=ImageAugConfig(crop_scale=(0.6, 0.9), hflip=0.5), image_hw=(30, 64), use_camera=True)
    plain = prepare_sample(frame, rng=np.random.default_rng(3), **kw)
    s = prepare_sample(frame, rng=np.random.default_rng(3), label_points=(frame.points, frame.labels), **kw)
    assert plain.label_view is None and plain.label_class is None
    assert np.array_equal(s.points, plain.points) and np.array_equal(s.pair_uv, plain.pair_uv)
    assert len(s.label_view) == len(s.pair_point) > 50
    # same order: both are pairs of the same points in the same views
    assert np.array_equal(s.label_view, s.pair_view)
    assert np.allclose(s.label_uv, s.pair_uv, atol=1e-4)
    assert np.array_equal(s.label_class, s.labels[s.pair_point])
    # a camera-less sample ignores them; a length mismatch is an error
    lidar = prepare_sample(frame, rng=np.random.default_rng(3), label_points=(frame.points, frame.labels),
                           **{**kw, "use_camera": False})
    assert lidar.label_view is None
    with pytest.raises(ValueError, match="label_points"):
        prepare_sample(frame, rng=np.random.default_rng(3), label_points=(frame.points, frame.labels[:-1]),
                       **kw)


def test_collate_offsets_label_pixels_and_drops_them_unless_every_sample_has_them():
    rng = np.random.default_rng(8)
    frames = [random_frame(rng, 400, [camera(rng, (40, 80)), camera(rng, (40, 80), 40.0)]),
              random_frame(rng, 300, [camera(rng, (40, 80))])]
    kw = dict(train=False, rng=None, point_aug=None, image_aug=None, image_hw=(20, 40), use_camera=True)
    a, b = (prepare_sample(f, label_points=(f.points, f.labels), **kw) for f in frames)
    batch = collate([a, b])
    n_a = len(a.label_view)
    assert batch.label_image.tolist() == a.label_view.tolist() + (b.label_view + 2).tolist()
    assert batch.label_class.tolist() == a.label_class.tolist() + b.label_class.tolist()
    assert torch.equal(batch.label_uv[n_a:], torch.from_numpy(b.label_uv))
    assert collate([a, prepare_sample(frames[1], **kw)]).label_class is None


def test_a_view_sample_warps_image_and_dense_labels_alike():
    """Crop, resize and flip move the class ids with the pixels they label (nearest, exact pixel
    centres); colour jitter touches the image only."""
    from xkd_core.data.collate import collate_views, prepare_view_sample

    colours = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)
    classes = np.zeros((90, 160), np.uint8)
    yy, xx = np.mgrid[:90, :160]
    classes[:] = 1 + (xx // 40 + 2 * (yy // 45)) % 4  # 8 blocks of 4 classes
    image = colours[classes]
    aug = ImageAugConfig(crop_scale=(0.6, 0.8), hflip=1.0, brightness=0.1)
    s = prepare_view_sample(image, classes, train=True, rng=np.random.default_rng(3), image_aug=aug,
                            image_hw=(36, 64), meta=("00", "000001", "CAM_FRONT"))
    assert s.image.shape == (36, 64, 3) and s.classes.shape == (36, 64) and s.classes.dtype == np.uint8
    assert set(np.unique(s.classes)) <= {1, 2, 3, 4}
    # inside a block (its 3x3 neighbourhood one class) the colour is the class's colour
    inner = np.ones_like(s.classes, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner[1:-1, 1:-1] &= s.classes[1 + dy:35 + dy, 1 + dx:63 + dx] == s.classes[1:-1, 1:-1]
    inner[[0, -1]] = inner[:, [0, -1]] = False
    assert inner.sum() > 1000
    dominant = s.image[inner].argmax(1)  # red, green, blue; class 4 (yellow): red or green
    cls = s.classes[inner]
    assert np.all(np.where(cls == 4, dominant <= 1, dominant == cls - 1))
    plain = prepare_view_sample(image, classes, train=False, rng=None, image_aug=None, image_hw=(45, 80))
    assert np.array_equal(plain.classes, classes[1::2, 1::2])  # halving: nearest of the odd centres
    batch = collate_views([s, s])
    assert batch.images.shape == (2, 3, 36, 64) and batch.classes.dtype == torch.int64
    assert batch.num_samples == 2 and batch.meta[0] == ("00", "000001", "CAM_FRONT")
    with pytest.raises(ValueError, match="differ in size"):
        prepare_view_sample(image, classes[:80], train=False, rng=None, image_aug=None, image_hw=(36, 64))
