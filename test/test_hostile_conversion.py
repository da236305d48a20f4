"""Hostile input to the message conversions (hypothesis): whatever a publisher puts in a PointCloud2,
Image or CameraInfo, the decoders either return a well-formed result or raise their documented error
type (`CloudFormatError`, `ImageFormatError`, `CameraInfoError`) -- never another exception, never
a huge allocation -- and valid messages still round-trip exactly.

`test_pointcloud.py` / `test_image.py` cover valid layouts and one example per refusal; this file
throws mutated and random messages at the same functions, as a broken driver or a fuzzer would.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from xkd_ros import image as im
from xkd_ros import pointcloud as pc

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ["x", "y", "z", "intensity", "ring", "t", "rgb", ""]
ROW_LIMIT = 1 << 20  # the largest data a fuzzed message carries (bytes)


def field(name: str, offset: int, datatype: int, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def cloud(fields, height, width, point_step, row_step, data, big=False) -> SimpleNamespace:
    return SimpleNamespace(fields=fields, height=height, width=width, point_step=point_step,
                           row_step=row_step, data=data, is_bigendian=big)


def valid_xyzi_cloud(points: np.ndarray, height: int = 1) -> SimpleNamespace:
    """The plain x, y, z, intensity float32 layout (point_step 16) of `points`."""
    fields = [field(n, 4 * i, pc.FLOAT32) for i, n in enumerate(("x", "y", "z", "intensity"))]
    n = len(points)
    return cloud(fields, height, n // height, 16, 16 * (n // height), points.astype("<f4").tobytes())


def decode_or_refuse(msg) -> np.ndarray | None:
    """cloud_to_xyzi's result (checked well-formed), or None when it refused with CloudFormatError."""
    try:
        out = pc.cloud_to_xyzi(msg)
    except pc.CloudFormatError as err:
        event(f"refused: {err.reason}")
        assert err.reason in {"missing_field", "bad_field_type", "bad_field", "bad_point_step",
                              "bad_row_step", "bad_data_length", "bad_size"}, err.reason
        assert str(err)  # a message for the log line
        return None
    event("decoded")
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 4
    assert out.shape[0] == int(msg.height) * int(msg.width)
    return out


# ---------------------------------------------------------------------------------------------------
# PointCloud2: random garbage


@st.composite
def random_fields(draw):
    """Fields biased towards plausible clouds (x, y, z present, small offsets), so that every check
    of the decoder is reached, not only the first one."""
    small = st.integers(-1, 40)
    kinds = st.sampled_from([pc.FLOAT32] * 40 + [pc.FLOAT64] * 10 + [-1, 0, pc.UINT8, pc.INT32, 9, 42])
    counts = st.sampled_from([1] * 40 + [0, 2, -1])
    fields = [field(name, draw(small), draw(kinds), draw(counts)) for name in ("x", "y", "z")
              if draw(st.sampled_from([True] * 9 + [False]))]
    for _ in range(draw(st.integers(0, 3))):
        fields.append(field(draw(st.sampled_from(NAMES[3:] * 4 + NAMES[:3])),
                            draw(small | st.integers(-(2**40), 2**40)), draw(kinds), draw(counts)))
    return draw(st.permutations(fields))


@st.composite
def random_clouds(draw):
    """Any header numbers; the data length usually agrees with them (else the size check is all we test)."""
    fields = draw(random_fields())
    height = draw(st.integers(-1, 6) | st.integers(0, 2**32))
    width = draw(st.integers(-1, 24) | st.integers(0, 2**32))
    point_step = draw(st.integers(-4, 48) | st.integers(0, 2**40))
    row_step = draw(st.sampled_from(["exact", "padded", "random"]))
    row_step = {"exact": width * point_step, "padded": width * point_step + draw(st.integers(1, 7)),
                "random": draw(st.integers(-4, 2000) | st.integers(0, 2**40))}[row_step]
    nbytes = row_step * height
    if draw(st.booleans()) or not 0 <= nbytes <= ROW_LIMIT:
        nbytes = draw(st.integers(0, 4096))
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    return cloud(fields, height, width, point_step, row_step, data, draw(st.booleans()))


@FUZZ
@given(msg=random_clouds())
# found by this test: a point_step beyond a C int made numpy raise its own ValueError
@example(msg=cloud([field(n, 0, pc.FLOAT32) for n in "xyz"], 0, 0, 2**31, 0, b""))
def test_random_cloud_is_decoded_or_refused(msg):
    out = decode_or_refuse(msg)
    if out is not None:  # accepted: the layout really was consistent
        assert msg.point_step > 0 and msg.row_step >= msg.width * msg.point_step
        assert len(msg.data) == msg.row_step * msg.height


# ---------------------------------------------------------------------------------------------------
# PointCloud2: one valid message, one thing broken


