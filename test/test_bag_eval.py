"""xkd-bag-eval: scoring with known predictions, the offline and live replays, the labeled output bag.

(Several cameras, bags recorded by others, a camera without TF: test_bag_cameras.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kitti_fixtures import write_tiny_sequence
from node_fixtures import tiny_checkpoint
from rosbags.rosbag2 import Reader

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError
from xkd_core.inference import Segmenter
from xkd_ros import bag_io
from xkd_ros.bag_eval import main, parse_param
from xkd_ros.bag_io import POINTCLOUD2, TYPESTORE, BagFrame, inspect_bag, read_bag_frames
from xkd_ros.bag_replay import bag_messages
from xkd_ros.kitti2bag import convert_sequence
from xkd_ros.pointcloud import cloud_field, cloud_to_xyzi, labeled_cloud_array, to_rosbags_cloud
from xkd_ros.replay_score import NodeOutput, ReplayScorer, merge_by_stamp
from xkd_ros.stamp import rosbags_header

N_SCANS = 4
ROAD, SIDEWALK, CAR = CLASS_NAMES.index("road"), CLASS_NAMES.index("sidewalk"), CLASS_NAMES.index("car")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_leftover_children(no_leftover_children):
    """Every test of this module starts child processes (the node, players): none may outlive it."""


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted tiny sequence: 4 scans of ~600 labelled points, camera 2."""
    root = tmp_path_factory.mktemp("bag_eval")
    write_tiny_sequence(root / "kitti", "08", n_frames=N_SCANS, n_points=600, cameras=(2,))
    return convert_sequence(root / "kitti", "08", root / "run.mcap", cameras=(2,), progress=False).bag


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def serialized_cloud(stamp_ns: int, points: np.ndarray, labels: np.ndarray) -> bytes:
    """A labeled cloud as the node publishes it, serialized."""
    arr = labeled_cloud_array(points, labels.astype(np.uint16), np.ones(len(points), np.float32))
    msg = to_rosbags_cloud(rosbags_header(stamp_ns, "velodyne", TYPESTORE), arr, TYPESTORE)
    return bytes(TYPESTORE.serialize_cdr(msg, POINTCLOUD2))


def labeled_messages(path: Path, topic: str = "/xkd/labeled_cloud") -> list:
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [TYPESTORE.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]


# --------------------------------------------------------------------------- scoring with known predictions
def test_perfect_predictor_scores_100(bag: Path) -> None:
    (camera,) = inspect_bag(bag).cameras
    frames = list(read_bag_frames(bag, cameras=[]))
    outputs = [NodeOutput(f.stamp_ns, serialized_cloud(f.stamp_ns, f.points, f.labels), 0.01) for f in frames]
    scorer = ReplayScorer(frustum=[camera.geometry])
    scorer.consume(merge_by_stamp(frames, outputs))
    report = scorer.report()
    assert report["frames"]["scored"] == N_SCANS and report["frames"]["dropped"] == 0
    assert report["miou"]["full"] == pytest.approx(100.0)
    assert report["miou"]["frustum"] == pytest.approx(100.0)
    present = {CLASS_NAMES[c] for f in frames for c in np.unique(f.labels) if c != 0}
    assert {k for k, v in report["per_class_iou"]["full"].items() if v is not None} == present
    assert all(report["per_class_iou"]["full"][k] == pytest.approx(100.0) for k in present)
    # the frustum is a strict, non-empty subset of the labelled points of this bag
    assert 0 < report["points_scored"]["frustum"] < report["points_scored"]["full"]
    assert report["latency_ms"]["p50"] == pytest.approx(10.0)


def _hand_frame() -> tuple[BagFrame, np.ndarray]:
    """10 points: 4 road ahead of the camera, 4 car behind it, 2 unlabelled; and a known-wrong prediction."""
    xyz = np.array([[10, -1, 0], [10, 0, 0], [10, 1, 0], [12, 0, 0],  # road, in view
                    [-10, -1, 0], [-10, 0, 0], [-10, 1, 0], [-12, 0, 0],  # car, behind the camera
                    [10, 0, 1], [-10, 0, 1]], dtype=np.float32)  # ignore
    points = np.c_[xyz, np.zeros(10)].astype(np.float32)
    truth = np.array([ROAD] * 4 + [CAR] * 4 + [0, 0], dtype=np.uint16)
    pred = np.array([ROAD, ROAD, CAR, CAR, CAR, CAR, CAR, CAR, ROAD, SIDEWALK], dtype=np.uint16)
    return BagFrame(stamp_ns=1_000, points=points, labels=truth), pred


