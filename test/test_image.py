"""Image / CameraInfo <-> numpy and CameraView: encodings, step padding, refusals, undistortion.

Raw camera encodings (Bayer, YUV, 16-bit) are in `test_image_encodings.py`, CompressedImage in
`test_image_compressed.py`, rectified calibrations in `test_image_rectified.py`.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from xkd_core.data.frame import CameraView
from xkd_ros import image as im
from xkd_ros.stamp import rosbags_header

TS = get_typestore(Stores.ROS2_HUMBLE)
K = np.array([[50.0, 0.0, 31.5], [0.0, 48.0, 23.5], [0.0, 0.0, 1.0]])
HW = (48, 64)


def rgb_image(seed: int = 0, hw: tuple[int, int] = (5, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, junk: int = 0xCD) -> SimpleNamespace:
    """A duck-typed Image with `pad` junk bytes at the end of every row."""
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1)
    data = np.full((h, row.shape[1] + pad), junk, dtype=np.uint8)
    data[:, : row.shape[1]] = row
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0, step=row.shape[1] + pad,
                           data=data.tobytes())


@pytest.mark.parametrize("pad", [0, 3])
def test_decode_every_encoding_with_step_padding(pad):
    rgb = rgb_image(1)
    bgr = rgb[..., ::-1]
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    gray = rgb[..., 0]
    cases = {
        "rgb8": (rgb, rgb),
        "bgr8": (bgr, rgb),
        "rgba8": (np.concatenate([rgb, alpha], axis=2), rgb),
        "bgra8": (np.concatenate([bgr, alpha], axis=2), rgb),
        "mono8": (gray, np.repeat(gray[..., None], 3, axis=2)),
    }
    for encoding, (pixels, want) in cases.items():
        got = im.image_to_rgb(raw_image(np.ascontiguousarray(pixels), encoding, pad=pad))
        assert got.dtype == np.uint8 and got.shape == (5, 7, 3) and got.flags.c_contiguous, encoding
        np.testing.assert_array_equal(got, want, err_msg=encoding)


def test_unpadded_rgb8_is_a_zero_copy_view():
    rgb = rgb_image(2)
    msg = raw_image(rgb, "rgb8")
    msg.data = bytearray(msg.data)
    got = im.image_to_rgb(msg)
    msg.data[0] = 255 - msg.data[0]
    assert got[0, 0, 0] == msg.data[0]


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
def test_rosbags_image_round_trip_through_cdr(encoding):
    rgb = rgb_image(3, hw=(6, 9))
    msg = im.to_rosbags_image(rosbags_header(5, "camera_2", TS), rgb, TS, encoding=encoding, step=None)
    back = TS.deserialize_cdr(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    assert back.encoding == encoding and (back.height, back.width) == (6, 9)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    want = rgb if encoding != "mono8" else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    np.testing.assert_array_equal(im.image_to_rgb(back), want)


def test_builders_pad_rows_to_step():
    rgb = rgb_image(4)
    msg = im.to_rosbags_image(rosbags_header(5, "c", TS), rgb, TS, encoding="bgr8", step=32)
    assert msg.step == 32 and len(msg.data) == 32 * 5
    np.testing.assert_array_equal(im.image_to_rgb(msg), rgb)
    with pytest.raises(ValueError, match="step 20"):
        im.to_rosbags_image(rosbags_header(5, "c", TS), rgb, TS, step=20)


def test_rclpy_image_round_trip_through_cdr():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    from xkd_ros.stamp import rclpy_header

    rgb = rgb_image(5, hw=(4, 6))
    msg = im.to_rclpy_image(rclpy_header(9, "camera_2"), rgb, encoding="bgra8", step=30)
    back = serialization.deserialize_message(serialization.serialize_message(msg), sensor_msgs.Image)
    assert (back.encoding, back.step) == ("bgra8", 30)
    np.testing.assert_array_equal(im.image_to_rgb(back), rgb)


@pytest.mark.parametrize(
    ("msg", "reason", "words"),
    [
        (SimpleNamespace(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "unsupported_encoding",
         "16UC1"),
        (SimpleNamespace(height=2, width=2, encoding="nv21", step=2, data=bytes(4)),
         "unsupported_encoding", "nv21"),
        (SimpleNamespace(height=2, width=2, encoding="8UC3", step=6, data=bytes(12)),
         "unsupported_encoding", "8UC3"),
        (SimpleNamespace(height=2, width=2, encoding="rgb8", step=5, data=bytes(10)), "bad_step", "step 5"),
        (SimpleNamespace(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), "bad_data_length",
         "11 bytes"),
        (SimpleNamespace(height=2, width=2, encoding="mono8", step=2, data=bytes(5)), "bad_data_length",
         "5 bytes"),
        (SimpleNamespace(height=0, width=2, encoding="rgb8", step=6, data=b""), "empty_image", "0x2"),
    ],
)
def test_image_refusals(msg, reason, words):
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(msg)
    assert err.value.reason == reason and words in str(err.value)


# ---------------------------------------------------------------------------------------------------
# CameraInfo


def info(**over) -> SimpleNamespace:
    base = dict(height=HW[0], width=HW[1], distortion_model="plumb_bob", d=[0.0] * 5,
                k=K.reshape(-1).tolist(), binning_x=0, binning_y=0,
                roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    base.update(over)
    return SimpleNamespace(**base)


def test_camera_info_gives_k():
    got = im.camera_info_K(info(), image_hw=HW)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, K)
    # an unknown model is fine when it does not distort
    np.testing.assert_array_equal(im.camera_info_K(info(distortion_model="", d=[])), K)
    full_roi = SimpleNamespace(x_offset=0, y_offset=0, width=HW[1], height=HW[0])
    np.testing.assert_array_equal(im.camera_info_K(info(roi=full_roi, binning_x=1, binning_y=1)), K)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        (dict(k=[0.0] * 9), "zero_k"),
        (dict(k=[-50.0, 0, 31.5, 0, 48, 23.5, 0, 0, 1]), "bad_focal"),
        (dict(k=[50.0, 0, 31.5, 0, 0, 23.5, 0, 0, 1]), "bad_focal"),
        (dict(k=[50.0, 0, 31.5, 0, 48, 23.5, 0, 0, 0]), "bad_k"),
        (dict(k=[50.0, 0, np.nan, 0, 48, 23.5, 0, 0, 1]), "bad_k"),
        (dict(k=[50.0, 0, 31.5]), "bad_k"),
        (dict(height=0, width=0), "size_mismatch"),
        (dict(distortion_model="fancy_lens", d=[0.1, 0.0]), "unsupported_distortion"),
        (dict(distortion_model="plumb_bob", d=[0.1, 0.0, 0.0]), "bad_distortion"),
        (dict(distortion_model="equidistant", d=[0.1, 0.0, 0.0, 0.0, 0.0]), "bad_distortion"),
        (dict(d=[np.inf, 0, 0, 0, 0]), "bad_distortion"),
        (dict(binning_x=2), "unsupported_binning"),
        (dict(roi=SimpleNamespace(x_offset=4, y_offset=0, width=10, height=10)), "unsupported_roi"),
    ],
)
def test_camera_info_refusals(over, reason):
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_K(info(**over))
    assert err.value.reason == reason


def test_camera_info_size_must_match_image():
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_K(info(), image_hw=(HW[0], HW[1] + 1))
    assert err.value.reason == "size_mismatch" and "64x48" in str(err.value)


def _coordinate_image(hw: tuple[int, int]) -> np.ndarray:
    """R = 4 * column, G = 4 * row (exactly linear, so bilinear resampling reproduces coordinates)."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]]
    return np.stack([4 * u, 4 * v, np.zeros_like(u)], axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    ("model", "D"),
    [
        ("plumb_bob", [-0.2, 0.05, 0.001, -0.001, 0.0]),
        ("rational_polynomial", [-0.2, 0.05, 0, 0, 0, 0.01, 0, 0]),
        ("equidistant", [0.05, -0.01, 0.0, 0.0]),
    ],
)
def test_distorted_image_is_undistorted_into_k(model, D):
    """Each undistorted pixel shows the distorted-image pixel its pinhole ray lands on."""
    distorted = _coordinate_image(HW)
    view = im.camera_view_from_msgs(raw_image(distorted, "rgb8"), info(distortion_model=model, d=D),
                                    np.eye(4), "image_2")
    np.testing.assert_array_equal(view.K, K)
    # where the pinhole ray of each undistorted pixel meets the distorted image
    v, u = np.mgrid[8 : HW[0] - 8 : 3, 8 : HW[1] - 8 : 3]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], axis=-1)
    rays = rays.reshape(-1, 1, 3)
    if model == "equidistant":
        src = cv2.fisheye.distortPoints(rays[:, :, :2].copy(), K, np.array(D))
    else:
        src, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, np.array(D))
    src = src.reshape(-1, 2)
    assert np.abs(src - np.stack([u, v], -1).reshape(-1, 2)).max() > 1.0  # the distortion is visible
    got = view.image[v.reshape(-1), u.reshape(-1)].astype(float)
    inside = (src[:, 0] < (255 / 4) - 1) & (src[:, 1] < HW[0] - 1)
    np.testing.assert_allclose(got[inside, 0], 4 * src[inside, 0], atol=2.5)
    np.testing.assert_allclose(got[inside, 1], 4 * src[inside, 1], atol=2.5)


