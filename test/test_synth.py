"""The synthetic driving world (`xkd_core.synth`, `xkd-synth`).

Scans here are small (fewer beams / columns, quarter-size images) so the file runs in seconds; one
test checks the default full-size LiDAR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xkd_core.config import ConfigError, from_dict, load_config, to_dict
from xkd_core.data.semantickitti import (
    frame_ids,
    read_calib,
    read_image,
    read_labels,
    read_points,
    read_poses,
    sequence_dir,
)
from xkd_core.geometry.projection import project, visible
from xkd_core.synth import SynthConfig, SyntheticSequence, generate
from xkd_core.synth.camera import cull as camera_cull
from xkd_core.synth.camera import intrinsics, pixel_rays
from xkd_core.synth.cli import main as synth_main
from xkd_core.synth.lidar import beam_grid
from xkd_core.synth.lidar import cull as lidar_cull
from xkd_core.synth.raycast import cast
from xkd_core.synth.stats import collect, format_stats
from xkd_core.synth.world import (
    OTHER_GROUND,
    PARKING,
    ROAD,
    SIDEWALK,
    TERRAIN,
    WORLD_CLASSES,
)

REPO = Path(__file__).resolve().parents[1]
THINGS = (10, 18, 30, 31)
PAIRS = (ROAD, PARKING, OTHER_GROUND, SIDEWALK, TERRAIN)


def small(**top: object) -> SynthConfig:
    data = {
        "lidar": {"beams": 32, "columns": 1024},
        "camera": {"image_width": 310, "image_height": 94},
    }
    data.update(top)
    return from_dict(SynthConfig, data)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def ks_critical(n: int, m: int, c_alpha: float = 1.949) -> float:
    """KS distance above which two samples differ at alpha = 0.001."""
    return c_alpha * np.sqrt((n + m) / (n * m))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, ["00", "01"], 3, seed=7, config=small(camera={"image_width": 310, "image_height": 94,
                                                                 "cameras": [2, 3]}), progress=False)
    return root


def test_written_sequences_load_with_the_semantickitti_readers(written: Path) -> None:
    for seq in ("00", "01"):
        seq_dir = sequence_dir(written, seq)
        assert frame_ids(seq_dir) == ["000000", "000001", "000002"]
        for fid in frame_ids(seq_dir):
            pts = read_points(seq_dir / "velodyne" / f"{fid}.bin")
            assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 4
            assert pts.shape[0] > 10_000
            assert np.isfinite(pts).all()
            assert (pts[:, 3] >= 0).all() and (pts[:, 3] <= 1).all()
            sem, inst = read_labels(seq_dir / "labels" / f"{fid}.label", num_points=pts.shape[0])
            assert set(np.unique(sem)) <= set(WORLD_CLASSES)
            for cam in (2, 3):
                img = read_image(seq_dir / f"image_{cam}" / f"{fid}.png")
                assert img.shape == (94, 310, 3)
        calib = read_calib(seq_dir / "calib.txt")
        assert sorted(calib.P) == [0, 1, 2, 3]
        K2, T2 = calib.camera(2)
        K3, T3 = calib.camera(3)
        np.testing.assert_allclose(K2, intrinsics(small().camera), rtol=1e-9)
        # KITTI rig: camera 2 sits 6 cm left of camera 0, camera 3 about 0.47 m right of it.
        c0 = np.linalg.inv(calib.Tr)[:3, 3]  # camera centres in the LiDAR frame
        c2, c3 = np.linalg.inv(T2)[:3, 3], np.linalg.inv(T3)[:3, 3]
        np.testing.assert_allclose(c2 - c0, [0.0, 0.06, 0.0], atol=1e-9)  # LiDAR y points left
        np.testing.assert_allclose(c3 - c0, [0.0, -0.47, 0.0], atol=1e-9)
        poses = read_poses(seq_dir / "poses.txt")
        assert poses.shape == (3, 4, 4)
        np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-12)
        # Camera 0 moves forward (its z axis) by about one metre per scan.
        steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
        np.testing.assert_allclose(steps, 1.0, atol=0.01)
        assert (np.diff(poses[:, 2, 3]) > 0.9).all()
        assert np.loadtxt(seq_dir / "times.txt").shape == (3,)


def test_labels_hold_instances_for_things_only(written: Path) -> None:
    seq_dir = sequence_dir(written, "00")
    n = read_points(seq_dir / "velodyne" / "000000.bin").shape[0]
    sem, inst = read_labels(seq_dir / "labels" / "000000.label", num_points=n)
    thing = np.isin(sem, THINGS)
    assert thing.any()
    assert (inst[thing] > 0).all()
    assert (inst[~thing] == 0).all()
    # One instance id never spans two classes, and several objects are present.
    for i in np.unique(inst[thing]):
        assert np.unique(sem[inst == i]).size == 1
    assert np.unique(inst[thing]).size >= 3


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path, written: Path) -> None:
    cfg = small(camera={"image_width": 310, "image_height": 94, "cameras": [2, 3]})
    generate(tmp_path / "again", ["00", "01"], 3, seed=7, config=cfg, progress=False)
    assert tree_bytes(tmp_path / "again") == tree_bytes(written)
    generate(tmp_path / "other", ["00"], 3, seed=8, config=cfg, progress=False)
    a = sequence_dir(written, "00")
    b = sequence_dir(tmp_path / "other", "00")
    for sub in ("velodyne/000000.bin", "labels/000000.label", "image_2/000000.png"):
        assert (a / sub).read_bytes() != (b / sub).read_bytes(), sub
    # Sequences under one seed get different worlds too.
    other_seq = sequence_dir(written, "01") / "labels/000000.label"
    assert (a / "labels/000000.label").read_bytes() != other_seq.read_bytes()


def test_cli_matches_the_api_and_prints_stats(
    tmp_path: Path, written: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = synth_main([
        "--out", str(tmp_path / "cli"), "--sequences", "01", "--scans", "3", "--seed", "7", "--beams", "32",
        "--columns", "1024", "--image-width", "310", "--image-height", "94", "--cameras", "2", "3",
        "--quiet", "--stats",
    ])
    assert rc == 0
    want = tree_bytes(sequence_dir(written, "01"))
    assert tree_bytes(sequence_dir(tmp_path / "cli", "01")) == want
    out = capsys.readouterr().out
    assert "points/scan" in out and "parking" in out and "terrain" in out


def test_cli_layers_config_file_set_and_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "synth.yaml"
    cfg_file.write_text("lidar:\n  beams: 16\n  noise: 0.0\nworld:\n  trees: 1.0\n")
    from xkd_core.synth.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "--out", "x", "--config", str(cfg_file), "--set", "world.trees=3.0", "--set", "lidar.beams=20",
        "--beams", "24", "--appearance-intensity-gap", "0.1",
    ])
    cfg = config_from_args(args)
    assert cfg.lidar.beams == 24  # flag beats --set beats file
    assert cfg.world.trees == 3.0  # --set beats file
    assert cfg.lidar.noise == 0.0  # file beats default
    assert cfg.appearance_intensity_gap == 0.1


def test_cli_refuses_bad_input_with_a_named_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        synth_main(["--out", str(tmp_path), "--beams", "0", "--quiet"])
    assert exc.value.code == 2
    assert "lidar.beams" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path), "--sequences", "ab", "--quiet"])
    assert "'ab'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path), "--set", "lidar.bems=3", "--quiet"])
    assert "lidar.bems" in capsys.readouterr().err


def test_existing_frames_need_overwrite(tmp_path: Path) -> None:
    cfg = small(lidar={"beams": 8, "columns": 128}, camera={"image_width": 32, "image_height": 16})
    generate(tmp_path, ["03"], 3, seed=1, config=cfg, progress=False)
    with pytest.raises(FileExistsError, match="03"):
        generate(tmp_path, ["03"], 2, seed=1, config=cfg, progress=False)
    generate(tmp_path, ["03"], 2, seed=1, config=cfg, progress=False, overwrite=True)
    assert frame_ids(sequence_dir(tmp_path, "03")) == ["000000", "000001"]


def test_config_file_matches_defaults_and_values_are_checked() -> None:
    assert to_dict(load_config(SynthConfig, REPO / "config" / "synth.yaml")) == to_dict(SynthConfig())
    with pytest.raises(ConfigError, match="camera.cameras"):
        from_dict(SynthConfig, {"camera": {"cameras": [1]}})
    with pytest.raises(ConfigError, match="fov_down"):
        from_dict(SynthConfig, {"lidar": {"fov_up": -30.0}})
    with pytest.raises(ConfigError, match="appearance_intensity_gap"):
        from_dict(SynthConfig, {"appearance_intensity_gap": -0.1})
    with pytest.raises(ValueError, match="seed"):
        SyntheticSequence(SynthConfig(), -1, "00", 2)


def test_default_lidar_is_an_hdl64_like_scan() -> None:
    seq = SyntheticSequence(SynthConfig(), 3, "00", 1)
    pts, sem, _ = seq.scan(0)
    assert pts.shape[0] >= 100_000
    rng_xy = np.linalg.norm(pts[:, :3], axis=1)
    assert rng_xy.min() > 1.5 - 0.2 and rng_xy.max() < 80.0 + 0.2
    # Range noise is along the ray, so every point keeps its beam's elevation exactly.
    el = np.rad2deg(np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1])))
    beams = np.linspace(2.0, -24.8, 64)
    assert np.abs(el[:, None] - beams[None, :]).min(axis=1).max() < 1e-3
    assert np.unique(np.abs(el[:, None] - beams[None, :]).argmin(axis=1)).size >= 56
    # The road is 1.73 m below the sensor, with 2 cm range noise.
    road_z = pts[sem == ROAD, 2]
    assert abs(np.median(road_z) + 1.73) < 0.01 and np.std(road_z) < 0.05


def test_every_class_is_present_and_pairs_share_geometry() -> None:
    seq = SyntheticSequence(small(), 11, "04", 40)
    seen: set[int] = set()
    for frame in (0, 13, 26, 39):
        pts, sem, _ = seq.scan(frame)
        assert set(PAIRS) <= set(np.unique(sem).tolist()), frame  # every scan has all look-alikes
        seen |= set(np.unique(sem).tolist())
        # Road / parking / other-ground: one plane; sidewalk / terrain: one plane 15 cm higher.
        top = pts[:, 2]
        z = {c: np.median(top[sem == c]) for c in PAIRS}
        assert abs(z[PARKING] - z[ROAD]) < 0.005 and abs(z[OTHER_GROUND] - z[ROAD]) < 0.005
        assert abs(z[TERRAIN] - z[SIDEWALK]) < 0.005
        assert abs(z[SIDEWALK] - z[ROAD] - 0.15) < 0.01
    assert seen == set(WORLD_CLASSES)


def test_position_does_not_give_the_look_alikes_away() -> None:
    seq = SyntheticSequence(SynthConfig(), 5, "02", 300)
    ground = seq.scene.ground

    def covered(band, cls: int) -> float:
        """Length of [0, 300] m covered by class `cls` in a band."""
        total = 0.0
        for a, e, c in band.stretches():
            if c == cls:
                total += max(0.0, min(e, 300.0) - max(a, 0.0))
        return total

    right_strip, right_lane, left_lane, left_strip = ground.low
    for strip in (right_strip, left_strip):  # parking bays and road alternate on both sides
        assert covered(strip, PARKING) > 40 and covered(strip, ROAD) > 40 and covered(strip, OTHER_GROUND) > 0
    for lane in (right_lane, left_lane):  # painted zones in both lanes
        assert covered(lane, OTHER_GROUND) > 10 and covered(lane, ROAD) > 100
    for band in ground.raised:  # every distance from the curb has both paving and grass
        assert covered(band, SIDEWALK) > 60 and covered(band, TERRAIN) > 60


def test_points_project_onto_pixels_of_the_same_class(written: Path) -> None:
    cfg = small(camera={"image_width": 310, "image_height": 94, "cameras": [2, 3]})
    seq = SyntheticSequence(cfg, 7, "00", 3)
    seq_dir = sequence_dir(written, "00")
    K, T = read_calib(seq_dir / "calib.txt").camera(2)
    checked = 0
    for fid in ("000000", "000002"):
        frame = int(fid)
        pts = read_points(seq_dir / "velodyne" / f"{fid}.bin")
        sem, _ = read_labels(seq_dir / "labels" / f"{fid}.label", num_points=pts.shape[0])
        rgb, classes = seq.image(frame, 2)
        np.testing.assert_array_equal(rgb, read_image(seq_dir / "image_2" / f"{fid}.png"))
        uv, depth = project(pts[:, :3], K, T)
        ok = visible(uv, depth, classes.shape)
        u, v = np.rint(uv[ok]).astype(int).T
        agree = classes[v, u] == sem[ok]
        assert ok.sum() > 2000
        assert agree.mean() > 0.93, agree.mean()  # a 0.3 m extrinsic error gives ~0.84
        for c in (PARKING, OTHER_GROUND, TERRAIN, SIDEWALK):
            sel = sem[ok] == c
            if sel.sum() >= 50:
                assert agree[sel].mean() > 0.8, (c, agree[sel].mean())
                checked += 1
        # The look-alikes differ in the image: mean colour of parking pixels is not road's.
        mean = {c: rgb[classes == c].reshape(-1, 3).mean(axis=0) for c in (ROAD, PARKING, SIDEWALK, TERRAIN)
                if (classes == c).sum() > 100}
        if ROAD in mean and PARKING in mean:
            assert np.abs(mean[ROAD] - mean[PARKING]).max() > 10
        if SIDEWALK in mean and TERRAIN in mean:
            assert np.abs(mean[SIDEWALK] - mean[TERRAIN]).max() > 30
    assert checked >= 2


@pytest.mark.parametrize("focal_scale", [1.0, 0.4])
def test_culling_finds_the_same_hits_as_testing_every_ray(focal_scale: float) -> None:
    """Per-object culling (azimuth sector x beam rows; image rectangle) must never lose a hit, with
    KITTI's lens and a wide one (objects beside the car reach into a wide image)."""
    cfg = small(lidar={"beams": 24, "columns": 360},
                camera={"image_width": 160, "image_height": 48, "focal_scale": focal_scale})
    seq = SyntheticSequence(cfg, 4, "00", 20)
    scene, pose = seq.scene, seq.lidar_poses[10]
    el, _, dirs_lidar = beam_grid(cfg.lidar)
    dirs = dirs_lidar @ pose[:3, :3].T
    origin = pose[:3, 3]
    cand = scene.near(origin[:2], cfg.lidar.max_range)
    assert cand.size > 50
    yaw = float(np.arctan2(pose[1, 0], pose[0, 0]))
    rows, cols = lidar_cull(scene, cand, origin, yaw, el, dirs.shape[1])
    culled = cast(scene, origin, dirs, cand, rows, cols, cfg.lidar.max_range, wrap=True)
    every = np.tile([[0, dirs.shape[0]]], (cand.size, 1)), np.tile([[0, dirs.shape[1]]], (cand.size, 1))
    brute = cast(scene, origin, dirs, cand, *every, cfg.lidar.max_range, wrap=True)
    np.testing.assert_array_equal(culled.prim, brute.prim)
    np.testing.assert_array_equal(culled.t, brute.t)
    assert (brute.prim >= 0).mean() > 0.1  # objects really were hit

    K, T = seq.calib.camera(2)
    cam_to_world = pose @ np.linalg.inv(T)
    rays = pixel_rays(K, 160, 48) @ cam_to_world[:3, :3].T
    cand = scene.near(cam_to_world[:2, 3], cfg.camera.far)
    kept, rows, cols = camera_cull(scene, cand, K, cam_to_world, 160, 48)
    culled = cast(scene, cam_to_world[:3, 3], rays, kept, rows, cols, cfg.camera.far, wrap=False)
    every = np.tile([[0, 48]], (cand.size, 1)), np.tile([[0, 160]], (cand.size, 1))
    brute = cast(scene, cam_to_world[:3, 3], rays, cand, *every, cfg.camera.far, wrap=False)
    np.testing.assert_array_equal(culled.prim, brute.prim)
    assert kept.size < cand.size  # objects behind the camera were dropped


