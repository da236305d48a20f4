"""rosbag2 without ROS: the layout xkd writes, what any recorded bag holds, and its frames.

Written by `xkd-kitti2bag` (every camera view of a sequence, by name: KITTI's `image_2` /
`image_3`, a surround rig's `CAM_FRONT`, ...):

- `/velodyne_points`: PointCloud2 x, y, z, intensity float32, frame `velodyne`
- `/camera/<name>/image_raw`: Image rgb8, or `/camera/<name>/image_raw/compressed`: CompressedImage
  (JPEG / PNG, image_transport's format string), frame id `<name>` (one rule for every view)
- `/camera/<name>/camera_info`: CameraInfo, K of the view, P = [K | 0], D = 0, R = I
- `/tf_static`: one TFMessage, `velodyne -> <name>` = inv(T) per camera (tf2's parent -> child
  pose), offered with transient-local durability so late subscribers of a replay still get it
- `/xkd/ground_truth`: PointCloud2 x, y, z float32 + `label` uint16 (learning ids), stamped like the scan

A quaternion cannot carry a float64 rotation matrix bit for bit, so the converter also stores each
`T` exactly (16 `repr` floats) in the bag's `custom_data` under `xkd.lidar_to_camera.<camera frame>`;
the reader uses that copy when it agrees with `/tf_static` (to 1e-6) and the transform otherwise
(saying so in `BagLayout.notes`). Frames read from a converted bag are then bit-identical to the
files (and so are predictions made on them).

Reading a bag recorded by anyone (`inspect_bag`):

- cameras are found by topic type: an Image or CompressedImage topic whose namespace also holds a
  CameraInfo topic `camera_info` (image_transport's layout: `<ns>/image_raw`,
  `<ns>/image_raw/compressed`, `<ns>/camera_info`). One topic per camera: raw (Image) before
  compressed, then `image_raw`, `image_color`, `image_rect_color`, `image_rect`, others by name; an
  `image_rect*` topic is taken as rectified (projected with P and R). A camera is named after the
  shortest unique tail of its namespace (`/sensors/front_cam/...` -> `front_cam`), made a valid ROS
  name (`[A-Za-z][A-Za-z0-9_]*`);
- the cloud topic: `/velodyne_points` unless told, or the bag's only other PointCloud2 topic;
- the LiDAR frame and each camera frame: the header `frame_id` of their first message;
- LiDAR -> camera extrinsics: composed through `/tf_static` (`xkd_ros.tf_tree`, any number of
  hops, e.g. `base_link -> lidar` and `base_link -> camera_link -> camera_optical`); a camera
  the tree does not connect to the LiDAR has none (`extrinsics == "none"`).

Messages use the `rosbags` typestore pinned to ROS 2 Humble (`TYPESTORE`); PointCloud2, Image,
CompressedImage, CameraInfo and TFMessage are identical in Humble, Jazzy and Kilted (same RIHS01
hashes). Bags are written as rosbag2 metadata version 8, whose QoS profiles are a YAML string with
integer enums: Humble's `ros2 bag` reads that, and so do Jazzy and later. Version 9 writes QoS as a
YAML list that Humble rejects ("yaml-cpp: bad conversion", ros2/rosbag2#2013).
"""

from __future__ import annotations

import posixpath
import re
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
from xkd_core.geometry.projection import ViewGeometry
from xkd_ros.image import (
    CameraInfoError,
    ImageFormatError,
    camera_info_to_model,
    camera_view_from_msgs,
    projection_of,
)
from xkd_ros.pointcloud import CloudFormatError, cloud_field, cloud_to_xyzi
from xkd_ros.stamp import header_ns
from xkd_ros.tf_tree import TransformTree, frame_key

#: The message definitions every xkd bag is written with (see the module docstring).
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
BAG_VERSION = 8

SCAN_TOPIC = "/velodyne_points"
GT_TOPIC = "/xkd/ground_truth"
TF_STATIC_TOPIC = "/tf_static"
LIDAR_FRAME = "velodyne"

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

#: `CompressedImage` sub-topic suffix of image_transport's compressed transport.
COMPRESSED_SUFFIX = "/compressed"
#: Agreement needed between the exact `custom_data` copy of an extrinsic and `/tf_static` (1 um, 1 urad:
#: a quaternion rounds a printed calibration such as KITTI's, which is orthonormal only to ~1e-7).
EXACT_COPY_ATOL = 1e-6
#: A camera name: a node parameter namespace and part of topic and frame names.
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Preferred image topics of one camera namespace, best first (others follow by name).
_IMAGE_PREFERENCE = ("image_raw", "image_color", "image_rect_color", "image_rect")
#: Scans whose stamp is this much older than the newest message read are complete (see `_frames`).
_FLUSH_NS = 2_000_000_000


