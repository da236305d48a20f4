"""`sensor_msgs/CompressedImage`: JPEG / PNG bytes from `cv2.imencode`, with the `format` strings real
publishers write, decoded to RGB; refusals; and the encoder the bag converter uses."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from xkd_ros import image as im
from xkd_ros.bag_io import TYPESTORE
from xkd_ros.stamp import rosbags_header

CompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]


def smooth_rgb(hw: tuple[int, int] = (32, 48)) -> np.ndarray:
    """Red left, blue right, green rising downwards: smooth (JPEG keeps it) and not channel-symmetric."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]]
    r = 230 - 200 * u / (hw[1] - 1)
    g = 20 + 200 * v / (hw[0] - 1)
    b = 30 + 200 * u / (hw[1] - 1)
    return np.rint(np.stack([r, g, b], axis=2)).astype(np.uint8)


def encoded(pixels: np.ndarray, ext: str, *params: int) -> np.ndarray:
    ok, data = cv2.imencode(ext, pixels, list(params))
    assert ok
    return data.reshape(-1)


def compressed(fmt: str, data: np.ndarray | bytes) -> object:
    """A rosbags CompressedImage, serialised and read back as a recorder would store it."""
    msg = CompressedImage(header=rosbags_header(7, "camera", TYPESTORE), format=fmt,
                          data=np.frombuffer(bytes(data), dtype=np.uint8))
    raw = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
    return TYPESTORE.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")


