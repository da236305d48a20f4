"""Helpers for the segment_node tests: a tiny checkpoint, a synthetic scan + camera, the node as a child
process, and an rclpy harness that publishes inputs and collects outputs over real Fast DDS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The console script installed next to the interpreter running the tests.
SEGMENT_NODE = str(Path(sys.executable).parent / "segment_node")

IMAGE_HW = (64, 192)
K = np.array([[90.0, 0.0, 95.5], [0.0, 90.0, 31.5], [0.0, 0.0, 1.0]])
#: LiDAR (x forward, y left, z up) -> camera (z forward, x right, y down): the node's default extrinsics.
T = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def tiny_checkpoint(path: Path) -> Path:
    """A random-init camera-capable XModelKD (model_fixtures.tiny_config) saved as a real checkpoint."""
    import torch
    from model_fixtures import tiny_config

    from xkd_core.models.checkpoint import save_checkpoint
    from xkd_core.models.xmodel_kd import XModelKD

    torch.manual_seed(0)
    cfg = tiny_config()
    return save_checkpoint(path, XModelKD.from_config(cfg), cfg, image_hw=IMAGE_HW)


def synthetic_scan(seed: int, n_ground: int = 3000, n_nan: int = 7) -> np.ndarray:
    """(N, 4) float32: a ground plane, a few boxes (cars / walls) and some NaN points, shuffled.

    NaN rows are what real drivers emit for missed returns; the node must keep them in place.
    """
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-40, 40, (n_ground, 2)), rng.normal(-1.7, 0.02, n_ground)]
    parts = [ground]
    for _ in range(6):
        centre = np.r_[rng.uniform(-30, 30, 2), -0.9]
        size = rng.uniform([1.5, 1.5, 1.2], [5.0, 3.0, 2.5])
        parts.append(centre + rng.uniform(-0.5, 0.5, (400, 3)) * size)
    xyz = np.concatenate(parts)
    pts = np.c_[xyz, rng.uniform(0, 1, len(xyz))].astype(np.float32)
    pts[rng.choice(len(pts), n_nan, replace=False), :3] = np.nan
    return pts


def synthetic_image(seed: int) -> np.ndarray:
    """An RGB uint8 image of IMAGE_HW with structure (gradients + blocks), so the 2D branch sees something."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    for _ in range(5):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 20)
        img[y:y + 10, x:x + 20] = rng.integers(0, 256, 3)
    return img


#: The camera name the single-camera tests give the node.
CAMERA = "cam"


def topics(prefix: str, camera: str = CAMERA) -> dict[str, str]:
    """Per-node topic names, so several node processes in one test session never cross-talk.

    `image_in`, `camera_info_in` and `overlay_out` are camera `camera`'s (the overlay is published on
    `<topics.overlay_out>/<camera>`).
    """
    return {"cloud_in": f"/{prefix}/cloud_in", "cloud_out": f"/{prefix}/cloud_out",
            "filtered_out": f"/{prefix}/filtered_out", "class_map_out": f"/{prefix}/class_map",
            "image_in": f"/{prefix}/{camera}/image_raw", "camera_info_in": f"/{prefix}/{camera}/camera_info",
            "overlay_out": f"/{prefix}/overlay/{camera}"}


def node_params(prefix: str, camera: str = CAMERA) -> dict[str, Any]:
    """The node parameters that make it use `topics(prefix, camera)` and the fixture's extrinsics T."""
    tp = topics(prefix, camera)
    return {"topics.cloud_in": tp["cloud_in"], "topics.cloud_out": tp["cloud_out"],
            "topics.filtered_out": tp["filtered_out"], "topics.class_map_out": tp["class_map_out"],
            "topics.overlay_out": f"/{prefix}/overlay", "cameras.names": [camera],
            f"cameras.{camera}.image_topic": tp["image_in"], f"cameras.{camera}.camera_info_topic":
            tp["camera_info_in"], f"cameras.{camera}.lidar_to_camera": [float(v) for v in T.reshape(-1)]}