MUTATIONS = ["point_step", "row_step", "data_short", "data_long", "height", "width", "drop_field",
             "retype_field", "move_field", "count_field", "duplicate_field", "flip_endianness"]


@FUZZ
@given(n=st.integers(1, 40), height=st.sampled_from([1, 2, 4]), mutation=st.sampled_from(MUTATIONS),
       amount=st.integers(1, 64), which=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_mutated_cloud_is_decoded_or_refused(n, height, mutation, amount, which, seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 30, (n * height, 4)).astype(np.float32)
    msg = valid_xyzi_cloud(points, height)
    fields = msg.fields
    if mutation == "point_step":
        msg.point_step = 16 + rng.choice([-1, 1]) * amount
    elif mutation == "row_step":
        msg.row_step = msg.row_step + rng.choice([-1, 1]) * amount
    elif mutation == "data_short":
        msg.data = msg.data[: max(0, len(msg.data) - amount)]
    elif mutation == "data_long":
        msg.data = msg.data + bytes(amount)
    elif mutation == "height":
        msg.height = height + amount
    elif mutation == "width":
        msg.width = msg.width + amount
    elif mutation == "drop_field":
        del fields[which]
    elif mutation == "retype_field":
        fields[which].datatype = int(rng.integers(-1, 12))
    elif mutation == "move_field":
        fields[which].offset = int(fields[which].offset + rng.choice([-1, 1]) * amount)
    elif mutation == "count_field":
        fields[which].count = int(rng.integers(-1, 6))
    elif mutation == "duplicate_field":
        fields.append(field(fields[which].name, fields[which].offset, pc.FLOAT32))
    elif mutation == "flip_endianness":
        msg.is_bigendian = True

    out = decode_or_refuse(msg)
    # Mutations that keep a decodable layout must still decode to what the bytes say.
    if mutation == "flip_endianness":
        # the same bytes, read as big-endian floats
        want = np.frombuffer(msg.data, ">u4").astype(np.uint32).reshape(-1, 4)
        np.testing.assert_array_equal(out.view(np.uint32), want)
    elif mutation == "drop_field" and which == 3:
        np.testing.assert_array_equal(out[:, :3], points[:, :3])
        assert (out[:, 3] == 0).all()  # intensity is optional
    elif mutation in ("data_short", "data_long", "height", "width"):
        assert out is None  # the size no longer adds up: always refused
    elif mutation == "duplicate_field":
        assert out is None


@FUZZ
@given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=4, max_size=400),
       height=st.sampled_from([1, 2]))
def test_any_float32_values_round_trip_bit_exact(values, height):
    """NaN, inf, -0.0, subnormals: decoding never alters a coordinate."""
    n = (len(values) // (4 * height)) * 4 * height
    assume(n > 0)
    points = np.asarray(values[:n], dtype=np.float32).reshape(-1, 4)
    out = pc.cloud_to_xyzi(valid_xyzi_cloud(points, height))
    np.testing.assert_array_equal(out.view(np.uint32), points.view(np.uint32))


@FUZZ
@given(fields=random_fields(), name=st.sampled_from(NAMES), point_step=st.integers(-4, 64),
       width=st.integers(0, 20), extra=st.integers(-3, 3))
def test_cloud_field_is_read_or_refused(fields, name, point_step, width, extra):
    msg = cloud(fields, 1, width, point_step, max(point_step, 0) * width,
                bytes(max(0, max(point_step, 0) * width + extra)))
    try:
        col = pc.cloud_field(msg, name)
    except pc.CloudFormatError as err:
        event(f"refused: {err.reason}")
        return
    event("read")
    assert col.shape[0] == width


# ---------------------------------------------------------------------------------------------------
# Image


@FUZZ
@given(encoding=st.sampled_from([*im.ENCODINGS] * 3 + ["16UC1", "yuv422", "yuyv", "bayer_rggb8", "mono16",
                                                      "bayer_grbg16", "", "RGB8"]),
       height=st.integers(-1, 12) | st.integers(0, 2**32), width=st.integers(-1, 12) | st.integers(0, 2**32),
       step=st.sampled_from(["exact", "exact", "padded", "short"]) | st.integers(-4, 64)
       | st.integers(0, 2**40),
       nbytes=st.sampled_from(["exact", "exact", "short", "long"]) | st.integers(0, 2048))
def test_random_image_is_decoded_or_refused(encoding, height, width, step, nbytes):
    row = width * im.PIXEL_BYTES.get(encoding, 3)
    if isinstance(step, str):
        step = {"exact": row, "padded": row + 3, "short": row - 1}[step]
    if isinstance(nbytes, str):
        nbytes = step * height + {"exact": 0, "short": -1, "long": 1}[nbytes]
    nbytes = nbytes if 0 <= nbytes <= ROW_LIMIT else 17
    msg = SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=0,
                          data=bytes(nbytes))
    try:
        rgb = im.image_to_rgb(msg)
    except im.ImageFormatError as err:
        event(f"refused: {err.reason}")
        assert err.reason in {"unsupported_encoding", "bad_step", "bad_data_length", "empty_image",
                              "odd_width"}
        return
    event("decoded")
    assert encoding in im.PIXEL_BYTES and rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert step >= width * im.PIXEL_BYTES[encoding] and nbytes == step * height


