"""`sensor_msgs/PointCloud2` <-> numpy without `sensor_msgs_py`, for rclpy and rosbags messages alike.

Messages are duck-typed: anything with `fields` (each with `name`, `offset`, `datatype`, `count`),
`height`, `width`, `point_step`, `row_step`, `is_bigendian` and a buffer-protocol `data`
(rclpy's `array.array('B')`, rosbags' `np.ndarray`, `bytes`) works.

Decoding (`cloud_to_xyzi`) views `data` in place with `np.frombuffer` and gathers x, y, z, intensity
into a fresh `(N, 4)` float32 array in one vectorised pass; nothing else is copied. Rules:

- x, y, z must exist, with `count == 1`, as FLOAT32 or FLOAT64 (float64 is converted to float32,
  every other type is refused: integer coordinates would need a scale the message does not carry).
- intensity is optional (0 when absent); any numeric single-count type is converted to float32
  without scaling (Ouster's uint16 or Livox's uint8 reflectivity keep their raw values). The field
  read into the 4th column is `intensity` unless the caller names another (`intensity_field=
  "reflectivity"`, for Ouster) or none (`intensity_field=None`: the column is 0). Bringing the raw
  values to the model's convention is `xkd_ros.intensity`'s job.
- `is_bigendian` clouds are read correctly (numpy byte-swaps them during the gather).
- Organised clouds (`height > 1`) are flattened row-major; padding at row ends (`row_step >
  width * point_step`) is skipped.
- A field with `count == 0` is read as one value, as several drivers publish it that way.
- Zero points is valid (returns `(0, 4)`) as long as the layout itself is valid.

Every refusal raises `CloudFormatError` whose `reason` is a short stable string: the node counts
rejected clouds per reason in its diagnostics.

Encoding builds the labeled output cloud (`LABELED_DTYPE`, point_step 28) or any other structured
array into a message. rosbags messages take a zero-copy `uint8` view of the array. rclpy messages
need the bytes in an `array.array('B')`: it is filled with one `frombytes` copy and assigned through
the public setter. `bench/bench_pointcloud.py` measured the options for 120k points (3.4 MB): with
rclpy's field checks on (always in Humble/Jazzy) an `array.array` is kept as is (0.24 ms) while
`bytes` is checked element by element (~190 ms); with Kilted's default (checks off) the setter
copies whatever it gets once more, so `array.array` and `bytes` tie (~0.48 ms). `array.array` is
the fastest in both cases.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from xkd_core.classes import NUM_CLASSES, PALETTE_PACKED_RGB

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

#: PointField datatype -> numpy scalar type (byte order applied separately).
DATATYPE_TO_NUMPY: dict[int, np.dtype] = {
    INT8: np.dtype(np.int8),
    UINT8: np.dtype(np.uint8),
    INT16: np.dtype(np.int16),
    UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32),
    UINT32: np.dtype(np.uint32),
    FLOAT32: np.dtype(np.float32),
    FLOAT64: np.dtype(np.float64),
}
_NUMPY_TO_DATATYPE: dict[str, int] = {dt.str[1:]: code for code, dt in DATATYPE_TO_NUMPY.items()}
#: PointField datatype -> its name in sensor_msgs/PointField (for logs and messages).
DATATYPE_NAMES: dict[int, str] = {INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16",
                                  INT32: "INT32", UINT32: "UINT32", FLOAT32: "FLOAT32", FLOAT64: "FLOAT64"}

#: The labeled output cloud: x, y, z, intensity, label, rgb, confidence (2 pad bytes after label keep
#: the floats 4-byte aligned). `rgb` is 0x00RRGGBB reinterpreted as float32, RViz's "RGB8" transformer.
LABELED_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "intensity", "label", "rgb", "confidence"],
        "formats": ["=f4", "=f4", "=f4", "=f4", "=u2", "=f4", "=f4"],
        "offsets": [0, 4, 8, 12, 16, 20, 24],
        "itemsize": 28,
    }
)
LABELED_POINT_STEP = LABELED_DTYPE.itemsize

#: Plain scan layout: x, y, z, intensity float32, point_step 16 (what `xkd-kitti2bag` writes).
XYZI_DTYPE = np.dtype(
    {"names": ["x", "y", "z", "intensity"], "formats": ["=f4"] * 4, "offsets": [0, 4, 8, 12], "itemsize": 16}
)

#: Ground-truth layout: x, y, z float32 and the learning id as uint16, padded to 16 bytes.
XYZL_DTYPE = np.dtype(
    {"names": ["x", "y", "z", "label"], "formats": ["=f4", "=f4", "=f4", "=u2"], "offsets": [0, 4, 8, 12],
     "itemsize": 16}
)

_HOST_BIG = sys.byteorder == "big"
_MAX_POINT_STEP = 2**31 - 1  # the largest structured itemsize numpy accepts


def _label_rgb_table() -> np.ndarray:
    """Bytes 16..23 of a labeled record (label, zero pad, packed rgb) for every learning id."""
    table = np.zeros(NUM_CLASSES, dtype=LABELED_DTYPE)
    table["label"] = np.arange(NUM_CLASSES)
    table.view(np.uint32).reshape(NUM_CLASSES, -1)[:, 5] = PALETTE_PACKED_RGB.view(np.uint32)
    return np.ndarray(NUM_CLASSES, dtype="V8", buffer=table, offset=16, strides=(LABELED_POINT_STEP,)).copy()


_LABEL_RGB_V8 = _label_rgb_table()


class CloudFormatError(ValueError):
    """A PointCloud2 that cannot be decoded; `reason` is a stable diagnostics counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fields_to_dtype(fields: Sequence[Any], point_step: int, is_bigendian: bool) -> np.dtype:
    """A structured dtype (offsets from the message, itemsize = point_step) describing one point.

    Raises `CloudFormatError` for unknown datatypes, duplicate names, negative offsets and fields
    that do not fit in `point_step`.
    """
    point_step = int(point_step)
    if point_step <= 0:
        raise CloudFormatError("bad_point_step", f"point_step must be > 0, got {point_step}")
    if point_step > _MAX_POINT_STEP:  # numpy itemsizes are C ints: it would raise its own ValueError
        raise CloudFormatError("bad_point_step", f"point_step {point_step} exceeds {_MAX_POINT_STEP} bytes")
    order = ">" if is_bigendian else "<"
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    for f in fields:
        name, offset, datatype, count = str(f.name), int(f.offset), int(f.datatype), int(f.count)
        base = DATATYPE_TO_NUMPY.get(datatype)
        if base is None:
            raise CloudFormatError("bad_field", f"field {name!r} has unknown PointField datatype {datatype}")
        if name in names:
            raise CloudFormatError("bad_field", f"field {name!r} appears twice")
        if offset < 0:
            raise CloudFormatError("bad_field", f"field {name!r} has negative offset {offset}")
        fmt: Any = base.newbyteorder(order)
        size = fmt.itemsize
        if count > 1:
            fmt = (fmt, (count,))
            size *= count
        if offset + size > point_step:
            raise CloudFormatError(
                "bad_point_step",
                f"field {name!r} (offset {offset}, {size} bytes) does not fit in point_step {point_step}",
            )
        names.append(name)
        formats.append(fmt)
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def dtype_to_fields(dtype: np.dtype) -> list[tuple[str, int, int, int]]:
    """(name, offset, datatype, count) per field of a structured dtype: the inverse of `fields_to_dtype`."""
    if dtype.names is None:
        raise ValueError("a structured dtype is needed to describe PointCloud2 fields")
    out = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        count = 1
        if sub.subdtype is not None:
            sub, shape = sub.subdtype
            count = int(np.prod(shape))
        code = _NUMPY_TO_DATATYPE.get(sub.str[1:])
        if code is None:
            raise ValueError(f"field {name!r} has dtype {sub} which PointField cannot express")
        out.append((name, int(offset), code, count))
    return out


