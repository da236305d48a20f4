"""The segment node's parameters: one dataclass tree holding every name, type, default, range and description.

This tree is the one source of the node's parameters. The node declares its ROS parameters from it
(so a parameter cannot exist without a description and a range), `config/segment.yaml` and the
README's parameter table are generated from it (`python -m xkd_ros.param_docs --write`; `make test`
fails when they drift), and the values the node gets are validated with `xkd_core.config.from_dict`
(choices via `Literal`, cross-field rules in `__post_init__`). A nested field is a dotted ROS
parameter: `topics.cloud_in`, `qos.input.reliability`, ... exactly as nested keys in the YAML file.

Cameras are a list of names (`cameras.names`); each name gets its own group `cameras.<name>.*`
(`CameraConfig`), declared once the list is known, with topic defaults derived from the name.

Anything wrong -- a key the node does not know, a wrong type, a value out of range, a missing
checkpoint -- is a `ConfigError` whose message names the parameter, and start-up stops.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import numpy as np

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError, flatten, from_dict, load_yaml, unflatten
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
PairLogPolicy = Literal["drop_oldest", "stop"]
Transport = Literal["raw", "compressed"]
IntensityField = Literal["intensity", "reflectivity", "none"]
IntensityScale = Literal["auto", "unit", "8bit", "16bit", "factor"]

#: A camera name becomes a parameter namespace and part of topic names.
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _p(default: Any, description: str, *, lo: float | None = None, hi: float | None = None,
       read_only: bool = True) -> Any:
    """A dataclass field carrying what a ROS ParameterDescriptor needs (description, range, read_only).

    A default of None makes a parameter that is unset unless the user gives it (declared by type).
    """
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

    cloud_in: str = _p("/velodyne_points", "input sensor_msgs/PointCloud2 (x, y, z float32/64; intensity "
                                           "or reflectivity optional, see intensity.*)")
    cloud_out: str = _p("/xkd/labeled_cloud",
                        "output PointCloud2, one point per input point: x, y, z, intensity, label (uint16), "
                        "rgb (packed), confidence")
    filtered_out: str = _p("/xkd/filtered_cloud", "output PointCloud2 like cloud_out without the points of "
                                                  "filter.drop_classes (what remains: obstacles)")
    overlay_out: str = _p("/xkd/overlay", "output sensor_msgs/Image per camera on <overlay_out>/<camera "
                                          "name>: the image with label-coloured points")
    class_map_out: str = _p("/xkd/class_map", "output std_msgs/String, latched (transient local): JSON "
                                              "{classes: [{id, name, rgb}]} of the labels")


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


@dataclass
class CameraConfig:
    """One camera (`cameras.<name>.*`). Topic defaults follow the name: /camera/<name>/..."""

    image_topic: str = _p("", "base image topic (empty: /camera/<name>/image_raw); with transport "
                              "compressed the node subscribes <image_topic>/compressed (image_transport)")
    camera_info_topic: str = _p("", "sensor_msgs/CameraInfo topic (empty: /camera/<name>/camera_info)")
    transport: Transport = _p("raw", "raw: sensor_msgs/Image (rgb8, bgr8, mono8/16, bayer, yuv422, ...) | "
                                     "compressed: sensor_msgs/CompressedImage (jpeg, png)")
    rectified: bool = _p(False, "false: raw image, undistorted with CameraInfo K, D | true: rectified image "
                                "(image_rect), projected with CameraInfo P and R, not undistorted again")
    lidar_to_camera: list[float] | None = _p(
        None, "static LiDAR -> camera optical frame transform, 16 floats (4x4 row-major) or 7 (x y z qx qy "
              "qz qw); unset: from TF (image frame <- cloud frame at the cloud's stamp). A camera with "
              "neither is not used and is reported")

    def __post_init__(self) -> None:
        if self.lidar_to_camera is not None:
            lidar_to_camera(self.lidar_to_camera)  # raises naming the parameter

    def with_defaults(self, name: str) -> CameraConfig:
        """This config with the empty topic names filled in from the camera name."""
        return dataclasses.replace(self, image_topic=self.image_topic or f"/camera/{name}/image_raw",
                                   camera_info_topic=self.camera_info_topic or f"/camera/{name}/camera_info")

    @property
    def subscribed_topic(self) -> str:
        """The topic actually subscribed: the base topic, or its `/compressed` sub-topic."""
        return f"{self.image_topic}/compressed" if self.transport == "compressed" else self.image_topic


@dataclass
class SyncConfig:
    """LiDAR-camera synchronization: each cloud takes, per camera, the nearest image; it never waits."""

    slop: float = _p(0.05, "largest |image stamp - cloud stamp| accepted as a pair (s)", lo=0.0, hi=1.0)
    max_image_age: float = _p(0.5, "images older than this before the newest cloud are dropped (s); must be "
                                   ">= slop", lo=0.001, hi=10.0)
    cache_size: int = _p(10, "images kept per camera", lo=1, hi=100)

    def __post_init__(self) -> None:
        if self.max_image_age < self.slop:
            raise ValueError(f"sync.max_image_age ({self.max_image_age}) must be >= sync.slop ({self.slop})")


@dataclass
class IntensityConfig:
    """Which field carries intensity and how it is scaled to the model's convention."""

    field: IntensityField = _p("intensity", "intensity | reflectivity (e.g. Ouster: its intensity is "
                                            "range-dependent signal) | none (the checkpoint's fill value)")
    scale: IntensityScale = _p("auto", "auto: decided from the first clouds (0..1, 0..255 or 16-bit), "
                                       "logged and in diagnostics | unit (0..1) | 8bit (0..255) | 16bit "
                                       "(0..65535) | factor (intensity.factor)")
    factor: float = _p(1.0, "multiplier to 0..1 when scale is factor", lo=1e-9, hi=1e9)
    auto_frames: int = _p(10, "clouds auto looks at before its decision is locked", lo=1, hi=1000)


