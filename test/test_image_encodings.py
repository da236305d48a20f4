"""Raw camera encodings decoded to RGB: Bayer mosaics, YUV 4:2:2, 16-bit (either byte order).

The inputs are built the way cameras produce them: a mosaic keeps one colour sample per pixel in the
sensor's 2x2 pattern, YUV 4:2:2 shares one chroma pair between two pixels (BT.601, limited range),
16-bit grey is the 8-bit value expanded to 16 bits; rows may be padded.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from xkd_ros import image as im

#: Block colours: every primary and mixture, so a swapped channel or pattern shows.
COLOURS = np.array([[200, 30, 10], [20, 190, 40], [15, 25, 210], [220, 210, 30], [30, 200, 220],
                    [210, 40, 190], [128, 128, 128], [250, 120, 60]], dtype=np.uint8)
BLOCK = 8


def blocks_image(rows: int = 4, cols: int = 6) -> np.ndarray:
    """RGB image of BLOCK x BLOCK constant-colour blocks, cycling through COLOURS."""
    index = (np.arange(rows)[:, None] * cols + np.arange(cols)[None, :]) % len(COLOURS)
    return np.repeat(np.repeat(COLOURS[index], BLOCK, axis=0), BLOCK, axis=1)


def block_interiors(hw: tuple[int, int]) -> np.ndarray:
    """Mask of pixels at least 2 pixels inside their block (and the image): demosaicing is exact there."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]]
    return (v % BLOCK >= 2) & (v % BLOCK < BLOCK - 2) & (u % BLOCK >= 2) & (u % BLOCK < BLOCK - 2)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The sensor's view of `rgb`: pattern 'rggb' means row 0 = R G R G..., row 1 = G B G B..."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for i, letter in enumerate(pattern):
        dv, du = divmod(i, 2)
        out[dv::2, du::2] = rgb[dv::2, du::2, channel[letter]]
    return out