def camera_topics(name: str, compressed: bool = False) -> tuple[str, str]:
    """(image topic, camera_info topic) of camera `name` in an xkd bag."""
    image = f"/camera/{name}/image_raw"
    return (image + COMPRESSED_SUFFIX if compressed else image), f"/camera/{name}/camera_info"


def extrinsics_key(camera_frame: str) -> str:
    """`custom_data` key of the exact LiDAR -> camera matrix of the camera frame `camera_frame`."""
    return f"xkd.lidar_to_camera.{frame_key(camera_frame)}"


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


def kitti_camera_name(selector: str | int) -> str:
    """A camera selector as a name: a KITTI index 2 / 3 (or "2") is the view `image_2` / `image_3`."""
    text = str(selector).strip()
    return f"image_{text}" if text.isdigit() else text


def _qos(durability: QosDurability, depth: int) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, durability, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


#: Sensor topics: reliable (matches both reliable and best-effort subscribers on replay), volatile.
SENSOR_QOS = _qos(QosDurability.VOLATILE, 10)
#: `/tf_static`: latched (transient local, depth 1), like tf2's static broadcaster.
LATCHED_QOS = _qos(QosDurability.TRANSIENT_LOCAL, 1)


class BagFormatError(ValueError):
    """A bag that cannot be read as asked; the message names the bag and what is wrong."""


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


@dataclass
class BagTopics:
    """Topic -> message type of a bag, with the number of messages per topic."""

    types: dict[str, str]
    counts: dict[str, int]
    latched: set[str] = field(default_factory=set)  # offered with transient-local durability


def _topics_of(reader: Reader) -> BagTopics:
    types: dict[str, str] = {}
    counts: dict[str, int] = {}
    latched: set[str] = set()
    for c in reader.connections:
        types[c.topic] = c.msgtype
        counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
        qos = getattr(c.ext, "offered_qos_profiles", None) or []
        if any(getattr(q, "durability", None) == QosDurability.TRANSIENT_LOCAL for q in qos):
            latched.add(c.topic)
    return BagTopics(types, counts, latched)


def bag_topics(path: str | Path) -> BagTopics:
    """The topics of a bag (mcap or sqlite3), their types, counts and which are latched."""
    reader = open_bag(Path(path))
    try:
        return _topics_of(reader)
    finally:
        reader.close()


# ------------------------------------------------------------------------------------------ cameras
@dataclass
class BagCamera:
    """One camera found in a bag (see the module docstring)."""

    name: str  # the node's camera name and the `CameraView.name`
    image_topic: str  # as recorded: Image, or CompressedImage
    msgtype: str  # IMAGE or COMPRESSED_IMAGE
    info_topic: str
    rectified: bool  # an image_rect* topic: projected with CameraInfo P and R
    frame_id: str = ""  # of its first image ("" when the bag holds none)
    T: np.ndarray | None = None  # LiDAR -> camera 4x4, None when /tf_static does not give it
    extrinsics: str = "none"  # "custom_data" (exact copy agreeing with /tf_static) | "tf_static" | "none"
    extrinsics_note: str = ""  # why there is none
    geometry: ViewGeometry | None = None  # (K, T, (H, W)) of its first CameraInfo: the frustum

    @property
    def compressed(self) -> bool:
        return self.msgtype == COMPRESSED_IMAGE

    @property
    def transport(self) -> str:
        """The node's `cameras.<name>.transport`."""
        return "compressed" if self.compressed else "raw"

    @property
    def base_topic(self) -> str:
        """The node's `cameras.<name>.image_topic`: image_transport's base topic of `image_topic`."""
        if self.compressed and self.image_topic.endswith(COMPRESSED_SUFFIX):
            return self.image_topic[: -len(COMPRESSED_SUFFIX)]
        return self.image_topic

    @property
    def subscribed_topic(self) -> str:
        """What the node subscribes for this camera (`<base>/compressed` when compressed)."""
        return self.base_topic + COMPRESSED_SUFFIX if self.compressed else self.base_topic


def _image_rank(topic: str, msgtype: str) -> tuple[int, int, str]:
    leaf = posixpath.basename(topic[: -len(COMPRESSED_SUFFIX)] if msgtype == COMPRESSED_IMAGE
                              and topic.endswith(COMPRESSED_SUFFIX) else topic)
    pref = _IMAGE_PREFERENCE.index(leaf) if leaf in _IMAGE_PREFERENCE else len(_IMAGE_PREFERENCE)
    return int(msgtype == COMPRESSED_IMAGE), pref, topic


