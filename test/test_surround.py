"""The surround camera rig end to end: xkd-synth writes it, the data layer reads every view, pairs
stay exact through augmentation and batching, and the model takes a six-view batch.

The sequence is small (32 x 512 LiDAR, 128 x 72 images, two scans) so the file runs in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xkd_core.classes import to_learning
from xkd_core.config import ConfigError, from_dict
from xkd_core.data.collate import collate, prepare_sample
from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.semantickitti import (
    frame_ids,
    read_calib,
    read_class_image,
    read_image,
    read_labels,
    read_points,
    sequence_dir,
)
from xkd_core.data.views import VIEWS_FILE, read_views, select_views, sequence_views
from xkd_core.geometry.augment import (
    ImageAugConfig,
    PointAugConfig,
    sample_point_transform,
    sample_view_aug,
    warp_image,
)
from xkd_core.geometry.projection import point_pixel_pairs, views_of
from xkd_core.synth import SynthConfig, SyntheticSequence, generate
from xkd_core.synth.camera import cull, pixel_rays
from xkd_core.synth.cli import main as synth_main
from xkd_core.synth.raycast import cast
from xkd_core.synth.rig import NUSCENES_NAMES, surround_intrinsics

REPO = Path(__file__).resolve().parents[1]
SIX = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT", "CAM_BACK"]
W, H = 128, 72


def surround_cfg(**camera: object) -> SynthConfig:
    cam = {"rig": "surround", "image_width": W, "image_height": H, **camera}
    return from_dict(SynthConfig, {"lidar": {"beams": 32, "columns": 512}, "camera": cam})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("surround")
    generate(out, ["00", "01"], 2, seed=5, config=surround_cfg(), progress=False)
    return out


def _frame_data(root: Path, seq: str, fid: str):
    seq_dir = sequence_dir(root, seq)
    pts = read_points(seq_dir / "velodyne" / f"{fid}.bin")
    sem, _ = read_labels(seq_dir / "labels" / f"{fid}.label", num_points=len(pts))
    views = read_views(seq_dir / VIEWS_FILE)
    classes = [read_class_image(v.class_path(seq_dir, fid)) for v in views]
    return pts, sem, views, classes


def _agreement(pairs, classes: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per pair: does the class image at the pair's pixel hold the point's label?"""
    px = pairs.pixel()
    got = np.array([classes[v][y, x] for v, (x, y) in zip(pairs.view, px)])
    return got == labels[pairs.point]


def test_layout_views_yaml_and_rig_geometry(root: Path) -> None:
    seq_dir = sequence_dir(root, "00")
    views = read_views(seq_dir / VIEWS_FILE)
    assert [v.name for v in views] == SIX
    assert frame_ids(seq_dir) == ["000000", "000001"]
    assert not (seq_dir / "image_2").exists()  # the surround rig has no KITTI camera...
    assert sorted(read_calib(seq_dir / "calib.txt").P) == [0, 1, 2, 3]  # ...but keeps Tr for poses.txt
    K = surround_intrinsics(W, H, 70.0)
    for view in views:
        assert view.hw == (H, W)
        assert (view.image_dir, view.class_dir) == (f"image_{view.name}", f"class_{view.name}")
        np.testing.assert_array_equal(view.K, K)
        for fid in ("000000", "000001"):
            assert read_image(view.image_path(seq_dir, fid)).shape == (H, W, 3)
            assert read_class_image(view.class_path(seq_dir, fid)).shape == (H, W)
        # mounted 0.3 m out along its own yaw and 0.25 m below the LiDAR, looking out, pitched 8 degrees down
        c = view.centre()
        yaw = math.atan2(c[1], c[0])
        assert abs(math.hypot(c[0], c[1]) - 0.3) < 1e-12 and abs(c[2] + 0.25) < 1e-12
        assert NUSCENES_NAMES[round(math.degrees(yaw)) % 360] == view.name
        forward = view.T[2, :3]  # the optical axis in LiDAR coordinates
        assert abs(math.degrees(math.asin(-forward[2])) - 8.0) < 1e-9
        assert abs(math.atan2(forward[1], forward[0]) - yaw) < 1e-9
    # 70 degree lenses 60 degrees apart: horizontal half-angle of the image edge is 35 degrees
    assert abs(math.degrees(math.atan(0.5 * W / K[0, 0])) - 35.0) < 1e-9