@pytest.mark.parametrize("fmt",
                         ["jpeg", "JPEG", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", ""])
def test_jpeg_decodes_to_rgb(fmt):
    rgb = smooth_rgb()
    msg = compressed(fmt, encoded(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95))
    got = im.image_to_rgb(msg)
    assert got.shape == rgb.shape and got.dtype == np.uint8 and got.flags.c_contiguous
    assert np.abs(got.astype(int) - rgb).mean() < 2.0
    # channel order: the top-left corner is red, the top-right one blue
    assert got[2, 2, 0] > 200 and got[2, 2, 2] < 60 and got[2, -3, 2] > 200 and got[2, -3, 0] < 60


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", "rgb8; png compressed bgr8"])
def test_png_decodes_exactly(fmt):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    msg = compressed(fmt, encoded(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".png"))
    np.testing.assert_array_equal(im.compressed_to_rgb(msg), rgb)


def test_mono_jpeg():
    grey = cv2.cvtColor(smooth_rgb(), cv2.COLOR_RGB2GRAY)
    got = im.image_to_rgb(compressed("mono8; jpeg compressed mono8", encoded(grey, ".jpg")))
    assert got.shape == grey.shape + (3,)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    assert np.abs(got[..., 0].astype(int) - grey).mean() < 2.0


def test_png_with_alpha_and_16_bits():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    bgra = np.concatenate([rgb[..., ::-1], np.full((5, 6, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(im.image_to_rgb(compressed("bgra8; png compressed bgra8",
                                                             encoded(bgra, ".png"))), rgb)
    grey16 = rgb[..., 0].astype(np.uint16) * 257
    got = im.image_to_rgb(compressed("mono16; png compressed mono16", encoded(grey16, ".png")))
    np.testing.assert_array_equal(got, np.repeat(rgb[..., :1], 3, axis=2))
    full12 = encoded(np.full((2, 2), 4095, np.uint16), ".png")
    got12 = im.image_to_rgb(compressed("mono16; png compressed mono16", full12), significant_bits=12)
    assert (got12 == 255).all()


def test_rclpy_compressed_image():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    msg = sensor_msgs.CompressedImage(format="bgr8; png compressed bgr8")
    msg.data = encoded(rgb[..., ::-1].copy(), ".png").tobytes()
    raw = serialization.serialize_message(msg)
    back = serialization.deserialize_message(raw, sensor_msgs.CompressedImage)
    np.testing.assert_array_equal(im.image_to_rgb(back), rgb)


def jpeg_bytes() -> bytes:
    return encoded(smooth_rgb(), ".jpg").tobytes()


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("16UC1; compressedDepth png", jpeg_bytes(), "compressed_depth"),
        ("32FC1; compressedDepth", jpeg_bytes(), "compressed_depth"),
        ("16UC1; png compressed mono16", jpeg_bytes(), "unsupported_encoding"),
        ("h264", jpeg_bytes(), "unsupported_format"),
        ("rgb8; theora compressed", jpeg_bytes(), "unsupported_format"),
        ("jpeg", b"", "undecodable"),
        ("jpeg", b"not an image at all", "undecodable"),
        ("jpeg", b"\xff\xd8\xff" + bytes(200), "undecodable"),  # a JPEG start, then nothing of a JPEG
        ("jpeg", jpeg_bytes()[: len(jpeg_bytes()) // 2], "undecodable"),  # cut short
        ("png", encoded(smooth_rgb(), ".png").tobytes()[:60], "undecodable"),
        ("jpeg", encoded(smooth_rgb(), ".bmp").tobytes(), "undecodable"),  # decodable, but not JPEG/PNG
    ],
)
def test_compressed_refusals(fmt, data, reason):
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(compressed(fmt, data))
    assert err.value.reason == reason, str(err.value)


def test_compressed_codec_parsing():
    assert im.compressed_codec("rgb8; jpeg compressed bgr8") == "jpeg"
    assert im.compressed_codec("bgr8; png compressed bgr8") == "png"
    assert im.compressed_codec(" JPG ") == "jpeg"
    assert im.compressed_codec("") is None


# ---------------------------------------------------------------------------------------------------
# Encoder


def test_encode_jpeg_like_image_transport():
    rgb = smooth_rgb()
    data, fmt = im.encode_compressed(rgb, "jpeg", quality=95)
    assert fmt == "rgb8; jpeg compressed bgr8" and data.dtype == np.uint8 and data.ndim == 1
    assert data[:3].tobytes() == b"\xff\xd8\xff"
    # an independent decoder (OpenCV's BGR reader) sees the right colours
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert np.abs(bgr[..., ::-1].astype(int) - rgb).mean() < 2.0
    small, _ = im.encode_compressed(rgb, "jpeg", quality=20)
    assert small.size < data.size


def test_encode_png_is_lossless_and_rosbags_round_trips():
    rgb = np.random.default_rng(3).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    header = rosbags_header(5, "camera_2", TYPESTORE)
    msg = im.to_rosbags_compressed_image(header, rgb, TYPESTORE, codec="png")
    raw = TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
    back = TYPESTORE.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
    assert back.format == "rgb8; png compressed bgr8" and back.header.frame_id == "camera_2"
    np.testing.assert_array_equal(cv2.imdecode(back.data, cv2.IMREAD_UNCHANGED)[..., ::-1], rgb)
    np.testing.assert_array_equal(im.image_to_rgb(back), rgb)


def test_rclpy_encoder_round_trips():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    from xkd_ros.stamp import rclpy_header

    rgb = smooth_rgb((16, 24))
    msg = im.to_rclpy_compressed_image(rclpy_header(3, "camera_2"), rgb, codec="jpeg", quality=90)
    raw = serialization.serialize_message(msg)
    back = serialization.deserialize_message(raw, sensor_msgs.CompressedImage)
    assert back.format == "rgb8; jpeg compressed bgr8"
    assert np.abs(im.image_to_rgb(back).astype(int) - rgb).mean() < 3.0


@pytest.mark.parametrize(("kwargs", "words"), [(dict(codec="webp"), "codec"), (dict(quality=0), "quality"),
                                               (dict(codec="png", png_level=10), "level")])
def test_encoder_refuses_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        im.encode_compressed(smooth_rgb(), **kwargs)
    with pytest.raises(ValueError, match="RGB uint8"):
        im.encode_compressed(np.zeros((4, 4), np.uint8))


def test_camera_view_from_compressed_message():
    rgb = np.random.default_rng(4).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    K = np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]])
    info = SimpleNamespace(height=6, width=8, distortion_model="plumb_bob", d=[0.0] * 5, k=K.reshape(-1),
                           binning_x=0, binning_y=0, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0,
                                                                         height=0))
    img = im.to_rosbags_compressed_image(rosbags_header(1, "c", TYPESTORE), rgb, TYPESTORE, codec="png")
    view = im.camera_view_from_msgs(img, info, np.eye(4), "cam")
    np.testing.assert_array_equal(view.image, rgb)


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """The JPEG with an APP1 (Exif-style) segment inserted after SOI, as cameras write them."""
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


def test_declared_size_of_real_files():
    rgb = smooth_rgb((30, 44))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    progressive = encoded(bgr, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1).tobytes()
    cases = [encoded(bgr, ".jpg").tobytes(), progressive, encoded(bgr[..., 0].copy(), ".jpg").tobytes(),
             with_app1(progressive, b"Exif\x00\x00" + bytes(3000)),
             encoded(bgr, ".png").tobytes(), encoded(rgb[..., 0].astype(np.uint16) * 257, ".png").tobytes()]
    for data in cases:
        assert im.compressed_size(data) == (30, 44)
    got = im.image_to_rgb(compressed("jpeg", with_app1(progressive, b"Exif\x00\x00" + bytes(3000))))
    assert np.abs(got.astype(int) - rgb).mean() < 2.0
    assert im.compressed_size(b"GIF89a" + bytes(40)) is None


def declare(data: bytes, height: int, width: int) -> bytes:
    """The bytes with the header's image size overwritten (what a corrupt or hostile message can hold)."""
    buf = bytearray(data)
    if buf.startswith(b"\x89PNG"):
        buf[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        return bytes(buf)
    i = 2
    while buf[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(buf[i + 2 : i + 4], "big")
    buf[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(buf)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_huge_declared_size_is_refused_before_decoding(ext):
    data = encoded(smooth_rgb(), ext).tobytes()
    big = (65000, 65000) if ext == ".jpg" else (100_000, 100_000)
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(compressed("jpeg", declare(data, *big)))
    assert err.value.reason == "too_large" and f"{big[1]}x{big[0]}" in str(err.value)
    # the limit is on the declared pixel count, both sides of it
    assert im.compressed_to_rgb(compressed("", data), max_pixels=32 * 48).shape == (32, 48, 3)
    with pytest.raises(im.ImageFormatError) as err:
        im.compressed_to_rgb(compressed("", data), max_pixels=32 * 48 - 1)
    assert err.value.reason == "too_large"