def _ros_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "camera"
    return name if name[0].isalpha() else f"cam_{name}"


def discover_cameras(types: dict[str, str]) -> list[BagCamera]:
    """Every camera of a bag's topic -> type map, sorted by name (see the module docstring)."""
    by_ns: dict[str, list[tuple[str, str]]] = {}
    for topic, msgtype in types.items():
        if msgtype not in (IMAGE, COMPRESSED_IMAGE):
            continue
        base = topic
        if msgtype == COMPRESSED_IMAGE and topic.endswith(COMPRESSED_SUFFIX):
            base = topic[: -len(COMPRESSED_SUFFIX)]
        ns = posixpath.dirname(base).rstrip("/")
        if types.get(f"{ns}/camera_info") == CAMERA_INFO:
            by_ns.setdefault(ns, []).append((topic, msgtype))
    parts = {ns: [p for p in ns.split("/") if p] or ["camera"] for ns in by_ns}
    names: dict[str, str] = {}
    for ns in by_ns:
        depth = 1
        while True:  # the shortest tail of the namespace no other camera shares
            tail = "_".join(parts[ns][-depth:])
            clash = [o for o in by_ns if o != ns and "_".join(parts[o][-depth:]) == tail]
            if not clash or depth >= len(parts[ns]):
                break
            depth += 1
        names[ns] = _ros_name(tail)
    taken: dict[str, int] = {}
    cameras = []
    for ns in sorted(by_ns, key=lambda n: (names[n], n)):
        name = names[ns]
        taken[name] = taken.get(name, 0) + 1
        if taken[name] > 1:  # namespaces equal up to their characters (a/b vs a_b): number them
            name = f"{name}_{taken[name]}"
        topic, msgtype = min(by_ns[ns], key=lambda tm: _image_rank(*tm))
        leaf = posixpath.basename(topic[: -len(COMPRESSED_SUFFIX)] if topic.endswith(COMPRESSED_SUFFIX)
                                  else topic)
        cameras.append(BagCamera(name, topic, msgtype, f"{ns}/camera_info", rectified="rect" in leaf))
    return sorted(cameras, key=lambda c: c.name)


# ------------------------------------------------------------------------------------------ layout
@dataclass
class BagLayout:
    """What a bag holds and how to read it (`inspect_bag`)."""

    path: Path
    topics: BagTopics
    cloud_topic: str
    lidar_frame: str  # header frame of the first cloud
    gt_topic: str | None  # None: the bag has no ground truth
    cameras: list[BagCamera]  # the selected ones
    found: list[str]  # names of every camera found
    tf: TransformTree
    notes: list[str] = field(default_factory=list)  # what a user should know (printed, reported)

    @property
    def scans(self) -> int:
        return self.topics.counts.get(self.cloud_topic, 0)

    def camera(self, name: str) -> BagCamera:
        return next(c for c in self.cameras if c.name == name)


def _choose_cloud(path: Path, types: dict[str, str], cloud_topic: str | None, gt_topic: str | None) -> str:
    clouds = sorted(t for t, m in types.items() if m == POINTCLOUD2)
    if cloud_topic is not None:
        if types.get(cloud_topic) != POINTCLOUD2:
            what = f"type {types[cloud_topic]}" if cloud_topic in types else "absent"
            raise BagFormatError(f"bag {path}: cloud topic {cloud_topic} is {what}; PointCloud2 topics: "
                                 f"{clouds or 'none'}")
        return cloud_topic
    if SCAN_TOPIC in clouds:
        return SCAN_TOPIC
    others = [t for t in clouds if t != gt_topic and not t.startswith("/xkd/")]
    if len(others) == 1:
        return others[0]
    raise BagFormatError(f"bag {path} has no {SCAN_TOPIC} topic and {len(others)} other PointCloud2 topics "
                         f"({others or 'none'}): choose the LiDAR with --cloud-topic")


def _static_tree(reader: Reader) -> TransformTree:
    tree = TransformTree()
    conns = [c for c in reader.connections if c.topic == TF_STATIC_TOPIC and c.msgtype == TF_MESSAGE]
    if conns:  # rosbags reads every topic when given no connections
        for conn, _, raw in reader.messages(connections=conns):
            tree.add_messages(TYPESTORE.deserialize_cdr(raw, conn.msgtype).transforms)
    return tree