def test_a_wide_lens_sees_more_of_the_same_scan(tmp_path: Path) -> None:
    """`camera.focal_scale` widens the camera only: same LiDAR scan and labels, half the focal length
    in the calibration, about twice the points in view, and those points still land on pixels of
    their own class."""
    seen, scans = {}, {}
    for scale in (1.0, 0.5):
        root = tmp_path / str(scale)
        cfg = small(camera={"image_width": 310, "image_height": 94, "focal_scale": scale})
        generate(root, ["00"], 1, seed=7, config=cfg, progress=False)
        seq_dir = sequence_dir(root, "00")
        pts = read_points(seq_dir / "velodyne" / "000000.bin")
        sem, _ = read_labels(seq_dir / "labels" / "000000.label", num_points=pts.shape[0])
        K, T = read_calib(seq_dir / "calib.txt").camera(2)
        classes = SyntheticSequence(cfg, 7, "00", 1).image(0, 2)[1]
        uv, depth = project(pts[:, :3], K, T)
        ok = visible(uv, depth, classes.shape)
        u, v = np.rint(uv[ok]).astype(int).T
        assert (classes[v, u] == sem[ok]).mean() > 0.93
        seen[scale], scans[scale] = ok.mean(), (pts.tobytes(), sem.tobytes(), K)
    assert scans[0.5][:2] == scans[1.0][:2]
    np.testing.assert_allclose(scans[0.5][2][:2, :2], scans[1.0][2][:2, :2] / 2)
    np.testing.assert_allclose(scans[0.5][2][:2, 2], scans[1.0][2][:2, 2])  # same principal point
    assert 1.8 < seen[0.5] / seen[1.0] < 3.0, seen
    with pytest.raises(ConfigError, match="focal_scale"):
        from_dict(SynthConfig, {"camera": {"focal_scale": 0.1}})