def message(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> SimpleNamespace:
    """A duck-typed Image of `pixels` (uint8 or uint16, any channels), rows padded with `pad` junk bytes."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if big_endian else "<u2")
    row = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    data = np.full((h, row.shape[1] + pad), 0xA5, dtype=np.uint8)
    data[:, : row.shape[1]] = row
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian),
                           step=row.shape[1] + pad, data=data.tobytes())


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("pad", [0, 5])
def test_bayer_pattern_reproduces_the_colours(pattern, pad):
    rgb = blocks_image()
    got = im.image_to_rgb(message(mosaic(rgb, pattern), f"bayer_{pattern}8", pad=pad))
    assert got.shape == rgb.shape and got.dtype == np.uint8 and got.flags.c_contiguous
    inside = block_interiors(rgb.shape[:2])
    np.testing.assert_array_equal(got[inside], rgb[inside], err_msg=pattern)


def test_bayer_patterns_are_not_interchangeable():
    """Reading a mosaic with another pattern's name gives other colours (the test above can fail)."""
    rgb = blocks_image()
    inside = block_interiors(rgb.shape[:2])
    raw = mosaic(rgb, "rggb")
    for other in ("bggr", "gbrg", "grbg"):
        got = im.image_to_rgb(message(raw, f"bayer_{other}8"))
        assert np.abs(got[inside].astype(int) - rgb[inside]).max() > 100, other


@pytest.mark.parametrize("pattern", ["rggb", "gbrg"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_bayer16_in_either_byte_order(pattern, big_endian):
    rgb = blocks_image()
    raw16 = mosaic(rgb, pattern).astype(np.uint16) * 257  # 8 -> 16 bit expansion
    got = im.image_to_rgb(message(raw16, f"bayer_{pattern}16", pad=3, big_endian=big_endian))
    inside = block_interiors(rgb.shape[:2])
    np.testing.assert_array_equal(got[inside], rgb[inside])


def bt601_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 2) bytes of YUV 4:2:2 from `rgb` (pixel pairs must share a colour): BT.601 limited range."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    y, u, v = (np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v))
    out = np.empty(rgb.shape[:2] + (2,), dtype=np.uint8)
    luma, chroma = (1, 0) if order == "uyvy" else (0, 1)
    out[..., luma] = y
    out[:, 0::2, chroma] = u[:, 0::2]
    out[:, 1::2, chroma] = v[:, 0::2]
    return out


def pair_image(hw: tuple[int, int] = (6, 10), seed: int = 0) -> np.ndarray:
    """Random colours, each shared by a horizontal pixel pair (so 4:2:2 chroma loses nothing)."""
    rng = np.random.default_rng(seed)
    half = rng.integers(0, 256, (hw[0], hw[1] // 2, 3), dtype=np.uint8)
    return np.repeat(half, 2, axis=1)


@pytest.mark.parametrize(("encoding", "order"),
                         [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"), ("yuv422_yuy2", "yuyv")])
@pytest.mark.parametrize("pad", [0, 6])
def test_yuv422_from_bt601(encoding, order, pad):
    rgb = pair_image()
    got = im.image_to_rgb(message(bt601_yuv422(rgb, order), encoding, pad=pad))
    assert got.shape == rgb.shape and got.dtype == np.uint8
    # 8-bit limited-range luma and chroma quantise each channel by about one step
    np.testing.assert_allclose(got.astype(int), rgb.astype(int), atol=3, err_msg=encoding)


def test_yuv422_byte_order_matters():
    """ROS `yuv422` is UYVY: the same bytes read as YUYV give other colours."""
    rgb = pair_image(seed=1)
    uyvy = bt601_yuv422(rgb, "uyvy")
    wrong = im.image_to_rgb(message(uyvy, "yuyv"))
    assert np.abs(wrong.astype(int) - rgb).mean() > 20


@pytest.mark.parametrize(("encoding", "code"),
                         [("uyvy", "COLOR_RGB2YUV_UYVY"), ("yuyv", "COLOR_RGB2YUV_YUYV")])
def test_yuv422_from_opencv_encoder(encoding, code):
    if not hasattr(cv2, code):
        pytest.skip(f"this OpenCV has no {code}")
    rgb = pair_image(seed=2)
    packed = cv2.cvtColor(rgb, getattr(cv2, code))
    got = im.image_to_rgb(message(packed, encoding))
    np.testing.assert_allclose(got.astype(int), rgb.astype(int), atol=3)


def test_yuv422_odd_width_is_refused():
    msg = SimpleNamespace(height=2, width=3, encoding="yuv422", is_bigendian=0, step=6, data=bytes(12))
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(msg)
    assert err.value.reason == "odd_width" and "width 3" in str(err.value)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_mono16_scales_to_8_bits(big_endian, pad):
    grey8 = np.random.default_rng(3).integers(0, 256, (5, 7), dtype=np.uint8)
    grey8[0, :3] = [0, 128, 255]
    got = im.image_to_rgb(message(grey8.astype(np.uint16) * 257, "mono16", pad=pad, big_endian=big_endian))
    np.testing.assert_array_equal(got, np.repeat(grey8[..., None], 3, axis=2))


def test_mono16_rounds_and_byte_order_is_read():
    raw = np.array([[0, 128, 129, 385, 386, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(im.image_to_rgb(message(raw, "mono16"))[0, :, 0], [0, 0, 1, 1, 2, 255])
    # the same bytes with the flag flipped read as other numbers: 0x0100 = 256 -> 1, 0x0001 = 1 -> 0
    little = message(np.array([[256, 1]], dtype=np.uint16), "mono16")
    big = SimpleNamespace(**{**vars(little), "is_bigendian": 1})
    assert im.image_to_rgb(little)[0, :, 0].tolist() == [1, 0]
    assert im.image_to_rgb(big)[0, :, 0].tolist() == [0, 1]


def test_mono16_with_12_significant_bits():
    raw = np.array([[0, 2048, 4095, 4096, 65535]], dtype=np.uint16)
    got = im.image_to_rgb(message(raw, "mono16"), significant_bits=12)[0, :, 0]
    np.testing.assert_array_equal(got, [0, 128, 255, 255, 255])  # above 12 bits saturates
    with pytest.raises(ValueError, match="significant_bits"):
        im.image_to_rgb(message(raw, "mono16"), significant_bits=0)


@pytest.mark.parametrize(("encoding", "order"), [("rgb16", [0, 1, 2]), ("bgr16", [2, 1, 0]),
                                                 ("rgba16", [0, 1, 2, None]), ("bgra16", [2, 1, 0, None])])
def test_colour16(encoding, order):
    rgb = np.random.default_rng(4).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    planes = [rgb[..., c] if c is not None else np.full(rgb.shape[:2], 255, np.uint8) for c in order]
    pixels = np.stack(planes, axis=2).astype(np.uint16) * 257
    np.testing.assert_array_equal(im.image_to_rgb(message(pixels, encoding, pad=2, big_endian=True)), rgb)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_encodings_are_refused(encoding):
    msg = SimpleNamespace(height=2, width=2, encoding=encoding, is_bigendian=0, step=8, data=bytes(16))
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(msg)
    assert err.value.reason == "unsupported_encoding" and "depth" in str(err.value)


@pytest.mark.parametrize(("encoding", "step"), [("mono16", 13), ("bayer_rggb16", 13), ("uyvy", 11)])
def test_short_step_counts_bytes_per_pixel(encoding, step):
    """A step that fits the pixels as bytes but not as 2-byte samples is refused."""
    msg = SimpleNamespace(height=2, width=6 if encoding == "uyvy" else 7, encoding=encoding, is_bigendian=0,
                          step=step, data=bytes(2 * step))
    with pytest.raises(im.ImageFormatError) as err:
        im.image_to_rgb(msg)
    assert err.value.reason == "bad_step"


def test_pixel_bytes_lists_every_decoded_encoding():
    for encoding, size in im.PIXEL_BYTES.items():
        h, w = 2, 4
        msg = SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=0, step=w * size,
                              data=bytes(h * w * size))
        assert im.image_to_rgb(msg).shape == (h, w, 3), encoding
