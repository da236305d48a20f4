"""rosbag2 layout of xkd bags and a reader that turns such a bag back into frames, without ROS.

Topics (written by `xkd-kitti2bag`, read here and by the bag evaluation):

- `/velodyne_points`: PointCloud2 x, y, z, intensity float32, frame `velodyne`
- `/camera/image_N/image_raw`: Image rgb8, frame `camera_N` (N = KITTI camera 2, 3)
- `/camera/image_N/camera_info`: CameraInfo with K and P (rectified KITTI images: D = 0, R = I)
- `/tf_static`: one TFMessage, `velodyne -> camera_N` = inv(T) per camera (tf2's parent -> child
  pose), offered with transient-local durability so late subscribers of a replay still get it
- `/xkd/ground_truth`: PointCloud2 x, y, z float32 + `label` uint16 (learning ids), stamped like the scan

A quaternion cannot carry a float64 rotation matrix bit for bit, so the converter also stores each
`T` exactly (16 `repr` floats) in the bag's `custom_data` under `xkd.lidar_to_camera.camera_N`; the
reader uses that copy when it agrees with `/tf_static` (to 1e-9) and the transform otherwise. Frames
read from a converted bag are then bit-identical to the files (and so are predictions made on them).

Messages use the `rosbags` typestore pinned to ROS 2 Humble (`TYPESTORE`); PointCloud2, Image,
CameraInfo and TFMessage are identical in Humble, Jazzy and Kilted (same RIHS01 hashes). Bags are
written as rosbag2 metadata version 8, whose QoS profiles are a YAML string with integer enums:
Humble's `ros2 bag` reads that, and so do Jazzy and later. Version 9 writes QoS as a YAML list that
Humble rejects ("yaml-cpp: bad conversion", ros2/rosbag2#2013).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from xkd_core.data.frame import CameraView
from xkd_ros.image import camera_view_from_msgs
from xkd_ros.pointcloud import cloud_field, cloud_to_xyzi
from xkd_ros.stamp import header_ns
from xkd_ros.transform import transform_msg_to_matrix

#: The message definitions every xkd bag is written with (see the module docstring).
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
BAG_VERSION = 8

SCAN_TOPIC = "/velodyne_points"
GT_TOPIC = "/xkd/ground_truth"
TF_STATIC_TOPIC = "/tf_static"
LIDAR_FRAME = "velodyne"

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


def image_topic(cam: int) -> str:
    """Image topic of KITTI camera `cam`."""
    return f"/camera/image_{int(cam)}/image_raw"


def info_topic(cam: int) -> str:
    """CameraInfo topic of KITTI camera `cam`."""
    return f"/camera/image_{int(cam)}/camera_info"


def camera_frame(cam: int) -> str:
    """TF frame of KITTI camera `cam`."""
    return f"camera_{int(cam)}"


def extrinsics_key(cam: int) -> str:
    """`custom_data` key of the exact LiDAR -> camera `cam` matrix."""
    return f"xkd.lidar_to_camera.{camera_frame(cam)}"


def format_matrix(T: np.ndarray) -> str:
    """16 row-major floats, each `repr` (shortest text that parses back to the same float64)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got {T.shape}")
    return " ".join(repr(float(v)) for v in T.reshape(-1))


def parse_matrix(text: str) -> np.ndarray:
    """Inverse of `format_matrix`; ValueError when it is not 16 floats."""
    values = [float(v) for v in text.split()]
    if len(values) != 16:
        raise ValueError(f"expected 16 floats, got {len(values)}")
    return np.array(values, dtype=np.float64).reshape(4, 4)


def view_name(cam: int) -> str:
    """`CameraView.name` of camera `cam`: its SemanticKITTI image folder, as the dataset names it."""
    return f"image_{int(cam)}"


def _qos(durability: QosDurability, depth: int) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, durability, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


#: Sensor topics: reliable (matches both reliable and best-effort subscribers on replay), volatile.
SENSOR_QOS = _qos(QosDurability.VOLATILE, 10)
#: `/tf_static`: latched (transient local, depth 1), like tf2's static broadcaster.
LATCHED_QOS = _qos(QosDurability.TRANSIENT_LOCAL, 1)


class BagFormatError(ValueError):
    """A bag that cannot be read as an xkd bag; the message names the bag and what is wrong."""


@dataclass
class BagFrame:
    """One scan of a bag with what was stamped with it."""

    stamp_ns: int
    points: np.ndarray  # (N, 4) float32
    labels: np.ndarray | None  # (N,) uint16 learning ids, None when the bag has no ground truth
    views: list[CameraView] = field(default_factory=list)


def _camera_of(topic: str, suffix: str) -> int | None:
    prefix = "/camera/image_"
    if topic.startswith(prefix) and topic.endswith(suffix):
        middle = topic[len(prefix):-len(suffix)]
        if middle.isdigit():
            return int(middle)
    return None


def _static_transforms(reader: Reader, path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(parent, child) -> parent_from_child 4x4 for every transform in `/tf_static`."""
    out: dict[tuple[str, str], np.ndarray] = {}
    conns = [c for c in reader.connections if c.topic == TF_STATIC_TOPIC]
    if not conns:  # rosbags reads every topic when given no connections
        return out
    for conn, _, raw in reader.messages(connections=conns):
        msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
        for tf in msg.transforms:
            out[(str(tf.header.frame_id), str(tf.child_frame_id))] = transform_msg_to_matrix(tf.transform)
    return out


def _custom_data(path: Path) -> dict[str, str]:
    """`custom_data` of the bag's metadata.yaml (empty for a bare storage file or none written)."""
    meta = path / "metadata.yaml"
    if not meta.is_file():
        return {}
    try:
        info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
    except (yaml.YAMLError, AttributeError) as exc:
        raise BagFormatError(f"corrupt bag metadata {meta}: {exc}") from exc
    custom = info.get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()}


