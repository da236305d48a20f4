"""`xkd_ros.pipeline.FramePipeline` without ROS: recorded-style (rosbags) messages in, numpy outputs out.

The node is a thin adapter over this class, so what a vehicle does with several cameras, compressed and
broken images, missing transforms, the ego crop and range gate, the filtered cloud and the
processing-time levels is tested here with a fake segmenter and a fake clock, quickly and exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from driver_clouds import driver_cloud

from xkd_core.classes import CLASS_NAMES
from xkd_core.inference import SegmentResult
from xkd_ros.bag_io import TYPESTORE
from xkd_ros.image import to_rosbags_camera_info, to_rosbags_compressed_image, to_rosbags_image
from xkd_ros.pipeline import ERROR, OK, WARN, FramePipeline
from xkd_ros.pointcloud import to_rosbags_cloud, xyzi_array
from xkd_ros.segment_params import SegmentNodeConfig, config_from_values, param_specs
from xkd_ros.stamp import NS_PER_S, rosbags_header

HW = (48, 64)
K = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]])
#: LiDAR x forward -> camera z forward (the camera at the LiDAR, looking ahead)
AHEAD = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
T0 = 1000 * NS_PER_S


class FakeSegmenter:
    """Label = 1 + (point index mod 19) for every point not excluded (0 there); records its calls."""

    input_convention = None
    max_range = None

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, list, np.ndarray | None]] = []

    def segment(self, points, views=None, exclude=None):
        self.calls.append((points.copy(), list(views or []), None if exclude is None else exclude.copy()))
        labels = (1 + np.arange(len(points)) % 19).astype(np.uint16)
        if exclude is not None:
            labels[exclude] = 0
        return SegmentResult(labels, (labels > 0).astype(np.float32))


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def config(cameras: dict[str, dict] | None = None, **values) -> SegmentNodeConfig:
    base = {s.name: s.default for s in param_specs() if not s.name.startswith("cameras.")}
    cams = cameras or {}
    flat = {f"cameras.{name}.{k}": v for name, opts in cams.items() for k, v in opts.items()}
    return config_from_values({**base, "cameras.names": list(cams), "use_camera": bool(cams), **flat,
                               **values})


def make(cfg: SegmentNodeConfig, lookup=None) -> tuple[FramePipeline, FakeSegmenter, list, FakeClock]:
    """The pipeline with a fake segmenter and clock; the log lines it reports go to the list."""
    lines: list[tuple[int, str]] = []
    seg, clock = FakeSegmenter(), FakeClock()
    pipe = FramePipeline(cfg, seg, lambda level, line: lines.append((level, line)), lookup=lookup,
                         clock=clock)
    return pipe, seg, lines, clock


def cloud(stamp: int, points: np.ndarray, frame: str = "lidar"):
    return to_rosbags_cloud(rosbags_header(stamp, frame, TYPESTORE), xyzi_array(points), TYPESTORE)


def scan(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = np.c_[rng.uniform(2, 20, n), rng.uniform(-3, 3, n), rng.uniform(-1, 1, n)]
    return np.c_[xyz, rng.uniform(0, 1, n)].astype(np.float32)


def image(value: int) -> np.ndarray:
    img = np.zeros((*HW, 3), np.uint8)
    img[..., 0] = value
    img[:, ::7, 1] = 200  # some structure, so JPEG has something to keep
    return img


def send_camera(pipe: FramePipeline, name: str, stamp: int, rgb: np.ndarray, compressed: bool = False,
                frame: str | None = None) -> None:
    header = rosbags_header(stamp, frame or name, TYPESTORE)
    pipe.on_camera_info(name, to_rosbags_camera_info(header, K, HW, TYPESTORE))
    msg = (to_rosbags_compressed_image(header, rgb, TYPESTORE, codec="jpeg") if compressed
           else to_rosbags_image(header, rgb, TYPESTORE))
    pipe.on_image(name, msg)


STATIC = [float(v) for v in AHEAD.reshape(-1)]


def test_every_camera_takes_its_nearest_image_and_a_missing_transform_skips_only_that_camera() -> None:
    def lookup(target: str, source: str, stamp_ns: int) -> np.ndarray:
        if target == "back":
            raise LookupError("no transform back <- lidar")
        assert (target, source, stamp_ns) == ("right", "lidar", T0)
        return AHEAD

    cfg = config({"front": {"lidar_to_camera": STATIC}, "right": {}, "back": {}}, fuse_camera=True)
    pipe, seg, lines, _ = make(cfg, lookup)
    send_camera(pipe, "front", T0 - 30_000_000, image(10))
    send_camera(pipe, "front", T0 + 10_000_000, image(20))  # nearer: this one
    send_camera(pipe, "right", T0 + 40_000_000, image(30))
    send_camera(pipe, "back", T0, image(40))
    frame = pipe.on_cloud(cloud(T0, scan()))
    assert set(frame.images) == {"front", "right", "back"}
    out = pipe.process(frame)
    assert [v.name for v in out.views] == ["front", "right"]
    assert out.views[0].image[0, 0, 0] == 20 and out.views[1].image[0, 0, 0] == 30
    np.testing.assert_array_equal(out.views[0].T, AHEAD)
    assert [v.name for v in seg.calls[-1][1]] == ["front", "right"]  # fused with the cameras that worked
    counts = pipe.stats.snapshot().counts
    assert counts["camera.back.tf_missing"] == 1 and "camera.front.tf_missing" not in counts
    assert counts["camera.front.used"] == counts["camera.right.used"] == 1
    assert any("[camera.back.tf_missing]" in line for _, line in lines)
    statuses = {s.name: s for s in pipe.diagnostics("/n", "cpu")}
    assert statuses["/n: camera back"].level == WARN and statuses["/n: camera front"].level == OK
    assert statuses["/n: camera front"].values["extrinsics"] == "parameter"
    assert statuses["/n: camera right"].values["extrinsics"] == "tf"


def test_a_camera_without_extrinsics_is_reported_never_guessed() -> None:
    pipe, seg, lines, _ = make(config({"front": {}}, fuse_camera=True), lookup=None)
    send_camera(pipe, "front", T0, image(10))
    out = pipe.process(pipe.on_cloud(cloud(T0, scan())))
    assert out.views == [] and seg.calls[-1][1] == []
    assert pipe.stats.get("camera.front.no_extrinsics") == 1
    assert "extrinsics from NONE" in pipe.start_lines()[0]
    status = pipe.diagnostics("/n", "cpu")[1]
    assert status.level == WARN and "no extrinsics" in status.message


def test_compressed_images_are_decoded_and_broken_ones_counted() -> None:
    pipe, _, _, _ = make(config({"cam": {"transport": "compressed", "lidar_to_camera": STATIC}}))
    send_camera(pipe, "cam", T0, image(120), compressed=True)
    out = pipe.process(pipe.on_cloud(cloud(T0, scan())))
    assert len(out.views) == 1 and abs(int(out.views[0].image[5, 3, 0]) - 120) <= 3  # JPEG, nearly exact
    assert set(out.overlays) == {"cam"} and out.overlays["cam"][0] == "cam"  # the image's frame id
    header = rosbags_header(T0 + NS_PER_S // 10, "cam", TYPESTORE)
    junk = np.frombuffer(b"\xff\xd8junk", np.uint8)
    garbage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=junk)
    pipe.on_image("cam", garbage)
    out = pipe.process(pipe.on_cloud(cloud(T0 + NS_PER_S // 10, scan())))
    assert out is not None and out.views == []  # the cloud is segmented without the broken image
    assert pipe.stats.get("camera.cam.image_format.undecodable") == 1


def test_ego_crop_and_min_range_keep_points_from_the_model_and_count_them() -> None:
    pts = scan(300)
    pts[:20, :3] = [0.5, 0.2, -0.3]  # on the car (inside the box)
    pts[20:30, :3] = [2.9, 0.0, 0.0]  # outside the box, nearer than min_range 3 m
    cfg = config(**{"ego_crop.enabled": True, "ego_crop.min": [-1.0, -1.0, -1.0],
                    "ego_crop.max": [1.0, 1.0, 1.0], "min_range": 3.0})
    pipe, seg, _, _ = make(cfg)
    out = pipe.process(pipe.on_cloud(cloud(T0, pts)))
    exclude = seg.calls[-1][2]
    expected = np.zeros(len(pts), bool)
    expected[:30] = True
    expected[30:] = np.linalg.norm(pts[30:, :3], axis=1) < 3.0
    np.testing.assert_array_equal(exclude, expected)
    assert (out.labels[:30] == 0).all() and len(out.labeled) == len(pts)
    counts = pipe.stats.snapshot().counts
    assert counts["points_ego_crop"] == 20 and counts["points_min_range"] == int(expected[20:].sum())


def test_the_filtered_cloud_leaves_out_the_chosen_classes_in_input_order() -> None:
    drop = ["unlabeled", "road", "car"]
    pipe, _, _, _ = make(config(**{"filter.drop_classes": drop}))
    pts = scan(200)
    out = pipe.process(pipe.on_cloud(cloud(T0, pts)))
    keep = ~np.isin(out.labels, [CLASS_NAMES.index(c) for c in drop])
    np.testing.assert_array_equal(out.filtered, out.labeled[keep])
    pipe.reconfigure(config(**{"filter.publish": False}))
    assert pipe.process(pipe.on_cloud(cloud(T0 + 1, pts))).filtered is None


def test_processing_time_levels_follow_the_last_period_and_how_long_it_stayed_slow() -> None:
    cfg = config(**{"diagnostics.processing_time_warn_ms": 50.0, "diagnostics.processing_time_error_s": 2.0})
    pipe, _, _, clock = make(cfg)

    def frame(i: int, took_s: float) -> None:
        frame = pipe.on_cloud(cloud(T0 + i * NS_PER_S // 10, scan()))
        out = pipe.process(frame)
        clock.t += took_s
        pipe.frame_done(out)

    frame(0, 0.01)
    assert pipe.diagnostics("/n", "cpu")[0].level == OK
    frame(1, 0.08)  # slow
    status = pipe.diagnostics("/n", "cpu")[0]
    assert status.level == WARN and "80 ms above 50 ms" in status.message
    for i in range(2, 6):  # stays slow for more than 2 s
        clock.t += 0.5
        frame(i, 0.08)
    status = pipe.diagnostics("/n", "cpu")[0]
    assert status.level == ERROR and "processing time above 50 ms for" in status.message
    frame(6, 0.01)  # one fast frame: the slow stretch is over
    assert pipe.diagnostics("/n", "cpu")[0].level == OK


def test_refused_clouds_are_counted_and_a_driver_s_intensity_decided_once() -> None:
    pipe, _, lines, _ = make(config())
    pts = scan()
    assert pipe.on_cloud(cloud(T0, pts)) is not None
    assert pipe.on_cloud(cloud(T0, pts)) is None  # the same stamp again
    assert pipe.stats.get("skipped.stamp.duplicate") == 1
    velodyne = driver_cloud("velodyne").rosbags()
    pipe2, _, lines2, _ = make(config())
    frame = pipe2.on_cloud(velodyne)
    assert frame is not None and float(np.nanmax(frame.xyzi[:, 3])) <= 1.0
    decided = [line for _, line in lines2 if "[intensity.decided]" in line]
    assert len(decided) == 1 and "0..255" in decided[0]
    assert pipe2.diagnostics("/n", "cpu")[0].values["intensity.scale"] == "8bit"


@pytest.mark.parametrize("organised", [False, True])
def test_organised_in_organised_out(organised: bool) -> None:
    pipe, _, _, _ = make(config())
    msg = driver_cloud("reference", organised=organised, row_pad=8 if organised else 0).rosbags()
    out = pipe.process(pipe.on_cloud(msg))
    assert out.shape == ((msg.height, msg.width) if organised else (1, msg.width * msg.height))


def test_an_image_stamped_far_ahead_of_the_clouds_is_refused_and_counted_once() -> None:
    pipe, _, lines, _ = make(config({"cam": {"lidar_to_camera": STATIC}}))
    pipe.process(pipe.on_cloud(cloud(T0, scan())))  # the LiDAR clock starts
    send_camera(pipe, "cam", T0 + 60 * NS_PER_S, image(5))  # a broken camera clock, a minute ahead
    status = {s.name: s for s in pipe.diagnostics("/n", "cpu")}["/n: camera cam"]
    assert status.values["sync.future"] == "1" and status.level == WARN
    assert sum("[camera.cam.sync.future]" in line for _, line in lines) == 1
    assert len(pipe.cameras["cam"].cache) == 0


def test_a_silent_camera_is_a_warning_and_the_clouds_go_on_without_it() -> None:
    pipe, _, _, _ = make(config({"cam": {"lidar_to_camera": STATIC}}))
    send_camera(pipe, "cam", T0, image(5))
    assert len(pipe.process(pipe.on_cloud(cloud(T0, scan()))).views) == 1
    assert pipe.diagnostics("/n", "cpu")[1].level == OK
    for i in range(1, 4):  # the camera stops; a cloud every 0.1 s
        out = pipe.process(pipe.on_cloud(cloud(T0 + i * NS_PER_S // 10, scan())))
        assert out is not None and out.views == []
    status = pipe.diagnostics("/n", "cpu")[1]
    assert status.level == WARN and "no image within sync.slop for the last 3 clouds" in status.message


def test_after_a_bag_loop_the_first_cloud_still_gets_the_image_that_came_before_it() -> None:
    pipe, _, lines, _ = make(config({"cam": {"lidar_to_camera": STATIC}}))
    for i in range(3):
        t = T0 + 20 * NS_PER_S + i * NS_PER_S // 10
        send_camera(pipe, "cam", t, image(i))
        assert len(pipe.process(pipe.on_cloud(cloud(t, scan()))).views) == 1
    send_camera(pipe, "cam", T0, image(99))  # the bag starts over: its first image comes first ...
    out = pipe.process(pipe.on_cloud(cloud(T0, scan())))  # ... then its first cloud
    assert pipe.stats.get("stamp.time_jump") == 1
    assert len(out.views) == 1 and out.views[0].image[0, 0, 0] == 99


def test_fusion_asked_of_a_model_without_a_camera_branch_is_a_warning_not_a_failure() -> None:
    """The shipped model is exported LiDAR-only: `fuse_camera: true` must say so and run the LiDAR branch."""
    from xkd_ros.pipeline import load_segmenter

    logged: list[tuple[int, str]] = []
    segmenter, name = load_segmenter(config(fuse_camera=True), "cpu",
                                     lambda level, text: logged.append((level, text)))
    assert name == "xkd_synth_small.pt" and segmenter.fuse is False
    warning = "fuse_camera is true but xkd_synth_small.pt has no camera branch: LiDAR branch only"
    assert (WARN, warning) in logged
