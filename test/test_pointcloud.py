"""PointCloud2 <-> numpy: round trips, arbitrary layouts (hypothesis), every refusal, both message kinds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from xkd_core.classes import NUM_CLASSES, PALETTE_PACKED_RGB, PALETTE_RGB
from xkd_ros import pointcloud as pc
from xkd_ros.stamp import rosbags_header

TS = get_typestore(Stores.ROS2_HUMBLE)
NP_OF = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def field(name: str, offset: int, datatype: int, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def make_msg(records: np.ndarray, fields: list, point_step: int, height: int, width: int,
             row_pad: int = 0, big: bool = False, pad_byte: int = 0xAB) -> SimpleNamespace:
    """A duck-typed PointCloud2 whose rows are `records` bytes followed by `row_pad` junk bytes."""
    row_step = width * point_step + row_pad
    data = np.full((height, row_step), pad_byte, dtype=np.uint8)
    if height * width:
        data[:, : width * point_step] = records.view(np.uint8).reshape(height, width * point_step)
    return SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=big,
                           point_step=point_step, row_step=row_step, data=data.reshape(-1).tobytes())


def xyzi_msg(xyzi: np.ndarray, height: int = 1) -> SimpleNamespace:
    fields = [field("x", 0, pc.FLOAT32), field("y", 4, pc.FLOAT32), field("z", 8, pc.FLOAT32),
              field("intensity", 12, pc.FLOAT32)]
    rec = np.ascontiguousarray(xyzi, dtype=np.float32)
    return make_msg(rec, fields, 16, height, len(rec) // height)


# ---------------------------------------------------------------------------------------------------
# Arbitrary layouts


@st.composite
def layouts(draw):
    """A random cloud layout and contents: field order, types, gaps, padding, organisation, endianness."""
    kinds = {"x": draw(st.sampled_from([7, 8])), "y": draw(st.sampled_from([7, 8])),
             "z": draw(st.sampled_from([7, 8]))}
    if draw(st.booleans()):
        kinds["intensity"] = draw(st.sampled_from([2, 4, 6, 7, 8]))
    if draw(st.booleans()):
        kinds["ring"] = draw(st.sampled_from([2, 4]))
    if draw(st.booleans()):
        kinds["t"] = 6
    names = draw(st.permutations(list(kinds)))
    offset, fields = 0, []
    for name in names:
        offset += draw(st.integers(0, 5))  # arbitrary gaps, unaligned offsets included
        dt = kinds[name]
        fields.append(field(name, offset, dt))
        offset += np.dtype(NP_OF[dt]).itemsize
    point_step = offset + draw(st.integers(0, 9))
    height = draw(st.integers(1, 4))
    width = draw(st.integers(0, 7))
    row_pad, big, seed = draw(st.integers(0, 11)), draw(st.booleans()), draw(st.integers(0, 2**31))
    return fields, point_step, height, width, row_pad, big, seed


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_decode_any_layout(layout):
    fields, point_step, height, width, row_pad, big, seed = layout
    rng = np.random.default_rng(seed)
    order = ">" if big else "<"
    dtype = np.dtype({"names": [f.name for f in fields],
                      "formats": [order + NP_OF[f.datatype] for f in fields],
                      "offsets": [f.offset for f in fields], "itemsize": point_step})
    records = np.zeros((height, width), dtype=dtype)
    values = {}
    for f in fields:
        kind = np.dtype(NP_OF[f.datatype])
        if kind.kind == "f":
            v = rng.normal(0, 50, (height, width)).astype(kind)
        else:
            v = rng.integers(0, np.iinfo(kind).max, (height, width), endpoint=True).astype(kind)
        records[f.name] = v
        values[f.name] = v
    msg = make_msg(records, fields, point_step, height, width, row_pad=row_pad, big=big)

    got = pc.cloud_to_xyzi(msg)

    assert got.dtype == np.float32 and got.shape == (height * width, 4)
    for k, name in enumerate(("x", "y", "z")):
        np.testing.assert_array_equal(got[:, k], values[name].astype(np.float32).reshape(-1))
    want_i = values["intensity"].astype(np.float32).reshape(-1) if "intensity" in values else 0.0
    np.testing.assert_array_equal(got[:, 3], want_i)
    # the structured view agrees with what was written, field by field
    view = pc.cloud_view(msg)
    for name, v in values.items():
        np.testing.assert_array_equal(view[name], v)


def test_fields_to_dtype_offsets_and_itemsize():
    fields = [field("intensity", 16, pc.UINT16), field("x", 0, pc.FLOAT32), field("rgb", 20, pc.FLOAT32, 1),
              field("normal", 24, pc.FLOAT32, 3)]
    dt = pc.fields_to_dtype(fields, 40, False)
    assert dt.itemsize == 40
    assert dt.fields["intensity"][1] == 16 and dt.fields["intensity"][0] == np.dtype("<u2")
    assert dt.fields["normal"][0].shape == (3,)
    assert pc.fields_to_dtype(fields, 40, True).fields["x"][0] == np.dtype(">f4")
    assert sorted(pc.dtype_to_fields(dt)) == sorted(
        [("intensity", 16, pc.UINT16, 1), ("x", 0, pc.FLOAT32, 1), ("rgb", 20, pc.FLOAT32, 1),
         ("normal", 24, pc.FLOAT32, 3)]
    )


def test_big_endian_cloud_is_byteswapped():
    xyzi = np.array([[1.5, -2.25, 3.0, 7.0], [1e3, 0.0, -1e-3, 0.5]], dtype=np.float32)
    fields = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z", "intensity"))]
    msg = make_msg(xyzi.astype(">f4"), fields, 16, 1, 2, big=True)
    np.testing.assert_array_equal(pc.cloud_to_xyzi(msg), xyzi)


def test_organised_cloud_is_row_major_and_skips_row_padding():
    xyzi = np.arange(3 * 5 * 4, dtype=np.float32).reshape(15, 4)
    fields = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z", "intensity"))]
    msg = make_msg(xyzi, fields, 16, height=3, width=5, row_pad=8, pad_byte=0xFF)  # 0xFF.. is NaN
    out = pc.cloud_to_xyzi(msg)
    np.testing.assert_array_equal(out, xyzi)


def test_float64_xyz_converted_and_missing_intensity_is_zero():
    xyz = np.array([[0.1, 0.2, 0.3], [4.0, 5.0, 6.0]])
    fields = [field(n, 8 * i, pc.FLOAT64) for i, n in enumerate(("x", "y", "z"))]
    out = pc.cloud_to_xyzi(make_msg(xyz.copy(), fields, 24, 1, 2))
    np.testing.assert_array_equal(out[:, :3], xyz.astype(np.float32))
    np.testing.assert_array_equal(out[:, 3], [0.0, 0.0])


def test_unrelated_exotic_field_does_not_block_decoding():
    xyzi = np.ones((2, 4), dtype=np.float32)
    fields = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z", "intensity"))]
    msg = make_msg(xyzi, fields + [field("weird", 0, 42)], 16, 1, 2)
    np.testing.assert_array_equal(pc.cloud_to_xyzi(msg), xyzi)


def test_zero_points_gives_empty_array():
    fields = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z"))]
    for height, width in ((0, 0), (1, 0), (0, 5)):
        msg = SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=False, point_step=12,
                              row_step=12 * width, data=b"")
        out = pc.cloud_to_xyzi(msg)
        assert out.shape == (0, 4) and out.dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# Every refusal, with its stable reason code

GOOD = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z", "intensity"))]


def cloud(fields=GOOD, height=1, width=2, point_step=16, row_step=None, data=None, big=False):
    row_step = width * point_step if row_step is None else row_step
    data = bytes(row_step * height) if data is None else data
    return SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=big, point_step=point_step,
                           row_step=row_step, data=data)


@pytest.mark.parametrize(
    ("msg", "reason", "words"),
    [
        (cloud(fields=GOOD[1:]), "missing_field", "'x'"),
        (cloud(fields=[GOOD[0], GOOD[2], GOOD[3]]), "missing_field", "'y'"),
        (cloud(fields=[]), "missing_field", "'x'"),
        (cloud(fields=[field("x", 0, pc.INT32)] + GOOD[1:]), "bad_field_type", "'x'"),
        (cloud(fields=GOOD[:2] + [field("z", 8, pc.UINT16)] + GOOD[3:]), "bad_field_type", "'z'"),
        (cloud(fields=[field("x", 0, pc.FLOAT32, 2)] + GOOD[1:]), "bad_field_type", "count 2"),
        (cloud(fields=GOOD[:3] + [field("intensity", 12, pc.FLOAT32, 3)], point_step=24), "bad_field_type",
         "intensity"),
        (cloud(data=bytes(31)), "bad_data_length", "31 bytes"),
        (cloud(data=bytes(33)), "bad_data_length", "33 bytes"),
        (cloud(height=2, row_step=32, data=bytes(32)), "bad_data_length", "height 2"),
        (cloud(row_step=31, data=bytes(31)), "bad_row_step", "row_step 31"),
        (cloud(point_step=12, row_step=32, data=bytes(32)), "bad_point_step", "'intensity'"),
        (cloud(point_step=0, row_step=0, data=b""), "bad_point_step", "point_step"),
        (cloud(fields=GOOD[:3] + [field("intensity", 12, 9)]), "bad_field", "datatype 9"),
        (cloud(fields=GOOD + [field("x", 0, pc.FLOAT32)]), "bad_field", "repeat"),
        (cloud(fields=GOOD[:3] + [field("intensity", -4, pc.FLOAT32)]), "bad_field", "negative"),
        (cloud(height=-1, data=b""), "bad_size", "height"),
    ],
)
def test_refusals_have_stable_reason(msg, reason, words):
    with pytest.raises(pc.CloudFormatError) as err:
        pc.cloud_to_xyzi(msg)
    assert err.value.reason == reason
    assert words in str(err.value)


# ---------------------------------------------------------------------------------------------------
# Labeled output cloud


def test_labeled_layout_is_documented():
    assert pc.LABELED_POINT_STEP == 28
    assert pc.labeled_fields() == [
        ("x", 0, pc.FLOAT32, 1), ("y", 4, pc.FLOAT32, 1), ("z", 8, pc.FLOAT32, 1),
        ("intensity", 12, pc.FLOAT32, 1), ("label", 16, pc.UINT16, 1), ("rgb", 20, pc.FLOAT32, 1),
        ("confidence", 24, pc.FLOAT32, 1),
    ]


def test_labeled_array_fields_and_rgb_palette():
    rng = np.random.default_rng(1)
    n = 500
    xyzi = rng.normal(size=(n, 4)).astype(np.float32)
    labels = np.concatenate([np.arange(NUM_CLASSES), rng.integers(0, NUM_CLASSES, n - NUM_CLASSES)])
    labels = labels.astype(np.uint16)
    conf = rng.random(n).astype(np.float32)
    arr = pc.labeled_cloud_array(xyzi, labels, conf)
    assert arr.dtype == pc.LABELED_DTYPE
    for k, name in enumerate(("x", "y", "z", "intensity")):
        np.testing.assert_array_equal(arr[name], xyzi[:, k])
    np.testing.assert_array_equal(arr["label"], labels)
    np.testing.assert_array_equal(arr["confidence"], conf)
    # rgb: 0x00RRGGBB in a float32's bits, and the palette colour of the label
    bits = arr["rgb"].view(np.uint32)
    rgb = np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=1)
    np.testing.assert_array_equal(rgb, PALETTE_RGB[labels])
    assert ((bits >> 24) == 0).all()
    np.testing.assert_array_equal(bits, PALETTE_PACKED_RGB.view(np.uint32)[labels])
    # the 2 pad bytes after `label` are zero, so the output bytes are deterministic
    np.testing.assert_array_equal(arr.view(np.uint8).reshape(n, 28)[:, 18:20], 0)


def test_labeled_array_refuses_bad_input():
    xyzi = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="learning ids"):
        pc.labeled_cloud_array(xyzi, np.array([0, 1, NUM_CLASSES]), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="labels"):
        pc.labeled_cloud_array(xyzi, np.zeros(2, np.uint16), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        pc.labeled_cloud_array(np.zeros((3, 3), np.float32), np.zeros(3, np.uint16), np.zeros(3, np.float32))
    assert pc.labeled_cloud_array(np.zeros((0, 4)), np.zeros(0, np.uint16), np.zeros(0)).shape == (0,)


# ---------------------------------------------------------------------------------------------------
# rosbags and rclpy messages


def _labeled(n: int = 300, seed: int = 2):
    rng = np.random.default_rng(seed)
    xyzi = rng.normal(0, 20, (n, 4)).astype(np.float32)
    xyzi[5, 0] = np.nan  # invalid points pass through untouched
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint16)
    conf = rng.random(n).astype(np.float32)
    return xyzi, labels, conf, pc.labeled_cloud_array(xyzi, labels, conf)


def test_rosbags_cloud_round_trip_through_cdr():
    xyzi, labels, conf, arr = _labeled()
    msg = pc.to_rosbags_cloud(rosbags_header(123_000_000_456, "velodyne", TS), arr, TS)
    assert msg.data.base is not None  # a view of the array, not a copy
    wire = TS.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2")
    back = TS.deserialize_cdr(wire, "sensor_msgs/msg/PointCloud2")
    assert (back.point_step, back.row_step, back.height, back.width) == (28, 28 * len(xyzi), 1, len(xyzi))
    assert not back.is_dense
    assert back.header.frame_id == "velodyne" and back.header.stamp.nanosec == 456
    np.testing.assert_array_equal(pc.cloud_to_xyzi(back).view(np.uint32), xyzi.view(np.uint32))
    np.testing.assert_array_equal(pc.cloud_field(back, "label"), labels)
    np.testing.assert_array_equal(pc.cloud_field(back, "confidence"), conf)
    np.testing.assert_array_equal(np.frombuffer(back.data, np.uint8), arr.view(np.uint8))
    with pytest.raises(pc.CloudFormatError) as err:
        pc.cloud_field(back, "ring")
    assert err.value.reason == "missing_field"


def test_xyzi_and_xyzl_arrays():
    pts = np.arange(12, dtype=np.float32).reshape(3, 4)
    arr = pc.xyzi_array(pts)
    assert arr.dtype.itemsize == 16 and np.shares_memory(arr, pts)
    gt = pc.xyzl_array(pts, np.array([1, 2, 19], np.uint16))
    assert pc.dtype_to_fields(gt.dtype) == [("x", 0, pc.FLOAT32, 1), ("y", 4, pc.FLOAT32, 1),
                                            ("z", 8, pc.FLOAT32, 1), ("label", 12, pc.UINT16, 1)]
    msg = pc.to_rosbags_cloud(rosbags_header(1, "velodyne", TS), gt, TS)
    np.testing.assert_array_equal(pc.cloud_to_xyzi(msg)[:, :3], pts[:, :3])
    np.testing.assert_array_equal(pc.cloud_field(msg, "label"), [1, 2, 19])


def test_rclpy_cloud_round_trip_through_cdr():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    from xkd_ros.stamp import header_ns, rclpy_header

    xyzi, labels, conf, arr = _labeled(seed=3)
    msg = pc.to_rclpy_cloud(rclpy_header(7_000_000_001, "velodyne"), arr, is_dense=False)
    assert isinstance(msg, sensor_msgs.PointCloud2)
    wire = serialization.serialize_message(msg)
    back = serialization.deserialize_message(wire, sensor_msgs.PointCloud2)
    assert header_ns(back.header) == 7_000_000_001
    assert [(f.name, f.offset, f.datatype, f.count) for f in back.fields] == pc.labeled_fields()
    np.testing.assert_array_equal(pc.cloud_to_xyzi(back).view(np.uint32), xyzi.view(np.uint32))
    np.testing.assert_array_equal(pc.cloud_field(back, "label"), labels)
    np.testing.assert_array_equal(pc.cloud_field(back, "rgb").view(np.uint32),
                                  PALETTE_PACKED_RGB.view(np.uint32)[labels])


def test_rclpy_organised_input_cloud():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    # An Ouster-like organised cloud: x y z (f4), pad, intensity f4, ring u16, row padding.
    h, w = 4, 6
    dt = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"],
                   "offsets": [0, 4, 8, 16, 20], "itemsize": 32})
    rec = np.zeros((h, w), dt)
    rng = np.random.default_rng(4)
    for name in ("x", "y", "z", "intensity"):
        rec[name] = rng.normal(size=(h, w))
    rec["ring"] = np.arange(h)[:, None]
    fields = [sensor_msgs.PointField(name=n, offset=int(dt.fields[n][1]), datatype=d, count=1)
              for n, d in (("x", 7), ("y", 7), ("z", 7), ("intensity", 7), ("ring", 4))]
    raw = make_msg(rec, fields, 32, h, w, row_pad=16)
    msg = sensor_msgs.PointCloud2(height=h, width=w, fields=fields, is_bigendian=False, point_step=32,
                                  row_step=raw.row_step, is_dense=True)
    msg.data = raw.data
    out = pc.cloud_to_xyzi(msg)
    want = np.stack([rec[n].reshape(-1) for n in ("x", "y", "z", "intensity")], axis=1)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(pc.cloud_field(msg, "ring"), np.repeat(np.arange(h), w))