def open_bag(path: Path) -> Reader:
    """An opened rosbags Reader, or a BagFormatError naming the bag (missing or unreadable)."""
    if not path.exists():
        raise BagFormatError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises several types for unreadable bags
        raise BagFormatError(f"cannot open bag {path}: {exc}") from exc
    return reader


def read_bag_frames(
    path: str | Path,
    cameras: Sequence[int] | None = None,
    cloud_topic: str = SCAN_TOPIC,
    gt_topic: str = GT_TOPIC,
) -> Iterator[BagFrame]:
    """Yield the frames of an xkd bag (mcap or sqlite3) in stamp order.

    Messages are grouped by their header stamp: the converter stamps a scan, its ground truth and
    its images identically. `cameras=None` takes every camera that has image and info topics.
    A frame whose images or ground truth are missing from the bag is still yielded, with what it has.
    Decoding reuses `cloud_to_xyzi`, `cloud_field` and `camera_view_from_msgs`, the node's own glue.
    """
    path = Path(path)
    reader = open_bag(path)
    try:
        yield from _frames(reader, path, cameras, cloud_topic, gt_topic)
    finally:
        reader.close()


def _frames(reader: Reader, path: Path, cameras: Sequence[int] | None, cloud_topic: str,
            gt_topic: str) -> Iterator[BagFrame]:
    topics = {c.topic for c in reader.connections}
    if cloud_topic not in topics:
        raise BagFormatError(f"bag {path} has no {cloud_topic} topic (topics: {sorted(topics)})")
    image_cams = {_camera_of(t, "/image_raw") for t in topics} - {None}
    found = {cam for cam in image_cams if info_topic(cam) in topics}
    if cameras is None:
        cams = sorted(found)
    else:
        cams = [int(c) for c in cameras]
        missing = [c for c in cams if c not in found]
        if missing:
            raise BagFormatError(f"bag {path} has no image + camera_info topics for camera(s) {missing}")
    extrinsics: dict[int, np.ndarray] = {}
    if cams:
        static = _static_transforms(reader, path)
        custom = _custom_data(path)
        for cam in cams:
            key = (LIDAR_FRAME, camera_frame(cam))
            if key not in static:
                raise BagFormatError(f"bag {path}: {TF_STATIC_TOPIC} has no transform {key[0]} -> {key[1]}")
            T = np.linalg.inv(static[key])  # LiDAR -> camera
            exact = custom.get(extrinsics_key(cam))
            if exact is not None:
                try:
                    T_exact = parse_matrix(exact)
                except ValueError as exc:
                    raise BagFormatError(f"bag {path}: custom_data {extrinsics_key(cam)}: {exc}") from exc
                if not np.allclose(T_exact, T, rtol=0.0, atol=1e-9):
                    raise BagFormatError(
                        f"bag {path}: custom_data {extrinsics_key(cam)} disagrees with {TF_STATIC_TOPIC}"
                    )
                T = T_exact
            extrinsics[cam] = T
    has_gt = gt_topic in topics
    role: dict[str, tuple[str, int]] = {cloud_topic: ("cloud", -1)}
    if has_gt:
        role[gt_topic] = ("gt", -1)
    for cam in cams:
        role[image_topic(cam)] = ("image", cam)
        role[info_topic(cam)] = ("info", cam)
    need = 1 + int(has_gt) + 2 * len(cams)

    pending: dict[int, dict[tuple[str, int], Any]] = {}
    conns = [c for c in reader.connections if c.topic in role]
    for conn, _, raw in reader.messages(connections=conns):
        msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
        stamp = header_ns(msg.header)
        parts = pending.setdefault(stamp, {})
        parts[role[conn.topic]] = msg
        if len(parts) == need:
            for older in sorted(s for s in pending if s < stamp):
                if ("cloud", -1) in pending[older]:
                    yield _build(older, pending.pop(older), cams, extrinsics, path)
            yield _build(stamp, pending.pop(stamp), cams, extrinsics, path)
    for stamp in sorted(pending):
        if ("cloud", -1) in pending[stamp]:
            yield _build(stamp, pending[stamp], cams, extrinsics, path)


def _build(stamp: int, parts: dict[tuple[str, int], Any], cams: Sequence[int],
           extrinsics: dict[int, np.ndarray], path: Path) -> BagFrame:
    points = cloud_to_xyzi(parts[("cloud", -1)])
    labels = None
    gt = parts.get(("gt", -1))
    if gt is not None:
        labels = cloud_field(gt, "label", np.uint16)
        if labels.shape[0] != points.shape[0]:
            raise BagFormatError(
                f"bag {path}: ground truth at stamp {stamp} has {labels.shape[0]} labels"
                f" for {points.shape[0]} points"
            )
    views = []
    for cam in cams:
        image, info = parts.get(("image", cam)), parts.get(("info", cam))
        if image is not None and info is not None:
            views.append(camera_view_from_msgs(image, info, extrinsics[cam], view_name(cam)))
    return BagFrame(stamp_ns=stamp, points=points, labels=labels, views=views)