def test_known_wrong_predictor_gives_hand_computed_iou() -> None:
    frame, pred = _hand_frame()
    K = np.array([[50.0, 0, 49.5], [0, 50.0, 49.5], [0, 0, 1]])
    T = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # looks along LiDAR +x
    dropped = BagFrame(stamp_ns=2_000, points=frame.points, labels=frame.labels)
    shuffled = BagFrame(stamp_ns=3_000, points=frame.points, labels=frame.labels)
    outputs = [NodeOutput(1_000, serialized_cloud(1_000, frame.points, pred), 0.020),
               NodeOutput(3_000, serialized_cloud(3_000, frame.points[::-1], pred), 0.030),
               NodeOutput(4_000, serialized_cloud(4_000, frame.points, pred), 0.040)]
    scorer = ReplayScorer(frustum=[(K, T, (100, 100))])
    scorer.consume(merge_by_stamp([frame, dropped, shuffled], outputs))
    r = scorer.report()
    # road: TP 2, FN 2 (predicted car), FP 0 (the unlabelled point predicted road does not count) -> 50 %
    # car: TP 4, FP 2 (road points), FN 0 -> 66.67 %; mIoU over the two present classes
    assert r["per_class_iou"]["full"]["road"] == pytest.approx(50.0)
    assert r["per_class_iou"]["full"]["car"] == pytest.approx(100 * 4 / 6, abs=1e-3)
    assert r["miou"]["full"] == pytest.approx((50.0 + 100 * 4 / 6) / 2, abs=1e-3)
    assert r["per_class_iou"]["full"]["sidewalk"] is None  # predicted, but absent from the truth
    # in the frustum only the 4 road points (and one unlabelled) are seen: road 2/4, car absent
    assert r["per_class_iou"]["frustum"]["road"] == pytest.approx(50.0)
    assert r["per_class_iou"]["frustum"]["car"] is None
    assert r["miou"]["frustum"] == pytest.approx(50.0)
    assert r["points_scored"] == {"full": 8, "frustum": 4}
    f = r["frames"]
    counts = (f["scans"], f["scored"], f["dropped"], f["mismatched"], f["unexpected_outputs"])
    assert counts == (3, 1, 1, 1, 1)
    assert f["drop_rate"] == pytest.approx(1 / 3, abs=1e-5)
    # every point of the scored output, by predicted class
    assert r["label_histogram"]["car"] == 6 and r["label_histogram"]["road"] == 3
    assert r["label_histogram"]["sidewalk"] == 1 and sum(r["label_histogram"].values()) == 10
    assert r["dropped_stamps_ns"] == [2_000]
    assert "stamp 3000" in r["mismatch_reason"]
    assert r["latency_ms"]["samples"] == 1 and r["latency_ms"]["p99"] == pytest.approx(20.0)


def test_merge_by_stamp_pairs_and_leaves_gaps() -> None:
    frames = [BagFrame(s, np.zeros((0, 4), np.float32), None) for s in (1, 2, 4)]
    outs = [NodeOutput(s, b"", 0.0) for s in (2, 3, 4)]
    pairs = [(None if f is None else f.stamp_ns, None if o is None else o.stamp_ns)
             for f, o in merge_by_stamp(frames, outs)]
    assert pairs == [(1, None), (2, 2), (None, 3), (4, 4)]