def _is_bigendian(dtype: np.dtype) -> bool:
    """Byte order of a structured dtype's multi-byte fields; mixed orders cannot be expressed."""
    orders = set()
    for name in dtype.names or ():
        sub = dtype.fields[name][0]
        sub = sub.subdtype[0] if sub.subdtype is not None else sub
        if sub.itemsize > 1:
            orders.add(sub.byteorder.replace("=", ">" if _HOST_BIG else "<"))
    if len(orders) > 1:
        raise ValueError("all fields of a PointCloud2 share one byte order")
    return orders == {">"}


def _checked_layout(msg: Any, names: Sequence[str] | None) -> tuple[np.ndarray, np.dtype, int, int, int, int]:
    """(raw uint8 view of data, point dtype, height, width, row_step, point_step), all validated."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise CloudFormatError("bad_size", f"height/width must be >= 0, got {height}x{width}")
    fields = list(msg.fields)
    all_names = [str(f.name) for f in fields]
    if len(set(all_names)) != len(all_names):
        raise CloudFormatError("bad_field", f"PointCloud2 field names repeat: {all_names}")
    if names is not None:
        fields = [f for f in fields if str(f.name) in names]
    dtype = fields_to_dtype(fields, point_step, bool(msg.is_bigendian))
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if row_step < width * point_step:
        raise CloudFormatError(
            "bad_row_step", f"row_step {row_step} < width {width} * point_step {point_step}"
        )
    if raw.size != row_step * height:
        raise CloudFormatError(
            "bad_data_length",
            f"data holds {raw.size} bytes, expected row_step {row_step} * height {height}"
            f" = {row_step * height}",
        )
    return raw, dtype, height, width, row_step, point_step


def cloud_view(msg: Any, names: Sequence[str] | None = None) -> np.ndarray:
    """A zero-copy structured view `(height, width)` of the message data (rows may be padded).

    `names` restricts the view to those fields, so an unrelated exotic field cannot spoil a decode.
    """
    raw, dtype, height, width, row_step, point_step = _checked_layout(msg, names)
    if height * width == 0:
        return np.empty((height, width), dtype=dtype)
    return np.ndarray((height, width), dtype=dtype, buffer=raw, strides=(row_step, point_step))


def _native_f32_run(dtype: np.dtype, names: Sequence[str]) -> tuple[int, int]:
    """(offset of x, k) when `names[:k]` (k = 3: x, y, z, or 4 with the intensity source) are adjacent
    native float32."""
    f32 = np.dtype("=f4")
    fields = dtype.fields
    x_off = fields["x"][1]
    k = 0
    for name in names:
        spec = fields.get(name)
        if spec is None or spec[0] != f32 or spec[1] != x_off + 4 * k:
            break
        k += 1
    return x_off, (k if k >= 3 else 0)


def field_datatype(msg: Any, name: str) -> int | None:
    """The PointField datatype of the cloud's field `name`, None when the cloud has no such field."""
    for f in msg.fields:
        if str(f.name) == name:
            return int(f.datatype)
    return None