def test_class_images_and_rgb_are_what_the_sequence_renders(root: Path) -> None:
    seq = SyntheticSequence(surround_cfg(), 5, "01", 2)
    seq_dir = sequence_dir(root, "01")
    for view in seq.views[::2]:
        rgb, classes = seq.image(1, view.name)
        np.testing.assert_array_equal(read_image(view.image_path(seq_dir, "000001")), rgb)
        np.testing.assert_array_equal(read_class_image(view.class_path(seq_dir, "000001")), classes)
    with pytest.raises(ValueError, match="not rendered"):
        seq.image(0, 2)


def test_culling_loses_no_hit_in_any_pitched_camera_of_the_ring() -> None:
    """The image-rectangle culling of `camera.cull` with yawed, pitched, offset cameras (objects
    beside and behind the car reach into side and back images)."""
    seq = SyntheticSequence(surround_cfg(), 4, "00", 20)
    pose = seq.lidar_poses[10]
    for view in seq.views:
        cam_to_world = pose @ np.linalg.inv(view.T)
        rays = pixel_rays(view.K, W, H) @ cam_to_world[:3, :3].T
        cand = seq.scene.near(cam_to_world[:2, 3], seq.config.camera.far)
        kept, rows, cols = cull(seq.scene, cand, view.K, cam_to_world, W, H)
        origin, far = cam_to_world[:3, 3], seq.config.camera.far
        culled = cast(seq.scene, origin, rays, kept, rows, cols, far, wrap=False)
        every = np.tile([[0, H]], (cand.size, 1)), np.tile([[0, W]], (cand.size, 1))
        brute = cast(seq.scene, origin, rays, cand, *every, far, wrap=False)
        np.testing.assert_array_equal(culled.prim, brute.prim, err_msg=view.name)
        assert kept.size < cand.size and (brute.prim >= 0).mean() > 0.02, view.name


def test_the_union_of_views_sees_the_whole_scan_and_pairs_land_on_their_class(root: Path) -> None:
    """(a) coverage of the six views together, (b) class agreement of every pair, per view."""
    for seq, fid in (("00", "000000"), ("01", "000001")):
        pts, sem, views, classes = _frame_data(root, seq, fid)
        pairs = point_pixel_pairs(pts[:, :3], [(v.K, v.T, v.hw) for v in views])
        seen = np.zeros(len(pts), bool)
        seen[pairs.point] = True
        assert seen.mean() >= 0.95, seen.mean()  # measured: 1.0000 (a handful of points missed)
        per_point = np.bincount(pairs.point, minlength=len(pts))
        assert 0.05 < (per_point >= 2).mean() < 0.4  # the 10 degree overlaps: points in two views
        agree = _agreement(pairs, classes, sem)
        assert agree.mean() > 0.9, agree.mean()  # measured ~0.94 at 128 x 72 (0.96 at 320 x 180)
        for k in range(len(views)):
            assert agree[pairs.view == k].mean() > 0.8, (views[k].name, agree[pairs.view == k].mean())
        # Points in two views land on their class in both (parallax between the cameras is small).
        multi = per_point[pairs.point] >= 2
        assert agree[multi].mean() > 0.85


def test_dataset_all_gives_six_views_and_augmentation_keeps_every_pair_exact(root: Path) -> None:
    """(c), (d): `cameras: all` yields the six views; crop / resize / flip drawn per view plus a point
    transform keep each pair on the pixel its point projects to, so the class images still agree."""
    ds = SemanticKittiDataset(root, sequences=["00", "01"], cameras="all")
    frame = ds[1]
    assert [v.name for v in frame.views] == SIX
    _, sem, _, classes = _frame_data(root, "00", "000001")
    labels = to_learning(sem)
    np.testing.assert_array_equal(frame.labels, labels)
    point_aug = PointAugConfig(rotate_z=True, flip_x=0.5, flip_y=0.5, scale=(0.9, 1.1), translate_std=0.3)
    image_aug = ImageAugConfig(crop_scale=(0.5, 0.9), hflip=0.5)
    out_hw = (60, 96)
    flips = 0
    for seed in range(4):
        sample = prepare_sample(frame, train=True, rng=np.random.default_rng(seed), point_aug=point_aug,
                                image_aug=image_aug, image_hw=out_hw, use_camera=True)
        # The same draws, in prepare_sample's order: one point transform, then one crop / flip per view.
        rng = np.random.default_rng(seed)
        A = sample_point_transform(rng, point_aug)
        params = [sample_view_aug(rng, image_aug, v.hw, out_hw) for v in frame.views]
        assert len({(p.x0, p.y0, p.crop_w) for p in params}) > 1  # drawn per view
        flips += sum(p.flip for p in params)
        moved_points = frame.points[:, :3] @ A[:3, :3].T + A[:3, 3]
        np.testing.assert_allclose(sample.points[:, :3], moved_points, atol=1e-4)
        warped = []
        for view, aug, p, cls in zip(frame.views, sample.views, params, classes):
            np.testing.assert_allclose(aug.K, p.matrix() @ view.K, rtol=1e-12)
            np.testing.assert_allclose(aug.T, view.T @ np.linalg.inv(A), atol=1e-12)
            assert aug.image.shape == (*out_hw, 3)
            warped.append(warp_image(cls, p, cv2.INTER_NEAREST_EXACT))
        # Every pair of the augmented sample is the original projection moved by its view's pixel map.
        before = point_pixel_pairs(frame.points[:, :3], views_of(frame.views))
        pix = {(int(i), int(v)): uv for i, v, uv in zip(before.point, before.view, before.uv)}
        for i, v, uv in zip(sample.pair_point[::50], sample.pair_view[::50], sample.pair_uv[::50]):
            orig = pix[(int(sample.kept_index[i]), int(v))]
            moved = params[v].matrix() @ np.array([orig[0], orig[1], 1.0])
            np.testing.assert_allclose(uv, moved[:2], atol=2e-3)
        pairs = point_pixel_pairs(sample.points[:, :3], views_of(sample.views))
        np.testing.assert_array_equal(pairs.point, sample.pair_point)
        agree = _agreement(pairs, warped, sem)
        for k in range(6):
            assert agree[pairs.view == k].mean() > 0.75, (seed, SIX[k], agree[pairs.view == k].mean())
        assert agree.mean() > 0.88, agree.mean()
    assert flips > 0


