"""Bags with several cameras: the six-camera surround rig through xkd-kitti2bag (raw, PNG, JPEG), and a bag
laid out the way `ros2 bag record` stores a real robot's topics (other names, raw and compressed cameras,
a multi-hop `/tf_static` rooted at base_link, camera stamps offset from the LiDAR's), read back and
replayed offline through the node's pipeline with fusion on.

Small on purpose: 3 scans of a 16 x 256 LiDAR, 64 x 36 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from node_fixtures import tiny_checkpoint
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from train_fixtures import write_surround

from xkd_core.classes import CLASS_NAMES, to_learning
from xkd_core.data.semantickitti import frame_ids, read_image, read_labels, read_points, sequence_dir
from xkd_core.data.views import VIEWS_FILE, read_views
from xkd_ros import bag_io
from xkd_ros.bag_eval import main as bag_eval_main
from xkd_ros.kitti2bag import main as kitti2bag_main
from xkd_ros.segment_params import config_from_values, params_file_values
from xkd_ros.tf_tree import rigid_inverse
from xkd_ros.transform import translation_quat_to_matrix

SCANS = 3
SIX = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT", "CAM_BACK"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: What `ros2 bag record` on Jazzy writes with (the reader is pinned to Humble's definitions).
JAZZY = get_typestore(Stores.ROS2_JAZZY)
T0_NS = 1_700_000_000_000_000_000
#: view -> (namespace, image topic leaf, transports recorded): the robot's own names.
RECORDED = {
    "CAM_FRONT": ("/sensors/cam_front", "image_raw", ("compressed",)),
    "CAM_FRONT_LEFT": ("/sensors/cam_front_left", "image_color", ("raw", "compressed")),
    "CAM_FRONT_RIGHT": ("/sensors/cam_front_right", "image_raw", ("raw",)),
    "CAM_BACK_LEFT": ("/sensors/cam_back_left", "image_raw", ("compressed",)),
    "CAM_BACK_RIGHT": ("/sensors/cam_back_right", "image_raw", ("raw",)),
    "CAM_BACK": ("/rear/camera", "image_raw", ("compressed",)),
}
#: the camera names discovery gives them (the shortest unique tail of the namespace)
FOUND = {"CAM_FRONT": "cam_front", "CAM_FRONT_LEFT": "cam_front_left", "CAM_FRONT_RIGHT": "cam_front_right",
         "CAM_BACK_LEFT": "cam_back_left", "CAM_BACK_RIGHT": "cam_back_right", "CAM_BACK": "camera"}
CLOUD_TOPIC = "/sensors/lidar_top/points"
LABEL_TOPIC = "/eval/lidar_top/labels"
CAMERA_DELAY_NS = 7_000_000  # cameras fire 7 ms after the LiDAR's stamp: never the same stamp
CAMERA_TRANSFER_NS = 15_000_000  # an image reaches the recorder 15 ms after its stamp
SWEEP_NS = 105_000_000  # a cloud, stamped at the sweep's start, is published once the sweep is done
#: optical frame (z forward, x right, y down) in its camera link frame (x forward, y left, z up)
LINK_FROM_OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
BASE_FROM_LIDAR = translation_quat_to_matrix([0.9, -0.02, 1.8], [0.0, 0.00873, 0.01745, 0.99979])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xkd-synth's six-camera surround rig, as `xkd-synth --rig surround` writes it."""
    return write_surround(tmp_path_factory.mktemp("surround"), ["00"], SCANS, seed=3, beams=16, columns=256,
                          image_wh=(64, 36))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ------------------------------------------------------------------------------ xkd-kitti2bag, six cameras