def cloud_to_xyzi(msg: Any, intensity_field: str | None = "intensity") -> np.ndarray:
    """The cloud's points as `(N, 4)` float32 x, y, z, intensity (row-major for organised clouds).

    The 4th column holds the raw values of `intensity_field` (default `intensity`; e.g.
    `reflectivity` for Ouster's calibrated 8-bit reflectivity), 0 when the cloud lacks that field or
    `intensity_field` is None.
    """
    if intensity_field in ("x", "y", "z"):
        raise ValueError(f"intensity_field cannot be a coordinate, got {intensity_field!r}")
    fields = {str(f.name): f for f in msg.fields}
    for axis in ("x", "y", "z"):
        f = fields.get(axis)
        if f is None:
            raise CloudFormatError(
                "missing_field", f"PointCloud2 has no {axis!r} field (fields: {sorted(fields)})"
            )
        if int(f.datatype) not in (FLOAT32, FLOAT64) or int(f.count) > 1:
            raise CloudFormatError(
                "bad_field_type",
                f"field {axis!r} must be one FLOAT32 or FLOAT64,"
                f" got datatype {int(f.datatype)} count {int(f.count)}",
            )
    src = intensity_field if intensity_field is not None and intensity_field in fields else None
    if src is not None and int(fields[src].count) > 1:
        raise CloudFormatError(
            "bad_field_type", f"field {src!r} must have count 1, got {int(fields[src].count)}"
        )
    names = ("x", "y", "z") if src is None else ("x", "y", "z", src)
    raw, dtype, height, width, row_step, point_step = _checked_layout(msg, names)
    shape = (height, width)
    out = np.empty((height, width, 4), dtype=np.float32)
    if height * width == 0:
        return out.reshape(0, 4)
    if src is None:
        out[..., 3] = 0.0
    x_off, k = _native_f32_run(dtype, names)
    done = 0
    if k:
        # The common layout (x, y, z[, intensity] adjacent native float32): copy each point's 12 or
        # 16 bytes as one opaque item, ~3x faster than four strided float copies.
        item = np.dtype(f"V{4 * k}")
        src_items = np.ndarray(shape, dtype=item, buffer=raw, offset=x_off, strides=(row_step, point_step))
        np.copyto(np.ndarray(shape, dtype=item, buffer=out, strides=(16 * width, 16)), src_items)
        done = k
    view = np.ndarray(shape, dtype=dtype, buffer=raw, strides=(row_step, point_step))
    for c, name in enumerate(names[done:], start=done):
        out[..., c] = view[name]  # converts float64/ints and byte-swaps big-endian data
    return out.reshape(height * width, 4)