def _first_messages(reader: Reader, topics: set[str]) -> dict[str, Any]:
    """The first message of each topic (deserialized), reading no further than needed."""
    first: dict[str, Any] = {}
    conns = [c for c in reader.connections if c.topic in topics]
    if not conns:
        return first
    for conn, _, raw in reader.messages(connections=conns):
        if conn.topic not in first:
            first[conn.topic] = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
            if len(first) == len(topics):
                break
    return first


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


def _extrinsics(cam: BagCamera, lidar_frame: str, tree: TransformTree, custom: dict[str, str],
                notes: list[str]) -> None:
    """Fill `cam.T` / `cam.extrinsics` from the tree, preferring the exact copy when it agrees."""
    if not cam.frame_id:
        cam.extrinsics_note = f"no message on {cam.image_topic}: camera frame unknown"
        return
    try:
        T = tree.lookup(cam.frame_id, lidar_frame)
    except LookupError as exc:
        cam.extrinsics_note = f"{TF_STATIC_TOPIC}: no transform {lidar_frame} -> {cam.frame_id} ({exc})"
        notes.append(f"camera {cam.name}: no LiDAR -> camera extrinsics: {cam.extrinsics_note}")
        return
    cam.T, cam.extrinsics = T, "tf_static"
    key = extrinsics_key(cam.frame_id)
    if key not in custom:
        return
    try:
        exact = parse_matrix(custom[key])
    except ValueError as exc:
        notes.append(f"camera {cam.name}: custom_data {key} is unreadable ({exc}); {TF_STATIC_TOPIC} used")
        return
    if np.allclose(exact, T, rtol=0.0, atol=EXACT_COPY_ATOL):
        cam.T, cam.extrinsics = exact, "custom_data"
    else:
        notes.append(f"camera {cam.name}: custom_data {key} disagrees with {TF_STATIC_TOPIC} (max difference "
                     f"{np.abs(exact - T).max():.3g}); {TF_STATIC_TOPIC} used")


def _geometry(cam: BagCamera, info: Any, notes: list[str]) -> None:
    if info is None or cam.T is None:
        return
    try:
        model = camera_info_to_model(info, rectified=cam.rectified)
    except CameraInfoError as exc:
        notes.append(f"camera {cam.name}: first CameraInfo on {cam.info_topic} refused ({exc}): not in the "
                     "frustum")
        return
    K, T_view = projection_of(model, cam.T)
    cam.geometry = (K, T_view, model.hw)


def inspect_bag(path: str | Path, cloud_topic: str | None = None, cameras: Sequence[str | int] | None = None,
                gt_topic: str | None = GT_TOPIC, require_gt: bool = False) -> BagLayout:
    """Read what a bag holds (see the module docstring); BagFormatError names what is missing.

    `cameras`: names to keep (KITTI indices 2 / 3 stand for `image_2` / `image_3`), None for every
    camera found, `[]` for none. `gt_topic` absent from the bag means no ground truth (an error
    only with `require_gt`); None never reads one.
    """
    path = Path(path)
    reader = open_bag(path)
    try:
        topics = _topics_of(reader)
        types = topics.types
        cloud = _choose_cloud(path, types, cloud_topic, gt_topic)
        gt = None
        if gt_topic is not None:
            if types.get(gt_topic) == POINTCLOUD2:
                gt = gt_topic
            elif require_gt or gt_topic in types:
                what = f"of type {types[gt_topic]}" if gt_topic in types else "absent"
                raise BagFormatError(f"bag {path}: ground-truth topic {gt_topic} is {what} (PointCloud2 "
                                     f"topics: {sorted(t for t, m in types.items() if m == POINTCLOUD2)})")
        found = discover_cameras(types)
        if cameras is None:
            chosen = found
        else:
            by_name = {c.name: c for c in found}
            wanted = [kitti_camera_name(c) for c in cameras]
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise BagFormatError(f"bag {path} has no camera {missing} (cameras found: "
                                     f"{sorted(by_name) or 'none'}; a camera is an Image or CompressedImage "
                                     "topic next to a camera_info topic)")
            chosen = [by_name[n] for n in dict.fromkeys(wanted)]
        wanted_first = {cloud} | {c.image_topic for c in chosen} | {c.info_topic for c in chosen}
        first = _first_messages(reader, {t for t in wanted_first if topics.counts.get(t, 0) > 0})
        if cloud not in first:
            raise BagFormatError(f"bag {path}: no message on {cloud}")
        lidar_frame = frame_key(first[cloud].header.frame_id)
        tree = _static_tree(reader) if chosen else TransformTree()
    finally:
        reader.close()
    notes: list[str] = []
    custom = _custom_data(path)
    for cam in chosen:
        msg = first.get(cam.image_topic) or first.get(cam.info_topic)
        cam.frame_id = "" if msg is None else frame_key(msg.header.frame_id)
        _extrinsics(cam, lidar_frame, tree, custom, notes)
        _geometry(cam, first.get(cam.info_topic), notes)
    return BagLayout(path, topics, cloud, lidar_frame, gt, chosen, [c.name for c in found], tree, notes)


