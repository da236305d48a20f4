"""Playing a rosbag2 into ROS 2 with rclpy, and collecting what the node publishes back.

`bag_messages` reads the serialized messages of a bag in log-time order. Messages with equal log
times (a converted bag stamps a scan, its images and its camera infos identically) are played camera
infos first, then images (Image or CompressedImage), then everything else: the node matches each
cloud with images already received and never waits for a camera, so a cloud played before its own
images would always be segmented without them.

`BagPlayer` publishes those bytes unchanged (`Publisher.publish(bytes)`, no deserialization) on
publishers created up front, from a thread, at the recorded rate times `rate_scale`, and remembers
when each scan went out. Camera messages go out `camera_lead_s` ahead of everything else (the whole
non-camera stream is shifted, so scan-to-scan timing is untouched): a large image and a large cloud
sent back to back over DDS may otherwise complete in either order, and a camera usually delivers
its frame before the LiDAR finishes the sweep it belongs to.

`OutputCollector` subscribes raw to the labeled cloud (and to `/diagnostics`) and queues every
message with the time it arrived, so the scoring thread can pair it with its scan and measure
receive minus publish time on one monotonic clock.
"""

from __future__ import annotations

import importlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_ros.bag_io import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    POINTCLOUD2,
    TYPESTORE,
    BagFormatError,
    BagTopics,
    open_bag,
)
from xkd_ros.stamp import header_ns

#: The name of the node's own diagnostic status after `<node>: ` (the cameras' are `camera <name>`).
NODE_STATUS = "segmentation"
CAMERA_STATUS = "camera "

#: Play order of messages with equal log times (lower first; unlisted types last).
_TIE_ORDER = {CAMERA_INFO: 0, IMAGE: 1, COMPRESSED_IMAGE: 1}


@dataclass
class BagMessage:
    """One serialized message of a bag."""

    topic: str
    msgtype: str
    log_ns: int
    data: bytes


def bag_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """The bag's messages (of `topics`, default all) in log-time order, ties in play order (see above)."""
    path = Path(path)
    reader = open_bag(path)
    try:
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        group: list[BagMessage] = []
        for conn, log_ns, raw in reader.messages(connections=conns):
            if group and log_ns != group[0].log_ns:
                yield from sorted(group, key=lambda m: _TIE_ORDER.get(m.msgtype, len(_TIE_ORDER)))
                group = []
            group.append(BagMessage(conn.topic, conn.msgtype, int(log_ns), bytes(raw)))
        yield from sorted(group, key=lambda m: _TIE_ORDER.get(m.msgtype, len(_TIE_ORDER)))
    finally:
        reader.close()


def rclpy_message_class(msgtype: str) -> Any | None:
    """The rclpy class of `pkg/msg/Type`, or None when that package is not installed."""
    try:
        pkg, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None


def cloud_stamp_ns(data: bytes) -> int:
    """Header stamp of a serialized PointCloud2 (the pairing key between a scan and the node's output)."""
    return header_ns(TYPESTORE.deserialize_cdr(data, POINTCLOUD2).header)