@dataclass
class EgoCropConfig:
    """A box around the vehicle body, in the cloud frame: its points get label 0 and skip the model."""

    enabled: bool = _p(False, "crop the box [min, max]", read_only=False)
    min: list[float] = _p([-2.5, -1.1, -2.5], "box corner x y z (m, cloud frame)", read_only=False)
    max: list[float] = _p([2.5, 1.1, 0.5], "box corner x y z (m, cloud frame)", read_only=False)

    def __post_init__(self) -> None:
        for name in ("min", "max"):
            v = getattr(self, name)
            if len(v) != 3 or not np.isfinite(v).all():
                raise ValueError(f"ego_crop.{name} must be 3 finite numbers x y z, got {list(v)}")
        if any(a >= b for a, b in zip(self.min, self.max)):
            raise ValueError(f"ego_crop.min {list(self.min)} must be below ego_crop.max {list(self.max)} "
                             "on every axis")


@dataclass
class FilterConfig:
    """The filtered cloud: the labeled cloud without chosen classes."""

    publish: bool = _p(True, "publish topics.filtered_out", read_only=False)
    drop_classes: list[str] = _p(
        ["unlabeled", "road", "parking", "sidewalk", "other-ground", "terrain"],
        "class names left out of the filtered cloud (unlabeled: points not segmented: ego crop, out of "
        "range, NaN)", read_only=False)

    def __post_init__(self) -> None:
        unknown = [c for c in self.drop_classes if c not in CLASS_NAMES]
        if unknown:
            raise ValueError(f"filter.drop_classes: unknown class name(s) {unknown}; "
                             f"known: {list(CLASS_NAMES)}")


@dataclass
class DiagnosticsConfig:
    """`/diagnostics`: period and processing-time levels."""

    period: float = _p(1.0, "period of /diagnostics (s)", lo=0.1, hi=60.0)
    processing_time_warn_ms: float = _p(100.0, "WARN when a frame of the last period took longer (cloud "
                                               "in -> labeled cloud out, ms)", lo=1.0, hi=60000.0,
                                        read_only=False)
    processing_time_error_s: float = _p(5.0, "ERROR when every frame has taken longer than "
                                             "processing_time_warn_ms for this long (s)", lo=0.1, hi=3600.0,
                                        read_only=False)