def test_intensity_gap_knob() -> None:
    def intensities(gap: float) -> dict[int, np.ndarray]:
        seq = SyntheticSequence(small(appearance_intensity_gap=gap), 2, "06", 30)
        got: dict[int, list[np.ndarray]] = {c: [] for c in PAIRS}
        for frame in (0, 15, 29):
            pts, sem, _ = seq.scan(frame)
            for c in PAIRS:
                got[c].append(pts[sem == c, 3])
        return {c: np.concatenate(v) for c, v in got.items()}

    same = intensities(0.0)
    for a, b in ((ROAD, PARKING), (ROAD, OTHER_GROUND), (SIDEWALK, TERRAIN)):
        assert min(same[a].size, same[b].size) > 1000
        assert ks_statistic(same[a], same[b]) < ks_critical(same[a].size, same[b].size), (a, b)
    gap = intensities(0.1)
    for a, b in ((ROAD, PARKING), (ROAD, OTHER_GROUND), (SIDEWALK, TERRAIN)):
        assert ks_statistic(gap[a], gap[b]) > 3 * ks_critical(gap[a].size, gap[b].size), (a, b)
        assert abs(gap[b].mean() - gap[a].mean() - 0.1) < 0.02
    # The knob only touches the painted member of each pair.
    np.testing.assert_array_equal(same[ROAD], gap[ROAD])
    np.testing.assert_array_equal(same[SIDEWALK], gap[SIDEWALK])


def test_stats_count_what_was_written(written: Path) -> None:
    stats = collect(written, ["00", "01"])
    assert stats.scans == 6
    counts = np.zeros(1 << 16, dtype=np.int64)
    for seq in ("00", "01"):
        for fid in frame_ids(sequence_dir(written, seq)):
            sem, _ = read_labels(sequence_dir(written, seq) / "labels" / f"{fid}.label")
            counts += np.bincount(sem, minlength=1 << 16)
    assert stats.class_points == {int(c): int(counts[c]) for c in np.flatnonzero(counts)}
    assert abs(sum(stats.shares().values()) - 1.0) < 1e-9
    text = format_stats(stats, 0.5)
    assert "sidewalk" in text and "0.500" in text