class BagPlayer:
    """Publishes a bag's messages with rclpy at the recorded rate (see the module docstring).

    Publishers for every playable topic are created at construction, so a subscriber (the node) can
    be seen matching them before `start()`. Topics whose rclpy message package is missing or that are
    listed in `skip` are not played (`not_played` says why); `rename` plays a bag topic under
    another name (e.g. a CompressedImage topic without image_transport's `/compressed` suffix).
    `on_cloud(stamp_ns, t_publish)` is called for every message of `cloud_topic`, just before it is
    published.
    """

    def __init__(self, node: Any, bag: str | Path, topics: BagTopics, cloud_topic: str,
                 rate_scale: float = 1.0, skip: Iterable[str] = (),
                 on_cloud: Callable[[int, float], None] | None = None, camera_lead_s: float = 0.02,
                 rename: dict[str, str] | None = None) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        if not rate_scale > 0:
            raise ValueError(f"--rate-scale must be > 0, got {rate_scale}")
        if not camera_lead_s >= 0:
            raise ValueError(f"camera lead must be >= 0 s, got {camera_lead_s}")
        self.camera_lead_s = float(camera_lead_s)
        self.bag = Path(bag)
        self.rate_scale = float(rate_scale)
        self.cloud_topic = cloud_topic
        self.on_cloud = on_cloud
        self.not_played: dict[str, str] = {}
        self.publishers: dict[str, Any] = {}
        self.rename = dict(rename or {})
        skip = set(skip)
        for topic, msgtype in sorted(topics.types.items()):
            if topic in skip:
                self.not_played[topic] = "skipped"
                continue
            cls = rclpy_message_class(msgtype)
            if cls is None:
                self.not_played[topic] = f"rclpy message package for {msgtype} not installed"
                continue
            latched = topic in topics.latched
            qos = QoSProfile(depth=1 if latched else 10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                             else DurabilityPolicy.VOLATILE)
            self.publishers[topic] = node.create_publisher(cls, self.rename.get(topic, topic), qos)
        if cloud_topic not in self.publishers:
            raise BagFormatError(f"bag {self.bag} has no playable {cloud_topic} topic "
                                 f"({self.not_played.get(cloud_topic, 'absent')})")
        self.published = 0
        self.clouds_published = 0
        self.max_lag_s = 0.0  # worst delay of a publish behind its schedule
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xkd-bag-player", daemon=True)

    def subscriptions(self, topic: str) -> int:
        """How many subscribers match the publisher of the bag topic `topic` (0 when not played)."""
        pub = self.publishers.get(topic)
        return 0 if pub is None else pub.get_subscription_count()

    def start(self) -> None:
        """Start playing in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop playing (at the next message) and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        try:
            t_start = None
            log0 = None
            for msg in bag_messages(self.bag, self.publishers):
                if self._stop.is_set():
                    break
                if t_start is None:
                    t_start, log0 = time.monotonic(), msg.log_ns
                target = t_start + (msg.log_ns - log0) * 1e-9 / self.rate_scale
                if msg.msgtype not in _TIE_ORDER:  # not a camera message
                    target += self.camera_lead_s
                delay = target - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self.max_lag_s = max(self.max_lag_s, -delay)
                if msg.topic == self.cloud_topic:
                    if self.on_cloud is not None:
                        self.on_cloud(cloud_stamp_ns(msg.data), time.monotonic())
                    self.clouds_published += 1
                self.publishers[msg.topic].publish(msg.data)
                self.published += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.done.set()


@dataclass
class Received:
    """A serialized message with the monotonic time it arrived."""

    data: bytes
    t: float


class OutputCollector:
    """Raw subscriber to the node's labeled cloud, and to `/diagnostics` (see the module docstring).

    `statuses` keeps the latest of each of the node's diagnostic statuses (`segmentation`, and one
    per camera `camera <name>`) by the name after the node's prefix, with `level` and `message`
    among the values; `diagnostics` is the node's own (`segmentation`) one.
    """

    def __init__(self, node: Any, cloud_topic: str, node_name: str = "segment_node") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        self.clouds: queue.Queue[Received] = queue.Queue()
        self.received = 0
        self.last_t: float | None = None
        self.statuses: dict[str, dict[str, str]] = {}
        self.diagnostics_t: float | None = None
        self._prefix = f"/{node_name}: "
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.cloud_sub = node.create_subscription(PointCloud2, cloud_topic, self._on_cloud, qos, raw=True)
        self.diag_sub = node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    @property
    def diagnostics(self) -> dict[str, str] | None:
        """The node's own status values (None before the first report)."""
        return self.statuses.get(NODE_STATUS)

    def _on_cloud(self, data: bytes) -> None:
        t = time.monotonic()
        self.clouds.put(Received(bytes(data), t))
        self.received += 1
        self.last_t = t

    def _on_diagnostics(self, msg: Any) -> None:
        mine = False
        for status in msg.status:
            if status.name.startswith(self._prefix):
                values = {kv.key: kv.value for kv in status.values}
                level = status.level
                values["level"] = str(level[0] if isinstance(level, (bytes, bytearray)) else int(level))
                values["message"] = status.message
                self.statuses[status.name[len(self._prefix):]] = values
                mine = True
        if mine:
            self.diagnostics_t = time.monotonic()