@dataclass
class PairLogConfig:
    """Cross-modal pair logging (the format training reads, docs/pair_log.md)."""

    dir: str = _p("~/.ros/xkd_pairs", "directory (created if missing)")
    every_n: int = _p(10, "log one frame with a camera image in n", lo=1, hi=100000)
    min_interval: float = _p(0.0, "and at least this many seconds (of stamp) between logged frames",
                             lo=0.0, hi=3600.0)
    queue: int = _p(4, "frames waiting for the writer; more are dropped (and counted)", lo=1, hi=1000)
    disk_budget_mb: int = _p(2048, "most MiB the pair log may hold on disk", lo=1, hi=10_000_000)
    policy: PairLogPolicy = _p("drop_oldest", "at the budget: drop_oldest (delete the oldest files) | stop "
                                              "(log nothing more)")


@dataclass
class SegmentNodeConfig:
    """Every parameter of `segment_node`."""

    device: Device = _p("auto", "inference device: cpu | cuda | auto (cuda when available)")
    fp16: bool = _p(False, "half-precision inference (CUDA only; ignored on the CPU)")
    sparse_backend: SparseBackend = _p("auto", "spconv implementation: auto | spconv | spconv_triton")
    checkpoint: str = _p("", "model checkpoint (.pt); empty = the shipped model "
                             "xkd_core/assets/xkd_synth_small.pt")
    cpu_threads: int = _p(0, "torch intra-op threads on the CPU; 0 = torch's default", lo=0, hi=256)
    use_camera: bool = _p(True, "subscribe to the cameras of cameras.names (overlay, pair log, fusion)")
    fuse_camera: bool = _p(False, "use the fused 3D+2D head for points seen by a synchronized image")
    topics: TopicsConfig = _group(TopicsConfig, "topic")
    camera_names: list[str] = _p(["image_2"], "camera names; each has its parameters under cameras.<name>")
    cameras: dict[str, CameraConfig] = field(default_factory=dict)  # filled in for every name
    qos: QosGroup = _group(QosGroup, "QoS")
    sync: SyncConfig = _group(SyncConfig, "synchronization")
    intensity: IntensityConfig = _group(IntensityConfig, "intensity")
    min_range: float = _p(0.0, "points nearer than this (m) get label 0 and skip the model; 0 = off",
                          lo=0.0, hi=100.0, read_only=False)
    max_range: float = _p(100.0, "points farther than this (m) get label 0 and skip the model; 0 = no limit",
                          lo=0.0, hi=1000.0, read_only=False)
    ego_crop: EgoCropConfig = _group(EgoCropConfig, "ego crop")
    filter: FilterConfig = _group(FilterConfig, "filtered cloud")
    publish_overlay: bool = _p(True, "publish the overlay images (needs use_camera)", read_only=False)
    overlay_every_n: int = _p(1, "publish the overlay for every n-th frame with an image", lo=1, hi=1000,
                              read_only=False)
    diagnostics: DiagnosticsConfig = _group(DiagnosticsConfig, "diagnostics")
    log_pairs: bool = _p(False, "log cross-modal pairs for later distillation (needs use_camera)")
    pair_log: PairLogConfig = _group(PairLogConfig, "pair log")

    def __post_init__(self) -> None:
        names = list(self.camera_names)
        bad = [n for n in names if not _CAMERA_NAME.match(n)]
        if bad:
            raise ValueError(f"cameras.names: {bad} are not valid names (a letter, then letters, digits, _)")
        if len(set(names)) != len(names):
            raise ValueError(f"cameras.names lists a camera twice: {names}")
        if self.use_camera and not names:
            raise ValueError("use_camera is true but cameras.names is empty")
        extra = sorted(set(self.cameras) - set(names))
        if extra:
            raise ValueError(f"cameras.{extra[0]}.* is given but {extra[0]!r} is not in cameras.names "
                             f"{names}")
        self.cameras = {n: self.cameras.get(n, CameraConfig()).with_defaults(n) for n in names}
        if self.min_range and self.max_range and self.min_range >= self.max_range:
            raise ValueError(f"min_range ({self.min_range}) must be below max_range ({self.max_range})")


@dataclass(frozen=True)
class ParamSpec:
    """One flattened ROS parameter: dotted name, default value, descriptor fields."""

    name: str
    default: Any  # None: declared by type, unset unless given
    ros_type: str  # BOOL, INTEGER, DOUBLE, STRING, DOUBLE_ARRAY, STRING_ARRAY
    description: str  # the group's description, then the parameter's own (`short`)
    read_only: bool
    range: tuple[float, float] | None
    choices: tuple[str, ...] | None
    short: str = ""  # the parameter's own description, without its group's