def test_collate_keeps_multi_view_pairs_of_each_sample(root: Path) -> None:
    ds = SemanticKittiDataset(root, sequences=["00", "01"], cameras="all")
    frames = [ds[0], ds[3]]
    samples = [prepare_sample(f, train=False, rng=None, point_aug=None, image_aug=None, image_hw=(H, W),
                              use_camera=True) for f in frames]
    batch = collate(samples)
    assert batch.images.shape == (12, 3, H, W)
    assert batch.image_batch.tolist() == [0] * 6 + [1] * 6
    assert torch.equal(batch.image_batch[batch.pair_image], batch.batch_idx[batch.pair_point])
    # Each point's pairs name distinct images; overlap points have two, in neighbouring views.
    key = batch.pair_point * 100 + batch.pair_image
    assert len(torch.unique(key)) == len(key)
    counts = torch.bincount(batch.pair_point, minlength=len(batch.points))
    assert (counts == 2).any() and counts.max() <= 3
    # Class look-ups through the global indices agree as well as per sample.
    classes = []
    for seq, fid in (("00", "000000"), ("01", "000001")):
        classes += _frame_data(root, seq, fid)[3]
    px = torch.round(batch.pair_uv).long()
    got = torch.tensor(np.array([classes[i][y, x]
                                 for i, (x, y) in zip(batch.pair_image.tolist(), px.tolist())]))
    raw = np.concatenate([_frame_data(root, s, f)[1] for s, f in (("00", "000000"), ("01", "000001"))])
    truth = torch.from_numpy(to_learning(raw))[batch.pair_point]
    assert (torch.from_numpy(to_learning(got.numpy())) == truth).float().mean() > 0.9


def test_training_data_with_cameras_all_and_a_six_view_model_step(root: Path, tmp_path: Path) -> None:
    from model_fixtures import tiny_config

    from xkd_core.models.xmodel_kd import XModelKD
    from xkd_core.training.config import load_train_config
    from xkd_core.training.data import SampleDataset, build_frame_datasets

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = load_train_config(REPO / "config" / "train" / "xmodel_kd.yaml", "synth_small", [
        f"data.root={root}", "data.cameras=all", "data.train_sequences=[0, 1]", "data.val_sequences=[]",
        "data.image_hw=[48, 96]", "data.max_points=3000", f"out_dir={tmp_path}", "data.num_workers=0",
    ])
    assert cfg.data.cameras == ["all"]
    train, val = build_frame_datasets(cfg)
    assert val is None and len(train) == 4
    samples = SampleDataset(train, cfg, train=True)
    batch = collate([samples[(0, 0)], samples[(0, 3)]])
    assert batch.images.shape == (12, 3, 48, 96) and len(batch.pair_point) > 1000
    model = XModelKD(tiny_config()).train()
    out = model(batch)
    assert out["logits_2d"].shape[0] == 12
    losses = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert model.image_net.encoder.conv1.weight.grad.abs().sum() > 0


