"""Clouds laid out the way real LiDAR drivers publish them, all built from one reference scan.

The reference scan is real synthetic data: xkd-synth sequence 01 (seed 0, appearance_intensity_gap
0.05: the world of the shipped model, whose training sequence was 00), frame 1, through a 32-beam x
1024-column LiDAR: ~31.7k points with 0..1 reflectance `r` and learning-id labels.

Layouts (field, offset, type; point_step as the drivers declare them):

- `reference`: x 0, y 4, z 8, intensity 12 float32 = r (0..1); step 16 (what xkd-kitti2bag writes).
- `velodyne`: velodyne_pointcloud's XYZIRT: x, y, z, intensity float32 = round(r * 255), ring 16
  uint16, time 18 float32 (s since the scan start); step 22.
- `ouster`: ouster-ros' PointOS (PCL_ADD_POINT4D, 16-byte aligned): x, y, z float32 + 4 pad bytes,
  intensity 16 float32 = signal photons (Poisson around r * 2e5 / range^2: range-dependent), t 20
  uint32 (ns), reflectivity 24 uint16 = round(r * 255), ring 26 uint16, ambient 28 uint16,
  range 32 uint32 (mm); step 48.
- `livox`: livox_ros_driver2: x, y, z, intensity float32 = round(r * 255), tag 16 uint8, line 17
  uint8, timestamp 18 float64 (ns); step 26.
- `hesai`: x, y, z, intensity float32 = round(r * 255), ring 16 uint16, timestamp 18 float64 (s);
  step 26.
- `counts16`: x, y, z float32, intensity 12 uint16 = round(r * 65535), 2 pad bytes; step 16.

Any layout can be big-endian, and organised (height = beams, width = columns; a cell without a
return holds zeros, as ouster-ros publishes it) with junk row padding (row_step > width * point_step).
Bytes no field covers (pads inside a point, row padding) hold junk (0xAB), as uninitialised driver
memory would.
"""

from __future__ import annotations

import array
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_typestore

from xkd_core.classes import to_learning
from xkd_core.synth import SynthConfig, SyntheticSequence
from xkd_core.synth.config import LidarConfig
from xkd_core.synth.lidar import beam_grid
from xkd_ros.pointcloud import dtype_to_fields, to_rclpy_cloud, to_rosbags_cloud
from xkd_ros.stamp import rosbags_header

TS = get_typestore(Stores.ROS2_HUMBLE)
LAYOUTS = ("reference", "velodyne", "ouster", "livox", "hesai", "counts16")
JUNK = 0xAB
STAMP_NS = 1_700_000_000_123_456_789
SCAN_S = 0.1  # one revolution at 10 Hz


@dataclass(frozen=True)
class ReferenceScene:
    """One scan: points, 0..1 reflectance, learning-id labels and each point's beam / column."""

    xyz: np.ndarray  # (N, 3) float32
    reflectance: np.ndarray  # (N,) float32 in 0..1
    labels: np.ndarray  # (N,) uint16 learning ids
    beam: np.ndarray  # (N,) int64, 0 = top beam
    column: np.ndarray  # (N,) int64
    beams: int
    columns: int

    @property
    def xyzi(self) -> np.ndarray:
        """(N, 4) float32 x, y, z, reflectance: the model's own convention."""
        return np.concatenate([self.xyz, self.reflectance[:, None]], axis=1).astype(np.float32)

    @property
    def range_m(self) -> np.ndarray:
        return np.linalg.norm(self.xyz.astype(np.float64), axis=1)


@functools.lru_cache(maxsize=1)
def reference_scene() -> ReferenceScene:
    """The reference scan (cached: ~0.1 s to cast)."""
    lidar = LidarConfig(beams=32, columns=1024)
    seq = SyntheticSequence(SynthConfig(lidar=lidar, appearance_intensity_gap=0.05), 0, "01", 3)
    points, semantic, _ = seq.scan(1)
    xyz = points[:, :3].astype(np.float64)
    # Range noise moves a point along its ray, so its direction gives back the beam and column.
    el, az, _ = beam_grid(lidar)
    elev = np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1))
    beam = np.abs(elev[:, None] - el[None, :]).argmin(axis=1)
    azim = np.arctan2(xyz[:, 1], xyz[:, 0])
    column = np.rint((azim + np.pi) * lidar.columns / (2 * np.pi) - 0.5).astype(np.int64) % lidar.columns
    cell = beam * lidar.columns + column
    if len(np.unique(cell)) != len(cell):
        raise AssertionError("two points of the reference scan fall in one beam/column cell")
    return ReferenceScene(points[:, :3].copy(), points[:, 3].copy(), to_learning(semantic), beam, column,
                          lidar.beams, lidar.columns)


def _dtype(spec: list[tuple[str, int, str]], point_step: int, big_endian: bool) -> np.dtype:
    order = ">" if big_endian else "<"
    return np.dtype({"names": [n for n, _, _ in spec], "offsets": [o for _, o, _ in spec],
                     "formats": [order + t for _, _, t in spec], "itemsize": point_step})