@pytest.mark.parametrize("codec", [None, "png", "jpeg"])
def test_surround_rig_round_trip(synth: Path, tmp_path: Path, codec: str | None, capsys) -> None:
    out = tmp_path / "bag"
    # xkd-synth -> xkd-kitti2bag with its defaults: every view of the sequence
    args = ["--data", str(synth), "--sequence", "00", "--out", str(out), "--no-progress"]
    assert kitti2bag_main(args + (["--compressed", codec] if codec else [])) == 0
    assert "cameras: " + ", ".join(SIX) in capsys.readouterr().out
    seq = sequence_dir(synth, "00")
    views = {v.name: v for v in read_views(seq / VIEWS_FILE)}

    with Reader(out) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        (tf_conn,) = [c for c in reader.connections if c.topic == "/tf_static"]
        (tf_msg,) = [bag_io.TYPESTORE.deserialize_cdr(raw, c.msgtype)
                     for c, _, raw in reader.messages(connections=[tf_conn])]
        image_msgs = [bag_io.TYPESTORE.deserialize_cdr(raw, c.msgtype)
                      for c, _, raw in reader.messages() if c.topic.startswith("/camera/CAM_FRONT/image_raw")]
    for name in SIX:
        image_topic, info_topic = bag_io.camera_topics(name, compressed=codec is not None)
        assert types[image_topic] == (bag_io.COMPRESSED_IMAGE if codec else bag_io.IMAGE)
        assert types[info_topic] == bag_io.CAMERA_INFO
    assert sorted((t.header.frame_id, t.child_frame_id) for t in tf_msg.transforms) == sorted(
        ("velodyne", n) for n in SIX)
    if codec:
        magic = PNG_MAGIC if codec == "png" else b"\xff\xd8\xff"
        assert all(bytes(m.data[:len(magic)]) == magic for m in image_msgs) and len(image_msgs) == SCANS
        assert image_msgs[0].format == f"rgb8; {codec} compressed bgr8"

    layout = bag_io.inspect_bag(out)
    assert layout.found == sorted(SIX) and layout.lidar_frame == "velodyne" and layout.notes == []
    assert {c.name: (c.transport, c.extrinsics, c.frame_id) for c in layout.cameras} == {
        n: ("compressed" if codec else "raw", "custom_data", n) for n in SIX}
    frames = list(bag_io.read_bag_frames(out))
    assert len(frames) == SCANS
    for fid, frame in zip(frame_ids(seq), frames):
        points = read_points(seq / "velodyne" / f"{fid}.bin")
        semantic, _ = read_labels(seq / "labels" / f"{fid}.label", num_points=len(points))
        np.testing.assert_array_equal(frame.points, points)
        np.testing.assert_array_equal(frame.labels, to_learning(semantic))
        assert sorted(v.name for v in frame.views) == sorted(SIX)
        for view in frame.views:
            calib = views[view.name]
            np.testing.assert_array_equal(view.K, calib.K)
            np.testing.assert_array_equal(view.T, calib.T)  # the exact copy: bit for bit
            truth = read_image(calib.image_path(seq, fid))
            if codec == "jpeg":  # lossy: exactly what OpenCV's JPEG at image_transport's quality 95 gives
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(truth, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, 95])
                np.testing.assert_array_equal(view.image, cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR),
                                                                       cv2.COLOR_BGR2RGB))
            else:
                np.testing.assert_array_equal(view.image, truth)