class NodeProcess:
    """`segment_node --ros-args --params-file ...` as a child process, output captured to a file.

    Unlike `xkd_ros.node_process.NodeProcess` (which runs `python -m xkd_ros.node_process`), this
    starts the installed console script itself, so the tests cover the entry point users run.
    """

    def __init__(self, params_file: Path, log_path: Path, node_name: str = "segment_node",
                 remaps: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.name = node_name
        self._log = open(log_path, "wb")  # closed in stop()
        args = [SEGMENT_NODE, "--ros-args", "--params-file", str(params_file)]
        if node_name != "segment_node":
            args += ["-r", f"__node:={node_name}"]
        for src, dst in (remaps or {}).items():
            args += ["-r", f"{src}:={dst}"]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT, then SIGKILL if it does not exit; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@dataclass
class Received:
    """A message with the monotonic time it was taken from the middleware."""

    msg: Any
    t: float


class Harness:
    """The test's own rclpy node: publishers for the node's inputs, subscribers for its outputs."""

    def __init__(self, name: str, topics: dict[str, str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import String

        self.topics = topics
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.cloud_pub = self.node.create_publisher(PointCloud2, topics["cloud_in"], reliable)
        self.image_pub = self.node.create_publisher(Image, topics["image_in"], reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, topics["camera_info_in"], reliable)
        self.clouds: list[Received] = []
        self.filtered: list[Received] = []
        self.overlays: list[Received] = []
        self.diagnostics: list[Received] = []
        self.class_maps: list[Received] = []
        self.node.create_subscription(PointCloud2, topics["cloud_out"],
                                      lambda m: self.clouds.append(Received(m, time.monotonic())), reliable)
        self.node.create_subscription(PointCloud2, topics["filtered_out"],
                                      lambda m: self.filtered.append(Received(m, time.monotonic())), reliable)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, topics["class_map_out"],
                                      lambda m: self.class_maps.append(Received(m, time.monotonic())),
                                      latched)
        self.node.create_subscription(Image, topics["overlay_out"],
                                      lambda m: self.overlays.append(Received(m, time.monotonic())), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda m: self.diagnostics.append(Received(m, time.monotonic())), 10)

    def spin_until(self, done: Callable[[], bool], timeout: float, node: NodeProcess | None = None) -> bool:
        """Spin until `done()` or the timeout; stops early (False) if the node process died."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            if node is not None and not node.alive():
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def spin_for(self, seconds: float) -> None:
        """Keep the middleware moving for a while (used to let one input arrive before another)."""
        self.spin_until(lambda: False, seconds)

    def wait_connected(self, node: NodeProcess, with_camera: bool, timeout: float = 90.0) -> None:
        """Until the node (model loaded: it subscribes only then) matches our publishers and subscriber."""
        def ready() -> bool:
            ok = self.cloud_pub.get_subscription_count() >= 1
            ok = ok and self.node.count_publishers(self.topics["cloud_out"]) >= 1
            if with_camera:
                ok = ok and self.image_pub.get_subscription_count() >= 1
                ok = ok and self.info_pub.get_subscription_count() >= 1
            return ok

        if not self.spin_until(ready, timeout, node):
            raise AssertionError(f"segment_node did not come up; its log:\n{node.log()}")

    def publish_camera(self, stamp_ns: int, image: np.ndarray, frame_id: str = "camera") -> None:
        """An Image and its CameraInfo (K, IMAGE_HW, no distortion) with one stamp."""
        from xkd_ros.image import to_rclpy_camera_info, to_rclpy_image
        from xkd_ros.stamp import rclpy_header

        header = rclpy_header(stamp_ns, frame_id)
        self.info_pub.publish(to_rclpy_camera_info(header, K, IMAGE_HW))
        self.image_pub.publish(to_rclpy_image(header, image))

    def publish_cloud(self, stamp_ns: int, points: np.ndarray, frame_id: str = "velodyne") -> None:
        from xkd_ros.pointcloud import to_rclpy_cloud, xyzi_array
        from xkd_ros.stamp import rclpy_header

        self.cloud_pub.publish(to_rclpy_cloud(rclpy_header(stamp_ns, frame_id), xyzi_array(points)))

    def output_for(self, stamp_ns: int, received: list[Received] | None = None) -> Any | None:
        """The labeled cloud (or, with `received=self.filtered`, the filtered one) stamped `stamp_ns`."""
        from xkd_ros.stamp import header_ns

        for r in self.clouds if received is None else received:
            if header_ns(r.msg.header) == stamp_ns:
                return r.msg
        return None

    def overlay_for(self, stamp_ns: int) -> Any | None:
        from xkd_ros.stamp import header_ns

        for r in self.overlays:
            if header_ns(r.msg.header) == stamp_ns:
                return r.msg
        return None

    def latest_diagnostics(self, node_name: str, newer_than: float = 0.0,
                           status: str = "segmentation") -> dict[str, str] | None:
        """Key/values of node `node_name`'s newest status `status` ("segmentation", or "camera <name>")
        received after `newer_than` (monotonic), with `_level` and `_message`."""
        for r in reversed(self.diagnostics):
            if r.t <= newer_than:
                break
            for st in r.msg.status:
                if st.name == f"/{node_name}: {status}":
                    values = {kv.key: kv.value for kv in st.values}
                    values["_level"] = str(int.from_bytes(st.level, "little")
                                           if isinstance(st.level, bytes) else st.level)
                    values["_message"] = st.message
                    return values
        return None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