#: The dataclass field holding the per-camera groups, and the ROS names standing for it.
_CAMERAS_FIELD, _NAMES_FIELD = "cameras", "camera_names"
CAMERA_NAMES_PARAM = "cameras.names"


def param_specs(cfg: SegmentNodeConfig | None = None) -> list[ParamSpec]:
    """Every parameter of the node, flattened to dotted names, with `cfg`'s values as defaults.

    The per-camera groups follow `cfg.camera_names`, with the camera's topics filled in.
    """
    cfg = cfg if cfg is not None else SegmentNodeConfig()
    return list(_walk(cfg, "", ""))


def specs_for_cameras(names: list[str]) -> list[ParamSpec]:
    """`param_specs` for these camera names (no camera: `use_camera` defaults to false)."""
    try:
        return param_specs(SegmentNodeConfig(camera_names=list(names), use_camera=bool(names)))
    except ValueError as exc:
        raise ConfigError(f"invalid parameter {exc}") from exc


def _walk(obj: Any, prefix: str, group_desc: str) -> Iterator[ParamSpec]:
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == _NAMES_FIELD and isinstance(obj, SegmentNodeConfig):
            yield _spec(CAMERA_NAMES_PARAM, value, hints[f.name], f, "")
            for cam in value:
                yield from _walk(obj.cameras[cam], f"cameras.{cam}.", f"camera {cam}: ")
            continue
        if f.name == _CAMERAS_FIELD and isinstance(obj, SegmentNodeConfig):
            continue  # declared with cameras.names, above
        name = f"{prefix}{f.name}"
        desc = f.metadata.get("description", "")
        if f.metadata.get("group"):
            yield from _walk(value, f"{name}.", f"{group_desc}{desc}: " if desc else group_desc)
            continue
        yield _spec(name, value, hints[f.name], f, group_desc)


def _spec(name: str, value: Any, tp: Any, f: dataclasses.Field, group_desc: str) -> ParamSpec:
    choices = tuple(get_args(tp)) if get_origin(tp) is Literal else None
    own = f.metadata.get("description", "")
    read_only = bool(f.metadata.get("read_only", True))
    return ParamSpec(name, value, _ros_type(tp), f"{group_desc}{own}", read_only, f.metadata.get("range"),
                     choices, own)