def test_undistort_is_identity_without_distortion():
    rgb = rgb_image(6, hw=HW)
    model = im.camera_info_to_model(info())
    assert not model.distorted
    assert im.undistort(rgb, model) is rgb


def test_to_camera_view_and_from_messages():
    rgb = rgb_image(7, hw=HW)
    T = np.eye(4)
    T[:3, 3] = [0.1, -0.2, 0.3]
    view = im.to_camera_view(rgb, K, T, "image_2")
    assert isinstance(view, CameraView) and view.name == "image_2" and view.hw == HW
    np.testing.assert_array_equal(view.T, T)
    header = rosbags_header(5, "camera_2", TS)
    img_msg = im.to_rosbags_image(header, rgb, TS, encoding="bgr8")
    info_msg = im.to_rosbags_camera_info(header, K, HW, TS, P=np.hstack([K, [[1.0], [0.0], [0.0]]]))
    info_back = TS.deserialize_cdr(TS.serialize_cdr(info_msg, "sensor_msgs/msg/CameraInfo"),
                                   "sensor_msgs/msg/CameraInfo")
    assert info_back.p[3] == 1.0 and info_back.distortion_model == "plumb_bob"
    view = im.camera_view_from_msgs(img_msg, info_back, T, "image_2")
    np.testing.assert_array_equal(view.image, rgb)
    np.testing.assert_array_equal(view.K, K)
    with pytest.raises(im.CameraInfoError, match="64x48"):
        im.camera_view_from_msgs(im.to_rosbags_image(header, rgb[:, :-1], TS), info_back, T, "image_2")


def test_rclpy_camera_info():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    from xkd_ros.stamp import rclpy_header

    msg = im.to_rclpy_camera_info(rclpy_header(1, "camera_2"), K, HW)
    back = serialization.deserialize_message(serialization.serialize_message(msg), sensor_msgs.CameraInfo)
    np.testing.assert_array_equal(im.camera_info_K(back, image_hw=HW), K)
    np.testing.assert_array_equal(np.asarray(back.p).reshape(3, 4)[:, :3], K)