def _layout(name: str, scene: ReferenceScene, big_endian: bool) -> tuple[np.dtype, dict[str, np.ndarray]]:
    """The driver's point dtype and the value of each field for every reference point."""
    r = scene.reflectance.astype(np.float64)
    r8 = np.rint(r * 255.0)
    col_t = scene.column / scene.columns * SCAN_S  # seconds since the scan started
    xyz = {"x": scene.xyz[:, 0], "y": scene.xyz[:, 1], "z": scene.xyz[:, 2]}
    rng = np.random.default_rng(7)
    if name == "reference":
        spec, step, values = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4")], 16, {
            "intensity": r}
    elif name == "velodyne":
        spec = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"), ("ring", 16, "u2"),
                ("time", 18, "f4")]
        step, values = 22, {"intensity": r8, "ring": scene.beam, "time": col_t}
    elif name == "ouster":
        spec = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 16, "f4"), ("t", 20, "u4"),
                ("reflectivity", 24, "u2"), ("ring", 26, "u2"), ("ambient", 28, "u2"), ("range", 32, "u4")]
        rng_m = scene.range_m
        signal = np.minimum(rng.poisson(r * 2.0e5 / np.maximum(rng_m, 1.0) ** 2), 65535)
        step, values = 48, {"intensity": signal, "t": np.rint(col_t * 1e9), "reflectivity": r8,
                            "ring": scene.beam, "ambient": rng.integers(0, 400, len(r)),
                            "range": np.rint(rng_m * 1000.0)}
    elif name == "livox":
        spec = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"), ("tag", 16, "u1"),
                ("line", 17, "u1"), ("timestamp", 18, "f8")]
        step, values = 26, {"intensity": r8, "tag": np.full(len(r), 0x10), "line": scene.beam % 6,
                            "timestamp": STAMP_NS + np.rint(col_t * 1e9)}
    elif name == "hesai":
        spec = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"), ("ring", 16, "u2"),
                ("timestamp", 18, "f8")]
        step, values = 26, {"intensity": r8, "ring": scene.beam, "timestamp": STAMP_NS * 1e-9 + col_t}
    elif name == "counts16":
        spec = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "u2")]
        step, values = 16, {"intensity": np.rint(r * 65535.0)}
    else:
        raise ValueError(f"unknown layout {name!r}; known: {LAYOUTS}")
    return _dtype(spec, step, big_endian), {**xyz, **values}


@dataclass(frozen=True)
class DriverCloud:
    """A cloud as one driver publishes it, plus where each reference point went."""

    layout: str
    points: np.ndarray  # structured (height, width) array in the driver's dtype (byte order included)
    row_pad: int  # junk bytes after each row
    #: (height * width,) reference point index at each cloud position (row-major), -1 = no return
    index: np.ndarray

    @property
    def height(self) -> int:
        return self.points.shape[0]

    @property
    def width(self) -> int:
        return self.points.shape[1]

    @property
    def point_step(self) -> int:
        return self.points.dtype.itemsize

    @property
    def row_step(self) -> int:
        return self.width * self.point_step + self.row_pad

    @property
    def is_bigendian(self) -> bool:
        return self.points.dtype.fields["x"][0].byteorder == ">"

    @property
    def fields(self) -> list[tuple[str, int, int, int]]:
        """(name, offset, PointField datatype, count) as the driver declares them."""
        return dtype_to_fields(self.points.dtype)

    @property
    def data(self) -> np.ndarray:
        """The message's `data` bytes (uint8), rows padded to `row_step`."""
        rows = np.full((self.height, self.row_step), JUNK, dtype=np.uint8)
        rows[:, : self.width * self.point_step] = self.points.view(np.uint8).reshape(self.height, -1)
        return rows.reshape(-1)

    def rosbags(self, typestore: Any = TS, frame_id: str = "lidar") -> Any:
        """A rosbags `sensor_msgs/msg/PointCloud2` (what bag tools and most tests read)."""
        header = rosbags_header(STAMP_NS, frame_id, typestore)
        msg = to_rosbags_cloud(header, self.points.reshape(-1), typestore, is_dense=False)
        return dataclasses.replace(msg, height=self.height, width=self.width, row_step=self.row_step,
                                   data=self.data)

    def rclpy(self, header: Any) -> Any:
        """An rclpy `sensor_msgs.msg.PointCloud2` (needs the ROS Python packages)."""
        msg = to_rclpy_cloud(header, self.points.reshape(-1), is_dense=False)
        msg.height, msg.width, msg.row_step = self.height, self.width, self.row_step
        data = array.array("B")
        data.frombytes(self.data.tobytes())
        msg.data = data
        return msg


def driver_cloud(layout: str, *, organised: bool = False, row_pad: int = 0, big_endian: bool = False,
                 scene: ReferenceScene | None = None) -> DriverCloud:
    """The reference scene in `layout`; organised as beams x columns, or one row in scan order."""
    scene = scene or reference_scene()
    dtype, values = _layout(layout, scene, big_endian)
    n = len(scene.xyz)
    if organised:
        shape = (scene.beams, scene.columns)
        where = scene.beam * scene.columns + scene.column
    else:
        if row_pad:
            raise ValueError("row padding needs an organised cloud here (an unorganised one has one row)")
        shape = (1, n)
        where = np.arange(n)
    points = np.frombuffer(np.full(shape[0] * shape[1] * dtype.itemsize, JUNK, np.uint8).tobytes(),
                           dtype=dtype).reshape(shape).copy()
    flat = points.reshape(-1)
    if organised:  # cells without a return: every field zero (ouster-ros), pad bytes left as they are
        for name in dtype.names:
            flat[name] = 0
    for name in dtype.names:
        flat[name][where] = values[name]
    index = np.full(shape[0] * shape[1], -1, dtype=np.int64)
    index[where] = np.arange(n)
    return DriverCloud(layout, points, row_pad, index)