def _ros_type(tp: Any) -> str:
    """The ROS parameter type of a dataclass field type (Optional[X] is X)."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not Literal and args and type(None) in get_args(tp):
        tp = args[0]
    if get_origin(tp) is Literal:
        return "STRING"
    if get_origin(tp) is list:
        return {float: "DOUBLE_ARRAY", str: "STRING_ARRAY", int: "INTEGER_ARRAY"}[get_args(tp)[0]]
    return {bool: "BOOL", int: "INTEGER", float: "DOUBLE", str: "STRING"}[tp]


def nested_values(values: dict[str, Any]) -> dict[str, Any]:
    """Flattened ROS parameter values -> the nested mapping `SegmentNodeConfig` is built from.

    `cameras.names` and `cameras.<name>.*` become the fields `camera_names` and `cameras`; a value
    of None (an unset parameter) is left out, so the field keeps its default.
    """
    tree = unflatten({k: _plain(v) for k, v in values.items() if v is not None})
    cams = tree.pop("cameras", {})
    if not isinstance(cams, dict):
        raise ConfigError(f"invalid parameter cameras: expected a mapping, got {cams!r}")
    if "names" in cams:
        tree[_NAMES_FIELD] = cams.pop("names")
    if cams:
        tree[_CAMERAS_FIELD] = cams
    return tree


def _plain(value: Any) -> Any:
    """rclpy gives arrays as `array.array` (doubles) or lists; the config wants lists."""
    is_array = not isinstance(value, (str, bytes)) and hasattr(value, "__len__")
    return list(value) if is_array else value


def config_from_values(values: dict[str, Any]) -> SegmentNodeConfig:
    """Validate flattened parameter values into a `SegmentNodeConfig` (ConfigError names the parameter)."""
    try:
        return from_dict(SegmentNodeConfig, nested_values(values), "")
    except ConfigError as exc:
        text = str(exc).removeprefix("SegmentNodeConfig: ").replace("camera_names", CAMERA_NAMES_PARAM)
        raise ConfigError(f"invalid parameter {text}") from exc


def params_file_values(paths: list[Path], node_name: str = "segment_node") -> dict[str, Any]:
    """The flattened parameters that ROS params files give `node_name` (later files win), read without ROS.

    For the in-process bag replay, which builds the pipeline the node would build from the same files.
    Sections `/<node_name>`, `<node_name>`, `/**` and `**` apply, as in rcl.
    """
    values: dict[str, Any] = {}
    for path in paths:
        data = load_yaml(path)
        for key in ("/**", "**", node_name, f"/{node_name}"):
            section = data.get(key)
            if section is None:
                continue
            params = section.get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(params, dict):
                raise ConfigError(f"{path}: section {key!r} has no ros__parameters mapping")
            values.update(flatten(params))
    return values


def lidar_to_camera(values: list[float]) -> np.ndarray:
    """The 4x4 LiDAR -> camera matrix from 16 row-major floats or from x y z qx qy qz qw.

    Raises ValueError naming `lidar_to_camera` when the count is wrong, a value is not finite, the
    quaternion is zero or the 4x4 is not a rigid transform.
    """
    name = "lidar_to_camera"
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
        if spec.ros_type == "INTEGER":
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                            step=0.0)]
    return desc


def declare_parameters(node: Node) -> SegmentNodeConfig:
    """Declare every parameter on `node` and return the validated config.

    `cameras.names` is declared first; its value decides which `cameras.<name>.*` groups follow.
    Raises ConfigError naming the parameter for a wrong type, a value out of range or not among the
    choices, and for parameters given to the node (params file, `-p`) that it does not know.
    """
    base = param_specs()
    names_spec = next(s for s in base if s.name == CAMERA_NAMES_PARAM)
    _declare(node, names_spec)
    names = list(node.get_parameter(CAMERA_NAMES_PARAM).value)
    specs = specs_for_cameras(names)
    for spec in specs:
        if spec.name != CAMERA_NAMES_PARAM:
            _declare(node, spec)
    # rclpy keeps every override it was given; the ones no declaration consumed are typos or stale keys.
    unknown = sorted(name for name in node._parameter_overrides if not node.has_parameter(name))
    if unknown:
        known = sorted(s.name for s in specs)
        hints = [f"{u!r} -> did you mean {m[0]!r}?" for u in unknown
                 if (m := difflib.get_close_matches(u, known, n=1))]
        raise ConfigError(f"unknown parameter(s) {unknown} for node {node.get_fully_qualified_name()}"
                          + (f" ({'; '.join(hints)})" if hints else "") + f"; known: {known}")
    return config_from_values(current_values(node))


def _declare(node: Node, spec: ParamSpec) -> None:
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    given = node._parameter_overrides.get(spec.name)  # what the params file / -p said, for messages
    default = spec.default if spec.default is not None else getattr(Parameter.Type, spec.ros_type)
    try:
        node.declare_parameter(spec.name, default, descriptor(spec))
    except InvalidParameterTypeException as exc:
        got = given.type_.name if given is not None else "?"
        hint = " (write a float like 1.0, not 1)" if got.startswith("INTEGER") else ""
        raise ConfigError(f"parameter '{spec.name}' has the wrong type: expected {spec.ros_type}, got {got} "
                          f"{given.value if given else ''!r}{hint}") from exc
    except InvalidParameterValueException as exc:
        lo, hi = spec.range if spec.range else (None, None)
        raise ConfigError(f"parameter '{spec.name}' = {given.value if given else '?'!r} is out of range "
                          f"[{lo}, {hi}]") from exc


def current_values(node: Node, changed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's current parameter values (flattened; None for an unset one), `changed` applied on top."""
    from rclpy.parameter import Parameter

    names = list(node.get_parameter(CAMERA_NAMES_PARAM).value)
    values = {}
    for spec in specs_for_cameras(names):
        param = node.get_parameter_or(spec.name)  # unlike get_parameter, no exception for an unset one
        values[spec.name] = None if param.type_ == Parameter.Type.NOT_SET else param.value
    values.update(changed or {})
    return values


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