def test_cameras_option_and_lidar_only(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "two"
    args = ["--data", str(synth), "--sequence", "00", "--no-progress"]
    assert kitti2bag_main([*args, "--out", str(out), "--cameras", "CAM_BACK", "CAM_FRONT"]) == 0
    assert [c.name for c in bag_io.inspect_bag(out).cameras] == ["CAM_BACK", "CAM_FRONT"]
    lidar_only = tmp_path / "lidar"
    assert kitti2bag_main([*args, "--out", str(lidar_only), "--cameras"]) == 0
    assert bag_io.bag_topics(lidar_only).types.keys() == {"/velodyne_points", "/xkd/ground_truth"}
    capsys.readouterr()
    assert kitti2bag_main([*args, "--out", str(tmp_path / "x"), "--cameras", "CAM_SIDE"]) == 2
    assert "no camera view named 'CAM_SIDE'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not among the choices
        kitti2bag_main([*args, "--out", str(tmp_path / "y"), "--compressed", "webp"])


# ------------------------------------------------------------------------------ a bag recorded on a robot
def write_recorded_bag(path: Path, synth: Path, drop_tf: str | None = None,
                       with_labels: bool = False) -> None:
    """The synthetic drive as a robot's recording: its own topic and frame names, Velodyne's XYZIRT cloud
    with 0..255 intensity, bgr8 Images and plain-"jpeg" CompressedImages encoded by OpenCV, cameras
    stamped 7 ms after the scan, and `/tf_static` as robot_state_publisher (base_link -> cam links ->
    optical frames) plus a static_transform_publisher (base_link -> lidar_top) send it. `drop_tf` leaves
    one camera's optical frame out of the tree."""
    seq = sequence_dir(synth, "00")
    views = {v.name: v for v in read_views(seq / VIEWS_FILE)}
    types = JAZZY.types
    header = types["std_msgs/msg/Header"]
    stamp_t = types["builtin_interfaces/msg/Time"]

    def hdr(ns: int, frame: str):
        return header(stamp=stamp_t(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)

    def tf(parent: str, child: str, T: np.ndarray):
        from xkd_ros.transform import to_rosbags_transform_stamped
        return to_rosbags_transform_stamped(hdr(T0_NS, parent), child, T, JAZZY)

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        def connect(topic: str, msgtype: str, latched: bool = False):
            qos = bag_io.LATCHED_QOS if latched else bag_io.SENSOR_QOS
            return writer.add_connection(topic, msgtype, typestore=JAZZY, offered_qos_profiles=[qos])

        def put(conn, log_ns: int, msg) -> None:
            writer.write(conn, log_ns, JAZZY.serialize_cdr(msg, conn.msgtype))

        tf_conn = connect("/tf_static", bag_io.TF_MESSAGE, latched=True)
        robot = []
        for name, (ns, _, _) in RECORDED.items():
            short = ns.strip("/").replace("/", "_")
            base_from_optical = BASE_FROM_LIDAR @ rigid_inverse(views[name].T)
            robot.append(tf("/base_link" if name == "CAM_BACK" else "base_link", f"{short}_link",
                            base_from_optical @ rigid_inverse(LINK_FROM_OPTICAL)))
            if name != drop_tf:
                robot.append(tf(f"{short}_link", f"{short}_optical_frame", LINK_FROM_OPTICAL))
        put(tf_conn, T0_NS - 10**9, types[bag_io.TF_MESSAGE](transforms=robot))
        put(tf_conn, T0_NS - 10**9 + 5, types[bag_io.TF_MESSAGE](
            transforms=[tf("base_link", "lidar_top", BASE_FROM_LIDAR)]))

        cloud_conn = connect(CLOUD_TOPIC, bag_io.POINTCLOUD2)
        label_conn = connect(LABEL_TOPIC, bag_io.POINTCLOUD2) if with_labels else None
        debug_conn = connect("/debug/image", bag_io.IMAGE)  # an image with no camera_info: not a camera
        cams = {}
        for name, (ns, leaf, transports) in RECORDED.items():
            conns = {t: connect(f"{ns}/{leaf}" + ("/compressed" if t == "compressed" else ""),
                                bag_io.COMPRESSED_IMAGE if t == "compressed" else bag_io.IMAGE)
                     for t in transports}
            cams[name] = (conns, connect(f"{ns}/camera_info", bag_io.CAMERA_INFO))
        velodyne = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                             "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                             "offsets": [0, 4, 8, 12, 16, 18], "itemsize": 22})
        labelled = np.dtype({"names": ["x", "y", "z", "label"], "formats": ["<f4", "<f4", "<f4", "<u2"],
                             "offsets": [0, 4, 8, 12], "itemsize": 16})
        field_t = types["sensor_msgs/msg/PointField"]

        def cloud(ns: int, arr: np.ndarray):
            kinds = {"<f4": 7, "<u2": 4}
            fields = [field_t(name=n, offset=arr.dtype.fields[n][1],
                              datatype=kinds[arr.dtype.fields[n][0].str], count=1) for n in arr.dtype.names]
            return types[bag_io.POINTCLOUD2](header=hdr(ns, "lidar_top"), height=1, width=len(arr),
                                             fields=fields, is_bigendian=False, point_step=arr.dtype.itemsize,
                                             row_step=arr.dtype.itemsize * len(arr),
                                             data=arr.view(np.uint8).reshape(-1), is_dense=True)

        for i, fid in enumerate(frame_ids(seq)):  # written in log-time order, as a recorder receives them
            stamp = T0_NS + i * 100_000_000
            put(debug_conn, stamp + 4_000_000, types[bag_io.IMAGE](
                header=hdr(stamp, "debug"), height=2, width=2, encoding="mono8", is_bigendian=0, step=2,
                data=np.zeros(4, np.uint8)))
            cam_stamp = stamp + CAMERA_DELAY_NS
            for name, (conns, info_conn) in cams.items():
                view = views[name]
                frame = f"{RECORDED[name][0].strip('/').replace('/', '_')}_optical_frame"
                rgb = read_image(view.image_path(seq, fid))
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                h, w = rgb.shape[:2]
                received = cam_stamp + CAMERA_TRANSFER_NS
                if "raw" in conns:
                    put(conns["raw"], received, types[bag_io.IMAGE](
                        header=hdr(cam_stamp, frame), height=h, width=w, encoding="bgr8", is_bigendian=0,
                        step=3 * w, data=bgr.reshape(-1)))
                if "compressed" in conns:
                    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
                    assert ok
                    put(conns["compressed"], received, types[bag_io.COMPRESSED_IMAGE](
                        header=hdr(cam_stamp, frame), format="jpeg", data=jpeg.reshape(-1)))
                K = view.K
                roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                do_rectify=False)
                put(info_conn, received, types[bag_io.CAMERA_INFO](
                    header=hdr(cam_stamp, frame), height=h, width=w, distortion_model="plumb_bob",
                    d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
                    p=np.c_[K, np.zeros(3)].reshape(-1), binning_x=0, binning_y=0, roi=roi))
            pts = read_points(seq / "velodyne" / f"{fid}.bin")
            arr = np.zeros(len(pts), velodyne)
            for k, axis in enumerate("xyz"):
                arr[axis] = pts[:, k]
            arr["intensity"] = np.round(pts[:, 3] * 255.0)
            arr["ring"] = np.arange(len(pts)) % 16
            put(cloud_conn, stamp + SWEEP_NS, cloud(stamp, arr))  # stamped at the sweep's start
            if label_conn is not None:
                semantic, _ = read_labels(seq / "labels" / f"{fid}.label", num_points=len(pts))
                lab = np.zeros(len(pts), labelled)
                for k, axis in enumerate("xyz"):
                    lab[axis] = pts[:, k]
                lab["label"] = to_learning(semantic)
                put(label_conn, stamp + SWEEP_NS + 1_000_000, cloud(stamp, lab))


@pytest.fixture(scope="module")
def recorded(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recorded") / "robot_bag"
    write_recorded_bag(path, synth)
    return path


def test_discovery_of_cameras_topics_and_a_multi_hop_tf_tree(recorded: Path, synth: Path) -> None:
    layout = bag_io.inspect_bag(recorded)
    assert layout.cloud_topic == CLOUD_TOPIC  # the bag's only PointCloud2 topic
    assert layout.lidar_frame == "lidar_top" and layout.gt_topic is None and layout.notes == []
    assert layout.found == sorted(FOUND.values())  # /debug/image has no camera_info: not a camera
    views = {v.name: v for v in read_views(sequence_dir(synth, "00") / VIEWS_FILE)}
    for view_name, name in FOUND.items():
        cam = next(c for c in layout.cameras if c.name == name)
        ns, leaf, transports = RECORDED[view_name]
        raw = "raw" in transports  # raw preferred where both were recorded
        assert cam.image_topic == f"{ns}/{leaf}" + ("" if raw else "/compressed")
        assert cam.transport == ("raw" if raw else "compressed")
        assert (cam.base_topic, cam.info_topic) == (f"{ns}/{leaf}", f"{ns}/camera_info")
        assert cam.frame_id == ns.strip("/").replace("/", "_") + "_optical_frame" and not cam.rectified
        # LiDAR -> camera composed over base_link -> lidar_top and base_link -> link -> optical
        assert cam.extrinsics == "tf_static"
        np.testing.assert_allclose(cam.T, views[view_name].T, atol=1e-9)
        K, T, hw = cam.geometry
        np.testing.assert_array_equal(K, views[view_name].K)
        assert hw == (36, 64)
    # frames group messages by exact stamp: the scans come back whole, without the offset camera images
    frames = list(bag_io.read_bag_frames(recorded))
    seq = sequence_dir(synth, "00")
    assert [f.stamp_ns for f in frames] == [T0_NS + i * 100_000_000 for i in range(SCANS)]
    for fid, frame in zip(frame_ids(seq), frames):
        points = read_points(seq / "velodyne" / f"{fid}.bin")
        np.testing.assert_array_equal(frame.points[:, :3], points[:, :3])
        np.testing.assert_array_equal(frame.points[:, 3], np.round(points[:, 3] * 255.0))  # driver: 0..255
        assert frame.labels is None and frame.views == []
    chosen = bag_io.inspect_bag(recorded, cameras=["camera", "cam_front"])
    assert [c.name for c in chosen.cameras] == ["camera", "cam_front"]
    with pytest.raises(bag_io.BagFormatError, match=r"no camera \['CAM_FRONT'\].*cam_back_left"):
        bag_io.inspect_bag(recorded, cameras=["CAM_FRONT"])
    with pytest.raises(bag_io.BagFormatError, match="ground-truth topic /xkd/ground_truth is absent"):
        bag_io.inspect_bag(recorded, require_gt=True)


def test_discover_cameras_names_and_preferences() -> None:
    I, C, INFO = bag_io.IMAGE, bag_io.COMPRESSED_IMAGE, bag_io.CAMERA_INFO
    types = {"/front/camera/image_raw": I, "/front/camera/camera_info": INFO,
             "/rear/camera/image_rect_color": I, "/rear/camera/image_raw/compressed": C,
             "/rear/camera/camera_info": INFO,
             "/cam/0/jpeg": C, "/cam/0/camera_info": INFO,  # no /compressed suffix
             "/stereo/left/image_rect": I, "/stereo/left/image_raw": I, "/stereo/left/camera_info": INFO,
             "/lonely/image_raw": I}
    cams = {c.name: c for c in bag_io.discover_cameras(types)}
    assert set(cams) == {"front_camera", "rear_camera", "cam_0", "left"}
    rear = cams["rear_camera"]
    assert rear.image_topic == "/rear/camera/image_rect_color" and rear.rectified
    assert cams["left"].image_topic == "/stereo/left/image_raw" and not cams["left"].rectified
    jpeg = cams["cam_0"]
    assert (jpeg.transport, jpeg.base_topic, jpeg.subscribed_topic) == ("compressed", "/cam/0/jpeg",
                                                                        "/cam/0/jpeg/compressed")


# ------------------------------------------------------------------------------ offline bag-eval on it
def run_eval(bag: Path, out: Path, checkpoint: Path, *extra: str) -> dict:
    rc = bag_eval_main(["--bag", str(bag), "--out", str(out), "--checkpoint", str(checkpoint), "--fuse",
                        "--param", "device:=cpu", "--no-progress", *extra])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else rc
    return json.loads((out / "report.json").read_text())


def test_offline_fused_replay_of_a_recorded_bag_without_ground_truth(recorded: Path, synth: Path,
                                                                     checkpoint: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "eval"
    report = run_eval(recorded, out, checkpoint)
    printed = capsys.readouterr().out
    assert report["schema"] == "xkd.bag_eval/2" and report["fuse"] is True
    # no ground truth: replayed, not refused; no mIoU, but everything else
    assert report["ground_truth"] is False and report["gt_topic"] is None
    assert report["miou"] == {"full": None, "frustum": None} and "per_class_iou" not in report["files"]
    f = report["frames"]
    assert (f["scans"], f["checked"], f["dropped"], f["mismatched"], f["scored"]) == (SCANS, SCANS, 0, 0, 0)
    seq = sequence_dir(synth, "00")
    sizes = [len(read_points(seq / "velodyne" / f"{fid}.bin")) for fid in frame_ids(seq)]
    assert [r["points"] for r in report["per_frame"]] == sizes
    assert sum(report["label_histogram"].values()) == sum(sizes)
    assert set(report["label_histogram"]) == set(CLASS_NAMES)
    assert report["latency_ms"]["samples"] == SCANS
    assert report["rates_hz"]["bag_scans"] == pytest.approx(10.0)
    assert "no ground truth in the bag (no mIoU)" in printed
    # every camera used in every scan (the 7 ms camera offset is within the node's slop), nothing failed
    assert set(report["cameras"]) == set(FOUND.values())
    for name, cam in report["cameras"].items():
        assert (cam["frames_used"], cam["decode_failures"], cam["tf_missing"]) == (SCANS, 0, 0), name
        assert cam["bag_extrinsics"] == "tf_static" and cam["node_extrinsics"] == "parameter"
    # the node got the bag's topics, transports and extrinsics
    params = report["node_parameters"]
    assert params["topics.cloud_in"] == CLOUD_TOPIC
    assert params["cameras.names"] == sorted(FOUND.values())
    assert params["cameras.cam_front.transport"] == "compressed"
    assert params["cameras.cam_front.image_topic"] == "/sensors/cam_front/image_raw"
    assert params["cameras.cam_front_left.transport"] == "raw"
    assert params["cameras.cam_front_left.image_topic"] == "/sensors/cam_front_left/image_color"
    assert len(params["cameras.camera.lidar_to_camera"]) == 16
    # node_params.yaml is a params file the node reads as it is (all parameters, valid)
    cfg = config_from_values(params_file_values([out / "node_params.yaml"]))
    assert list(cfg.cameras) == sorted(FOUND.values()) and cfg.fuse_camera
    for name in ("latency_hist", "label_histogram", "bev"):
        assert (out / report["files"][name]).read_bytes()[:8] == PNG_MAGIC
    log = (out / "node.log").read_text()
    assert "[INFO] camera cam_front: /sensors/cam_front/image_raw/compressed" in log


def test_a_camera_without_tf_is_skipped_and_reported(synth: Path, checkpoint: Path, tmp_path: Path,
                                                     capsys) -> None:
    bag = tmp_path / "no_tf"
    write_recorded_bag(bag, synth, drop_tf="CAM_BACK_LEFT", with_labels=True)
    out = tmp_path / "eval"
    report = run_eval(bag, out, checkpoint, "--gt-topic", LABEL_TOPIC)
    printed = capsys.readouterr().out
    missing = report["cameras"]["cam_back_left"]
    assert missing["bag_extrinsics"] == "none"
    assert "cam_back_left_optical_frame" in missing["bag_extrinsics_note"]
    assert (missing["frames_used"], missing["tf_missing"], missing["decode_failures"]) == (0, SCANS, 0)
    assert missing["level"] == 1 and not missing["in_frustum"]
    for name, cam in report["cameras"].items():
        if name != "cam_back_left":
            assert (cam["frames_used"], cam["tf_missing"]) == (SCANS, 0), name
    assert "cameras.cam_back_left.lidar_to_camera" not in report["node_parameters"]
    assert any("cam_back_left" in note for note in report["bag_notes"])
    assert (f"camera cam_back_left (compressed, extrinsics none): used in 0 of {SCANS} scans, 0 decode "
            f"failures, {SCANS} without extrinsics") in printed
    # scored against the bag's own label topic; the frustum is the union of the five cameras that work
    assert report["ground_truth"] is True and report["frames"]["scored"] == SCANS
    assert 0.0 <= report["miou"]["full"] <= 100.0 and 0.0 <= report["miou"]["frustum"] <= 100.0
    assert 0 < report["points_scored"]["frustum"] < report["points_scored"]["full"]
    assert (out / report["files"]["per_class_iou"]).read_bytes()[:8] == PNG_MAGIC
    assert f"mIoU full scan {report['miou']['full']:.2f} %" in printed
    node_params = yaml.safe_load((out / "node_params.yaml").read_text())["/segment_node"]["ros__parameters"]
    assert "lidar_to_camera" not in node_params["cameras"]["cam_back_left"]