def labeled_cloud_array(xyzi: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The labeled output points as a `LABELED_DTYPE` array, rgb from the class palette.

    Labels must be learning ids (`0..NUM_CLASSES-1`); anything else has no colour and is refused.
    """
    xyzi = np.asarray(xyzi)
    labels = np.asarray(labels)
    confidence = np.asarray(confidence)
    if xyzi.ndim != 2 or xyzi.shape[1] != 4:
        raise ValueError(f"xyzi must be (N, 4), got {xyzi.shape}")
    n = xyzi.shape[0]
    if labels.shape != (n,) or confidence.shape != (n,):
        raise ValueError(f"labels {labels.shape} and confidence {confidence.shape} must both be ({n},)")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(f"labels must be learning ids in [0, {NUM_CLASSES - 1}]")
    out = np.empty(n, dtype=LABELED_DTYPE)
    if n == 0:
        return out
    # Plain views of the 28-byte records: x, y, z, intensity go as one opaque 16-byte item per point
    # and label+pad+rgb as one 8-byte item gathered from a per-class table (~3x faster than strided
    # per-field copies, and the rgb bits pass untouched).
    rec = (LABELED_POINT_STEP,)
    src = np.ascontiguousarray(xyzi, dtype=np.float32)
    np.copyto(np.ndarray(n, dtype="V16", buffer=out, strides=rec), src.view("V16")[:, 0])
    label_rgb = _LABEL_RGB_V8[labels.astype(np.intp)]
    np.copyto(np.ndarray(n, dtype="V8", buffer=out, offset=16, strides=rec), label_rgb)
    np.copyto(np.ndarray(n, dtype=np.float32, buffer=out, offset=24, strides=rec), confidence)
    return out


def labeled_fields() -> list[tuple[str, int, int, int]]:
    """(name, offset, datatype, count) of the labeled output cloud."""
    return dtype_to_fields(LABELED_DTYPE)


def _check_array(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 1 or points.dtype.names is None:
        raise ValueError(f"expected a 1-D structured array, got {points.dtype} with shape {points.shape}")
    return np.ascontiguousarray(points)


def to_rclpy_cloud(header: Any, points: np.ndarray, is_dense: bool = False) -> Any:
    """An rclpy `sensor_msgs.msg.PointCloud2` (height 1) holding the structured array `points`.

    One copy of the bytes is made. `is_dense` ("no invalid points") defaults to False, the claim that
    is always safe; pass True only when every x, y, z is known finite (e.g. the input cloud said so).
    """
    from sensor_msgs.msg import PointCloud2, PointField

    points = _check_array(points)
    data = array.array("B")
    data.frombytes(memoryview(points).cast("B"))
    msg = PointCloud2(header=header, is_dense=bool(is_dense), **_cloud_layout(points, PointField))
    msg.data = data
    return msg


def to_rosbags_cloud(header: Any, points: np.ndarray, typestore: Any, is_dense: bool = False) -> Any:
    """A rosbags `sensor_msgs/msg/PointCloud2` whose `data` is a zero-copy uint8 view of `points`.

    `is_dense` as in `to_rclpy_cloud`.
    """
    PointCloud2 = typestore.types["sensor_msgs/msg/PointCloud2"]
    PointField = typestore.types["sensor_msgs/msg/PointField"]
    points = _check_array(points)
    return PointCloud2(header=header, data=points.view(np.uint8).reshape(-1), is_dense=bool(is_dense),
                       **_cloud_layout(points, PointField))


def _cloud_layout(points: np.ndarray, point_field: Any) -> dict[str, Any]:
    """The layout fields of an unorganised PointCloud2 holding `points`, for either message flavour."""
    step = points.dtype.itemsize
    return {
        "height": 1,
        "width": points.shape[0],
        "fields": [point_field(name=n, offset=o, datatype=d, count=c)
                   for n, o, d, c in dtype_to_fields(points.dtype)],
        "is_bigendian": _is_bigendian(points.dtype),
        "point_step": step,
        "row_step": step * points.shape[0],
    }


def xyzi_array(xyzi: np.ndarray) -> np.ndarray:
    """(N, 4) float32 points as an `XYZI_DTYPE` structured array (a view when already float32 C-order)."""
    pts = np.ascontiguousarray(xyzi, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError(f"points must be (N, 4), got {pts.shape}")
    return pts.view(XYZI_DTYPE).reshape(-1)


def xyzl_array(xyz: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Ground-truth points: x, y, z float32 and learning-id labels uint16 (`XYZL_DTYPE`)."""
    xyz = np.asarray(xyz)
    labels = np.asarray(labels)
    if xyz.ndim != 2 or xyz.shape[1] < 3 or labels.shape != (xyz.shape[0],):
        raise ValueError(f"xyz must be (N, >=3) and labels (N,), got {xyz.shape} and {labels.shape}")
    out = np.zeros(xyz.shape[0], dtype=XYZL_DTYPE)  # zeros: the pad bytes are deterministic
    out_f = out.view(np.float32).reshape(-1, 4)
    out_f[:, :3] = xyz[:, :3]
    out["label"] = labels
    return out


def cloud_field(msg: Any, name: str, dtype: np.dtype | type | None = None) -> np.ndarray:
    """One field of a cloud as a flat array (row-major), e.g. the `label` of a ground-truth cloud."""
    if name not in {str(f.name) for f in msg.fields}:
        raise CloudFormatError("missing_field", f"PointCloud2 has no {name!r} field")
    view = cloud_view(msg, names=(name,))
    col = view[name].reshape(view.shape[0] * view.shape[1], *view.dtype.fields[name][0].shape)
    return col.astype(dtype if dtype is not None else col.dtype.newbyteorder("="))


def cloud_layout_text(msg: Any) -> str:
    """One line describing a cloud's layout (fields with type and offset, point step, byte order, shape)."""
    fields = " ".join(f"{f.name}:{DATATYPE_NAMES.get(int(f.datatype), int(f.datatype))}@{int(f.offset)}"
                      + (f"x{int(f.count)}" if int(f.count) > 1 else "") for f in msg.fields)
    shape = f"organised {int(msg.height)}x{int(msg.width)}" if int(msg.height) > 1 else "unorganised"
    return (f"{fields}, point_step {int(msg.point_step)}, {'big' if msg.is_bigendian else 'little'}-endian, "
            f"{shape}")