def test_cli_rig_flags_and_class_images_for_kitti(tmp_path: Path) -> None:
    args = ["--sequences", "02", "--scans", "1", "--seed", "3", "--beams", "8", "--columns", "128",
            "--image-width", "48", "--image-height", "32", "--quiet"]
    assert synth_main(["--out", str(tmp_path / "ring"), "--rig", "surround", "--surround-cameras", "4",
                       "--surround-hfov", "100", *args]) == 0
    seq_dir = sequence_dir(tmp_path / "ring", "02")
    views = read_views(seq_dir / VIEWS_FILE)
    assert [v.name for v in views] == ["CAM_000", "CAM_090", "CAM_180", "CAM_270"]
    np.testing.assert_allclose(views[0].K, surround_intrinsics(48, 32, 100.0))
    assert all((seq_dir / f"class_{v.name}" / "000000.png").is_file() for v in views)
    cfg = from_dict(SynthConfig, {"lidar": {"beams": 8, "columns": 128}, "camera": {
        "rig": "surround", "image_width": 48, "image_height": 32, "surround": {"count": 4, "hfov": 100.0}}})
    generate(tmp_path / "api", ["02"], 1, 3, cfg, progress=False)
    api_dir = sequence_dir(tmp_path / "api", "02")
    files = sorted(p.relative_to(seq_dir) for p in seq_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(api_dir) for p in api_dir.rglob("*") if p.is_file())
    assert all((seq_dir / f).read_bytes() == (api_dir / f).read_bytes() for f in files)

    # --no-class-images: the ring without class folders; views.yaml still lists the cameras.
    plain_args = ["--out", str(tmp_path / "plain"), "--rig", "surround", "--no-class-images", *args]
    assert synth_main(plain_args) == 0
    plain = sequence_dir(tmp_path / "plain", "02")
    assert [v.class_dir for v in read_views(plain / VIEWS_FILE)] == [None] * 6
    assert not list(plain.glob("class_*"))

    # --class-images on the KITTI rig: class_2/ and a views.yaml that agrees with calib.txt.
    assert synth_main(["--out", str(tmp_path / "kitti"), "--class-images", "--cameras", "2", "3", *args]) == 0
    kitti = sequence_dir(tmp_path / "kitti", "02")
    listed = read_views(kitti / VIEWS_FILE)
    assert [(v.name, v.class_dir, v.hw) for v in listed] == [("image_2", "class_2", (32, 48)),
                                                             ("image_3", "class_3", (32, 48))]
    calib = read_calib(kitti / "calib.txt")
    for v, cam in zip(listed, (2, 3)):
        np.testing.assert_allclose(v.K @ v.T[:3], calib.P[cam] @ calib.Tr, atol=1e-9)
    assert read_class_image(kitti / "class_3" / "000000.png").shape == (32, 48)


def test_overwrite_switches_rigs_cleanly(tmp_path: Path) -> None:
    small = {"lidar": {"beams": 8, "columns": 128}}
    ring_camera = {"rig": "surround", "image_width": 32, "image_height": 18}
    ring = from_dict(SynthConfig, {**small, "camera": ring_camera})
    kitti = from_dict(SynthConfig, {**small, "camera": {"image_width": 32, "image_height": 16}})
    generate(tmp_path, ["07"], 1, 0, ring, progress=False)
    seq_dir = sequence_dir(tmp_path, "07")
    with pytest.raises(FileExistsError):
        generate(tmp_path, ["07"], 1, 0, kitti, progress=False)
    generate(tmp_path, ["07"], 1, 0, kitti, progress=False, overwrite=True)
    assert not (seq_dir / VIEWS_FILE).exists() and not list(seq_dir.glob("image_CAM_*"))
    assert not list(seq_dir.glob("class_*"))
    assert [v.name for v in sequence_views(seq_dir)] == ["image_2"]
    generate(tmp_path, ["07"], 1, 0, ring, progress=False, overwrite=True)
    assert not (seq_dir / "image_2").exists()
    assert [v.name for v in select_views(seq_dir, "all")] == SIX


def test_rig_config_defaults_and_checks() -> None:
    assert SynthConfig().camera.image_width == 620 and SynthConfig().camera.class_images is False
    ring = from_dict(SynthConfig, {"camera": {"rig": "surround"}})
    assert (ring.camera.image_width, ring.camera.image_height, ring.camera.class_images) == (320, 180, True)
    assert ring.camera.surround.count == 6 and ring.camera.surround.hfov == 70.0
    for bad, key in [({"rig": "fisheye"}, "camera.rig"), ({"surround": {"count": 0}}, "surround.count"),
                     ({"surround": {"hfov": 200.0}}, "surround.hfov"),
                     ({"surround": {"pitch": 60.0}}, "pitch")]:
        with pytest.raises(ConfigError, match=key):
            from_dict(SynthConfig, {"camera": bad})
