"""The segment node's parameters: one dataclass tree holding every name, type, default, range and description.

The node declares its ROS parameters from this tree (so a parameter cannot exist without a
description and a range), then validates the values it got with `xkd_core.config.from_dict` (choices
via `Literal`, cross-field rules in `__post_init__`). A nested field is a dotted ROS parameter:
`topics.cloud_in`, `qos.input.reliability`, ... exactly as nested keys in `config/segment.yaml`.

Anything wrong -- a key the node does not know, a wrong type, a value out of range, a missing
checkpoint -- is a `ConfigError` whose message names the parameter, and start-up stops.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import numpy as np

from xkd_core.config import ConfigError, from_dict
from xkd_ros.transform import matrix_to_translation_quat, translation_quat_to_matrix

if TYPE_CHECKING:  # rclpy is imported where it is used: the bag tools read the specs without ROS
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

#: The model that ships with the package (setup.py package_data), used when `checkpoint` is empty.
SHIPPED_CHECKPOINT = Path(str(files("xkd_core").joinpath("assets", "xkd_synth_small.pt")))

Device = Literal["cpu", "cuda", "auto"]
SparseBackend = Literal["auto", "spconv", "spconv_triton"]
Reliability = Literal["best_effort", "reliable"]
Durability = Literal["volatile", "transient_local"]
SyncPolicy = Literal["nearest", "approximate"]
PairLogPolicy = Literal["drop_oldest", "stop"]


def _p(default: Any, description: str, *, lo: float | None = None, hi: float | None = None,
       read_only: bool = True) -> Any:
    """A dataclass field carrying what a ROS ParameterDescriptor needs (description, range, read_only)."""
    meta = {"description": description, "range": None if lo is None else (lo, hi), "read_only": read_only}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _group(factory: Any, description: str) -> Any:
    """A nested group of parameters; its description prefixes the descriptions of its members."""
    return field(default_factory=factory, metadata={"description": description, "group": True})


@dataclass
class TopicsConfig:
    """Topic names (remappable with `-r from:=to` as well)."""

    cloud_in: str = _p("/velodyne_points",
                       "input sensor_msgs/PointCloud2 (x, y, z float32/64, optional intensity)")
    image_in: str = _p("/camera/image_2/image_raw", "input sensor_msgs/Image (rgb8, bgr8, mono8, ...)")
    camera_info_in: str = _p("/camera/image_2/camera_info",
                             "input sensor_msgs/CameraInfo giving the intrinsics K")
    cloud_out: str = _p("/xkd/labeled_cloud",
                        "output PointCloud2: x, y, z, intensity, label (uint16), rgb (packed), confidence")
    overlay_out: str = _p("/xkd/overlay",
                          "output sensor_msgs/Image: the camera image with label-coloured points")


@dataclass
class QosConfig:
    """One QoS profile (history is always keep-last)."""

    reliability: Reliability = _p("best_effort", "best_effort | reliable")
    depth: int = _p(5, "history depth (keep-last)", lo=1, hi=1000)
    durability: Durability = _p("volatile", "volatile | transient_local")


def _output_qos() -> QosConfig:
    # Reliable + volatile is what RViz subscribes with by default (rviz/xkd.rviz), and a reliable
    # publisher also serves best-effort subscribers.
    return QosConfig(reliability="reliable", depth=5, durability="volatile")


@dataclass
class QosGroup:
    """Input and output QoS."""

    input: QosConfig = _group(QosConfig, "subscriptions (default: sensor-data, best effort)")
    output: QosConfig = _group(_output_qos, "publishers (default: reliable, which RViz shows)")


#: LiDAR (x forward, y left, z up) -> camera optical frame (z forward, x right, y down), no offset.
_AXES_LIDAR_TO_CAMERA = [0.0, -1.0, 0.0, 0.0,
                         0.0, 0.0, -1.0, 0.0,
                         1.0, 0.0, 0.0, 0.0,
                         0.0, 0.0, 0.0, 1.0]


@dataclass
class ExtrinsicsConfig:
    """Where the camera sits relative to the LiDAR."""

    lidar_to_camera: list[float] = _p(
        _AXES_LIDAR_TO_CAMERA,
        "LiDAR -> camera transform: 16 floats (4x4 row-major) or 7 floats (x y z qx qy qz qw)",
    )
    use_tf: bool = _p(False, "look the transform up in /tf_static (image frame <- cloud frame) when tf2_ros "
                             "is importable; lidar_to_camera is the fallback")


@dataclass
class SegmentNodeConfig:
    """Every parameter of `segment_node` (defaults mirror config/segment.yaml)."""

    device: Device = _p("auto", "inference device: cpu | cuda | auto (cuda when available)")
    fp16: bool = _p(False, "half-precision inference (CUDA only; ignored on the CPU)")
    sparse_backend: SparseBackend = _p("auto", "spconv implementation: auto | spconv | spconv_triton")
    checkpoint: str = _p("", "model checkpoint (.pt); empty = the shipped model "
                             "xkd_core/assets/xkd_synth_small.pt")
    cpu_threads: int = _p(0, "torch intra-op threads on the CPU; 0 = torch's default", lo=0, hi=256)
    use_camera: bool = _p(True, "subscribe to the image and camera info (overlay, pair log, fusion)")
    fuse_camera: bool = _p(False, "use the fused 3D+2D head for points seen by a synchronized image")
    topics: TopicsConfig = _group(TopicsConfig, "topic")
    qos: QosGroup = _group(QosGroup, "QoS")
    sync_policy: SyncPolicy = _p(
        "nearest", "nearest: each cloud takes the nearest cached image and never waits | approximate: only "
                   "approximate-time (cloud, image) sets, clouds alone once the camera is silent for "
                   "max_image_age"
    )
    sync_slop: float = _p(0.05, "largest |image stamp - cloud stamp| accepted as a pair (s)", lo=0.0, hi=1.0)
    sync_queue: int = _p(10, "messages kept per input while waiting for a match", lo=1, hi=100)
    max_image_age: float = _p(0.5, "images older than this before the newest cloud are dropped (s); must be "
                                   ">= sync_slop", lo=0.001, hi=10.0)
    extrinsics: ExtrinsicsConfig = _group(ExtrinsicsConfig, "extrinsics")
    max_range: float = _p(100.0, "points farther than this (m) are not segmented (label 0, confidence 0); "
                                 "0 = no limit", lo=0.0, hi=1000.0, read_only=False)
    publish_overlay: bool = _p(True, "publish the overlay image (needs use_camera)", read_only=False)
    overlay_every_n: int = _p(1, "publish the overlay for every n-th frame with an image", lo=1, hi=1000,
                              read_only=False)
    diagnostics_period: float = _p(1.0, "period of /diagnostics (s)", lo=0.1, hi=60.0)
    log_pairs: bool = _p(False, "log cross-modal pairs for later fine-tuning (needs use_camera)")
    pair_log_dir: str = _p("~/.ros/xkd_pairs", "pair log directory (created if missing)")
    pair_log_every_n: int = _p(10, "log one frame with a synchronized image in n", lo=1, hi=100000)
    pair_log_min_interval: float = _p(0.0, "and at least this many seconds (of stamp) between logged frames",
                                      lo=0.0, hi=3600.0)
    pair_log_queue: int = _p(4, "frames waiting for the writer; more are dropped (and counted)",
                             lo=1, hi=1000)
    pair_log_disk_budget_mb: int = _p(2048, "most MiB the pair log may hold on disk", lo=1, hi=10_000_000)
    pair_log_policy: PairLogPolicy = _p("drop_oldest", "when the budget is reached: drop_oldest (delete the "
                                                       "oldest files) | stop (log nothing more)")

    def __post_init__(self) -> None:
        if self.max_image_age < self.sync_slop:
            raise ValueError(f"max_image_age ({self.max_image_age}) must be >= sync_slop ({self.sync_slop})")
        lidar_to_camera(self.extrinsics.lidar_to_camera)  # raises naming the parameter


@dataclass(frozen=True)
class ParamSpec:
    """One flattened ROS parameter: dotted name, default value, descriptor fields."""

    name: str
    default: Any
    description: str
    read_only: bool
    range: tuple[float, float] | None
    choices: tuple[str, ...] | None


def param_specs(cfg: SegmentNodeConfig | None = None) -> list[ParamSpec]:
    """Every parameter of the node, flattened to dotted names, with `cfg`'s values as defaults."""
    return list(_walk(cfg if cfg is not None else SegmentNodeConfig(), "", ""))