def test_bag_messages_play_camera_before_cloud_of_equal_stamp(bag: Path) -> None:
    msgs = list(bag_messages(bag))
    assert [m.log_ns for m in msgs] == sorted(m.log_ns for m in msgs)
    first_stamp = [m for m in msgs if m.log_ns == msgs[0].log_ns]
    order = [m.topic for m in first_stamp]
    image_topic, info_topic = bag_io.camera_topics("image_2")
    topics = (info_topic, image_topic, bag_io.SCAN_TOPIC)
    info, image, scan = (order.index(t) for t in topics)
    assert info < image < scan


# --------------------------------------------------------------------------- the command line, offline
def test_offline_report_pictures_and_labeled_bag(bag: Path, checkpoint: Path, tmp_path: Path) -> None:
    out, labeled = tmp_path / "eval", tmp_path / "labeled"
    rc = main(["--bag", str(bag), "--out", str(out), "--checkpoint", str(checkpoint), "--write-bag",
               str(labeled), "--param", "device:=cpu", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "xkd.bag_eval/2" and report["mode"] == "offline"
    assert report["frames"]["scored"] == N_SCANS and report["frames"]["dropped"] == 0
    for key in ("full", "frustum"):
        assert 0.0 <= report["miou"][key] <= 100.0
        assert set(report["per_class_iou"][key]) == set(CLASS_NAMES[1:])
    assert report["latency_ms"]["samples"] == N_SCANS and report["latency_ms"]["p50"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p90"] <= report["latency_ms"]["p99"]
    assert report["node_diagnostics"]["frames_out"] == str(N_SCANS)
    camera = report["cameras"]["image_2"]
    assert camera["counters"]["sync.matched"] == str(N_SCANS)  # every scan got its image
    assert (camera["frames_used"], camera["decode_failures"], camera["tf_missing"]) == (N_SCANS, 0, 0)
    assert report["node_parameters"]["cameras.names"] == ["image_2"]
    assert len(report["per_frame"]) == N_SCANS
    for name in ("latency_hist", "per_class_iou", "bev"):
        assert (out / report["files"][name]).read_bytes()[:8] == PNG_MAGIC
    assert report["labeled_bag_messages"] == N_SCANS

    # the labeled bag: one cloud per scored scan, with the input's stamps and points and the labels that
    # the node's Segmenter gives (same checkpoint, called directly)
    seg = Segmenter.from_checkpoint(checkpoint, device="cpu")
    frames = {f.stamp_ns: f for f in read_bag_frames(bag, cameras=[])}
    msgs = labeled_messages(labeled)
    assert len(msgs) == N_SCANS
    for msg in msgs:
        frame = frames[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec]
        assert {f.name for f in msg.fields} >= {"x", "y", "z", "intensity", "label", "rgb", "confidence"}
        np.testing.assert_array_equal(cloud_to_xyzi(msg), frame.points)
        np.testing.assert_array_equal(cloud_field(msg, "label", np.uint16), seg.segment(frame.points).labels)


def test_offline_replay_imports_no_ros(bag: Path, checkpoint: Path, tmp_path: Path) -> None:
    """The offline mode is the pipeline with rosbags messages: it runs where no ROS is installed."""
    code = ("import sys\nfrom xkd_ros.bag_eval import main\n"
            f"rc = main(['--bag', {str(bag)!r}, '--out', {str(tmp_path / 'e')!r}, '--checkpoint', "
            f"{str(checkpoint)!r}, '--param', 'device:=cpu', '--no-progress'])\n"
            "ros = sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('rclpy', 'rcl_interfaces', 'sensor_msgs'))\n"
            "print('ROS MODULES', ros)\nsys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr
    assert "ROS MODULES []" in done.stdout


def test_bad_input_is_refused_with_a_clear_message(bag: Path, checkpoint: Path, tmp_path: Path,
                                                   capsys) -> None:
    args = ["--out", str(tmp_path / "e"), "--checkpoint", str(checkpoint), "--no-progress"]
    assert main(["--bag", str(tmp_path / "nope"), *args]) == 2
    assert "bag not found" in capsys.readouterr().err
    assert main(["--bag", str(bag), "--out", str(tmp_path / "e"), "--checkpoint", str(tmp_path / "x")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["--bag", str(bag), *args, "--rate-scale", "0"]) == 2
    assert "--rate-scale" in capsys.readouterr().err
    assert main(["--bag", str(bag), *args, "--camera", "3"]) == 2
    assert "no camera ['image_3']" in capsys.readouterr().err
    assert main(["--bag", str(bag), *args, "--cloud-topic", "/points"]) == 2
    assert "/points is absent" in capsys.readouterr().err
    assert main(["--bag", str(bag), *args, "--gt-topic", "/labels"]) == 2
    assert "ground-truth topic /labels is absent" in capsys.readouterr().err
    assert main(["--bag", str(bag), *args, "--param", "cameras.image_2.transport:=jpeg"]) == 2
    assert "transport" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["--bag", str(bag), *args, "--write-bag", str(tmp_path / "taken")]) == 2
    assert "--write-bag" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="NAME:=VALUE"):
        parse_param("device=cpu")


def test_bag_without_ground_truth_reports_what_it_can(tmp_path: Path, checkpoint: Path, capsys) -> None:
    seq = write_tiny_sequence(tmp_path / "kitti", "11", n_frames=2, n_points=50, cameras=(2,),
                              with_labels=False)
    nogt = convert_sequence(tmp_path / "kitti", "11", tmp_path / "nogt", progress=False).bag
    out = tmp_path / "e"
    assert main(["--bag", str(nogt), "--out", str(out), "--checkpoint", str(checkpoint), "--param",
                 "device:=cpu", "--no-progress"]) == 0
    assert "no ground truth in the bag (no mIoU)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["ground_truth"] is False and report["miou"] == {"full": None, "frustum": None}
    f = report["frames"]
    assert (f["scans"], f["checked"], f["dropped"], f["without_ground_truth"], f["scored"]) == (2, 2, 0, 2, 0)
    assert sum(report["label_histogram"].values()) == sum(len(p) for p in seq.points)
    assert report["latency_ms"]["samples"] == 2 and report["cameras"]["image_2"]["frames_used"] == 2


# --------------------------------------------------------------------------- live: the real node over DDS
@pytest.mark.ros
def test_live_replay_scores_what_the_node_publishes(bag: Path, checkpoint: Path, tmp_path: Path) -> None:
    out, labeled = tmp_path / "live", tmp_path / "labeled_live"
    rc = main(["--bag", str(bag), "--out", str(out), "--checkpoint", str(checkpoint), "--live",
               "--rate-scale", "0.5", "--write-bag", str(labeled), "--param", "device:=cpu",
               "--param", "cpu_threads:=1", "--param", "qos.input.reliability:=reliable",
               "--startup-timeout", "240", "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    assert rc == 0, (out / "node.log").read_text()
    assert report["mode"] == "live"
    assert report["player"]["scans_published"] == N_SCANS
    assert report["player"]["scans_received_by_node"] == N_SCANS  # reliable input: no transport loss
    f = report["frames"]
    assert f["scored"] >= 1 and f["scored"] + f["dropped"] == N_SCANS and f["mismatched"] == 0
    diag = report["node_diagnostics"]
    assert diag is not None and diag["frames_in"] == str(N_SCANS)
    assert int(diag["frames_out"]) == f["scored"]
    lat = report["latency_ms"]
    assert lat["samples"] == f["scored"] and 0 < lat["p50"] <= lat["p99"]
    assert report["node"]["exit_code"] == 0  # stopped cleanly with SIGINT
    camera = report["cameras"]["image_2"]  # the node's own per-camera figures, over DDS
    assert camera["level"] == 0 and camera["decode_failures"] == 0 and camera["tf_missing"] == 0
    assert 1 <= camera["frames_used"] <= f["checked"]
    assert 0.0 <= report["miou"]["full"] <= 100.0
    for name in ("latency_hist", "per_class_iou", "bev"):
        assert (out / report["files"][name]).read_bytes()[:8] == PNG_MAGIC
    msgs = labeled_messages(labeled)
    assert len(msgs) == f["scored"]
    frames = {fr.stamp_ns: fr for fr in read_bag_frames(bag, cameras=[])}
    for msg in msgs:
        frame = frames[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec]
        np.testing.assert_array_equal(cloud_to_xyzi(msg), frame.points)