@FUZZ
@given(encoding=st.sampled_from(sorted(im.ENCODINGS)), height=st.integers(1, 20), width=st.integers(1, 20),
       pad=st.integers(0, 9), seed=st.integers(0, 2**31))
def test_valid_image_round_trips(encoding, height, width, pad, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels = im.encode_rgb(rgb, encoding)
    row = width * im.ENCODINGS[encoding]
    data = np.full((height, row + pad), 0xEE, np.uint8)
    data[:, :row] = pixels.reshape(height, row)
    msg = SimpleNamespace(encoding=encoding, height=height, width=width, step=row + pad, is_bigendian=0,
                          data=data.tobytes())
    got = im.image_to_rgb(msg)
    want = rgb if encoding != "mono8" else np.repeat(pixels[..., None], 3, axis=2)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------
# CameraInfo (and undistortion of the image it describes)

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -1.0, 1e300, 5e-324])


@st.composite
def camera_infos(draw):
    """A plausible calibration with up to two things broken (any of them, any way)."""
    broken = draw(st.sets(st.sampled_from(["fx", "fy", "skew", "bottom_row", "k_random", "size", "model",
                                           "d_count", "d_values", "roi", "binning"]), max_size=2))
    k = [draw(st.floats(1, 400)), 0.0, draw(st.floats(-10, 40)), 0.0, draw(st.floats(1, 400)),
         draw(st.floats(-10, 40)), 0.0, 0.0, 1.0]
    for name, index in (("fx", 0), ("fy", 4), ("skew", 1), ("bottom_row", 6 + draw(st.integers(0, 2)))):
        if name in broken:
            k[index] = draw(ANY_FLOAT)
    if "k_random" in broken:
        k = draw(st.lists(ANY_FLOAT, min_size=0, max_size=12))
    model = draw(st.sampled_from(sorted(im.DISTORTION_MODELS)))
    if "model" in broken:
        model = draw(st.sampled_from(["", "fancy_lens", "PLUMB_BOB", "none"]))
    n_d = draw(st.sampled_from(im.DISTORTION_MODELS.get(model, (5,))))
    if "d_count" in broken:
        n_d = draw(st.integers(0, 15))
    d = draw(st.lists(st.floats(-0.3, 0.3), min_size=n_d, max_size=n_d))
    if "d_values" in broken and d:
        d[draw(st.integers(0, len(d) - 1))] = draw(ANY_FLOAT | st.floats(-1e6, 1e6))
    roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0)
    if "roi" in broken:
        roi = SimpleNamespace(x_offset=draw(st.integers(0, 4)), y_offset=draw(st.integers(0, 4)),
                              width=draw(st.integers(0, 32)), height=draw(st.integers(0, 24)))
    binning = draw(st.sampled_from([(0, 0), (1, 1), (0, 2), (2, 1)])) if "binning" in broken else (0, 0)
    hw = (draw(st.integers(1, 24)), draw(st.integers(1, 32)))
    if "size" in broken:
        hw = (draw(st.integers(-1, 24)), draw(st.integers(-1, 32)))
    return SimpleNamespace(height=hw[0], width=hw[1], k=k, d=d, distortion_model=model, binning_x=binning[0],
                           binning_y=binning[1], roi=roi)


@FUZZ
@given(info=camera_infos(), other_hw=st.none() | st.tuples(st.integers(1, 24), st.integers(1, 32)))
def test_camera_info_gives_a_model_or_refuses(info, other_hw):
    reasons = {"zero_k", "bad_k", "bad_focal", "size_mismatch", "bad_distortion", "unsupported_distortion",
               "unsupported_binning", "unsupported_roi"}
    try:
        model = im.camera_info_to_model(info)
    except im.CameraInfoError as err:
        event(f"refused: {err.reason}")
        assert err.reason in reasons
        return
    event(f"accepted ({'distorted' if model.distorted else 'pinhole'})")
    assert model.K.shape == (3, 3) and np.isfinite(model.K).all() and model.K[0, 0] > 0
    assert model.hw == (info.height, info.width)
    # The accepted model undistorts an image of its size (or refuses another size), whatever D says.
    image_hw = model.hw if other_hw is None else other_hw
    image = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    try:
        out = im.undistort(image, model)
    except im.CameraInfoError as err:
        assert err.reason == "size_mismatch" and image_hw != model.hw
        return
    assert out.shape == image.shape and out.dtype == np.uint8