def _walk(obj: Any, prefix: str, group_desc: str) -> Any:
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        desc = f.metadata.get("description", "")
        if f.metadata.get("group"):
            yield from _walk(value, f"{name}.", f"{group_desc}{desc}: " if desc else group_desc)
            continue
        tp = hints[f.name]
        choices = tuple(get_args(tp)) if get_origin(tp) is Literal else None
        yield ParamSpec(name, value, f"{group_desc}{desc}", bool(f.metadata.get("read_only", True)),
                        f.metadata.get("range"), choices)


def unflatten(values: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}: ROS parameter names back to the nested config mapping."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        node = out
        *parents, leaf = name.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        is_array = not isinstance(value, (str, bytes)) and hasattr(value, "__len__")
        node[leaf] = list(value) if is_array else value  # rclpy gives arrays as array.array
    return out


def config_from_values(values: dict[str, Any]) -> SegmentNodeConfig:
    """Validate flattened parameter values into a `SegmentNodeConfig` (ConfigError names the parameter)."""
    try:
        return from_dict(SegmentNodeConfig, unflatten(values), "")
    except ConfigError as exc:
        raise ConfigError(f"invalid parameter {str(exc).removeprefix('SegmentNodeConfig: ')}") from exc


def lidar_to_camera(values: list[float]) -> np.ndarray:
    """The 4x4 LiDAR -> camera matrix from 16 row-major floats or from x y z qx qy qz qw.

    Raises ValueError naming `extrinsics.lidar_to_camera` when the count is wrong, a value is not
    finite, the quaternion is zero or the 4x4 is not a rigid transform.
    """
    name = "extrinsics.lidar_to_camera"
    v = np.asarray(list(values), dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{name}: every value must be finite, got {list(values)}")
    try:
        if v.size == 16:
            T = v.reshape(4, 4)
            matrix_to_translation_quat(T)  # checks: last row 0 0 0 1, proper rotation
            return T
        if v.size == 7:
            return translation_quat_to_matrix(v[:3], v[3:])
    except ValueError as exc:
        raise ValueError(f"{name}: not a rigid transform: {exc}") from exc
    raise ValueError(f"{name}: expected 16 floats (4x4 row-major) or 7 (x y z qx qy qz qw), got {v.size}")


def resolve_checkpoint(checkpoint: str) -> Path:
    """The checkpoint file to load: `checkpoint`, or the shipped model when empty; ConfigError if missing."""
    if not checkpoint:
        if not SHIPPED_CHECKPOINT.is_file():
            raise ConfigError(f"parameter 'checkpoint' is empty and the shipped model {SHIPPED_CHECKPOINT} "
                              f"is missing; set 'checkpoint' to a .pt file")
        return SHIPPED_CHECKPOINT
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"parameter 'checkpoint': file not found: {path}")
    return path


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS ParameterDescriptor of one parameter (ranges for numbers, choices as constraints)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                            step=0.0)]
    return desc