# ------------------------------------------------------------------------------------------ frames
@dataclass
class BagFrame:
    """One scan of a bag with what was stamped with it."""

    stamp_ns: int
    points: np.ndarray  # (N, 4) float32 (raw intensity field)
    labels: np.ndarray | None  # (N,) uint16 learning ids, None when the bag has no ground truth
    views: list[CameraView] = field(default_factory=list)
    error: str | None = None  # the cloud could not be decoded (points empty): why


def read_bag_frames(
    path: str | Path,
    cameras: Sequence[str | int] | None = None,
    cloud_topic: str | None = None,
    gt_topic: str | None = GT_TOPIC,
    layout: BagLayout | None = None,
) -> Iterator[BagFrame]:
    """Yield the scans of a bag (mcap or sqlite3) in stamp order, with ground truth and camera views.

    Messages are grouped by their header stamp: xkd-kitti2bag stamps a scan, its ground truth and
    its images identically. `cameras` as in `inspect_bag` (a camera without extrinsics gives no
    view); pass `layout` to reuse one already read. A scan whose images or ground truth are missing
    from the bag is still yielded, with what it has. Decoding reuses `cloud_to_xyzi`, `cloud_field`
    and `camera_view_from_msgs`, the node's own glue.
    """
    path = Path(path)
    if layout is None:
        layout = inspect_bag(path, cloud_topic, cameras, gt_topic)
    reader = open_bag(path)
    try:
        yield from _frames(reader, layout)
    finally:
        reader.close()


def _frames(reader: Reader, layout: BagLayout) -> Iterator[BagFrame]:
    cams = [c for c in layout.cameras if c.T is not None]
    role: dict[str, tuple[str, str]] = {layout.cloud_topic: ("cloud", "")}
    if layout.gt_topic is not None:
        role[layout.gt_topic] = ("gt", "")
    for cam in cams:
        role[cam.image_topic] = ("image", cam.name)
        role[cam.info_topic] = ("info", cam.name)
    need = len(role)

    pending: dict[int, dict[tuple[str, str], Any]] = {}

    def flush(before: int) -> Iterator[BagFrame]:
        for older in sorted(s for s in pending if s < before):
            parts = pending.pop(older)
            if ("cloud", "") in parts:
                yield _build(older, parts, cams, layout.path)

    conns = [c for c in reader.connections if c.topic in role]
    for conn, _, raw in reader.messages(connections=conns):
        msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
        stamp = header_ns(msg.header)
        parts = pending.setdefault(stamp, {})
        parts[role[conn.topic]] = msg
        if len(parts) == need:
            yield from flush(stamp)
            yield _build(stamp, pending.pop(stamp), cams, layout.path)
        else:  # a scan that never completes (a camera missed it) must not hold every later one back
            yield from flush(stamp - _FLUSH_NS)
    yield from flush(max(pending, default=0) + 1)


def _build(stamp: int, parts: dict[tuple[str, str], Any], cams: list[BagCamera], path: Path) -> BagFrame:
    try:
        points = cloud_to_xyzi(parts[("cloud", "")])
    except CloudFormatError as exc:
        return BagFrame(stamp_ns=stamp, points=np.zeros((0, 4), np.float32), labels=None,
                        error=f"{exc.reason}: {exc}")
    labels = None
    gt = parts.get(("gt", ""))
    if gt is not None:
        labels = cloud_field(gt, "label", np.uint16)
        if labels.shape[0] != points.shape[0]:
            raise BagFormatError(
                f"bag {path}: ground truth at stamp {stamp} has {labels.shape[0]} labels"
                f" for {points.shape[0]} points"
            )
    views = []
    for cam in cams:
        image, info = parts.get(("image", cam.name)), parts.get(("info", cam.name))
        if image is not None and info is not None:
            try:
                views.append(camera_view_from_msgs(image, info, cam.T, cam.name, rectified=cam.rectified))
            except (ImageFormatError, CameraInfoError):
                continue  # a frame without this view; the node counts the same failure its own way
    return BagFrame(stamp_ns=stamp, points=points, labels=labels, views=views)