def declare_parameters(node: Node) -> SegmentNodeConfig:
    """Declare every parameter on `node` and return the validated config.

    Raises ConfigError naming the parameter for a wrong type, a value out of range or not among
    the choices, and for parameters given to the node (params file, `-p`) that it does not know.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    for spec in param_specs():
        given = node._parameter_overrides.get(spec.name)  # what the params file / -p said, for messages
        try:
            node.declare_parameter(spec.name, spec.default, descriptor(spec))
        except InvalidParameterTypeException as exc:
            got = given.type_.name if given is not None else "?"
            hint = " (write a float like 1.0, not 1)" if got.startswith("INTEGER") else ""
            raise ConfigError(f"parameter '{spec.name}' has the wrong type: expected "
                              f"{_ros_type_name(spec.default)}, got {got} {given.value if given else ''!r}"
                              f"{hint}") from exc
        except InvalidParameterValueException as exc:
            lo, hi = spec.range if spec.range else (None, None)
            raise ConfigError(f"parameter '{spec.name}' = {given.value if given else '?'!r} is out of range "
                              f"[{lo}, {hi}]") from exc
    # rclpy keeps every override it was given; the ones no declaration consumed are typos or stale keys.
    unknown = sorted(name for name in node._parameter_overrides if not node.has_parameter(name))
    if unknown:
        known = sorted(s.name for s in param_specs())
        hints = [f"{u!r} -> did you mean {m[0]!r}?" for u in unknown
                 if (m := difflib.get_close_matches(u, known, n=1))]
        raise ConfigError(f"unknown parameter(s) {unknown} for node {node.get_fully_qualified_name()}"
                          + (f" ({'; '.join(hints)})" if hints else "") + f"; known: {known}")
    return config_from_values(current_values(node))


def current_values(node: Node, changed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's current parameter values (flattened), with `changed` applied on top."""
    values = {s.name: node.get_parameter(s.name).value for s in param_specs()}
    values.update(changed or {})
    return values


def _ros_type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "BOOL"
    if isinstance(default, int):
        return "INTEGER"
    if isinstance(default, float):
        return "DOUBLE"
    if isinstance(default, str):
        return "STRING"
    return "DOUBLE_ARRAY"


def qos_profile(cfg: QosConfig) -> QoSProfile:
    """The rclpy QoS profile of a `QosConfig` (keep-last history)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=cfg.depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if cfg.reliability == "best_effort"
        else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if cfg.durability == "transient_local"
        else DurabilityPolicy.VOLATILE,
    )
