"""Hostile input to the CompressedImage decoder and the rectified CameraInfo model (hypothesis): a result
of the documented form or the documented error with a documented reason, never another exception.

`test_hostile_conversion.py` does the same for raw Images and raw-mode CameraInfo.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xkd_ros import image as im

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
VALID = {
    "jpeg": cv2.imencode(".jpg", _RGB)[1].tobytes(),
    "progressive": cv2.imencode(".jpg", _RGB, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
    "png": cv2.imencode(".png", _RGB)[1].tobytes(),
    "png16": cv2.imencode(".png", _RGB[..., 0].astype(np.uint16) * 300)[1].tobytes(),
}
GOOD_FORMATS = st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8"])
BAD_FORMATS = st.sampled_from(["16UC1; compressedDepth", "16UC1; png compressed mono16", "h264", "x; y; z"])
IMAGE_REASONS = {"unsupported_format", "compressed_depth", "undecodable", "too_large", "unsupported_encoding"}


@st.composite
def mutated(draw) -> bytes:
    """A valid file, then up to three byte flips, cuts or insertions anywhere (headers included)."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "head"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "head" and len(data) > 30:  # the header region, where the size lives
            data[draw(st.integers(2, 30))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=st.integers(0, 4).flatmap(lambda i: st.binary(max_size=64) if i == 0 else mutated()),
       fmt=st.integers(0, 9).flatmap(lambda i: GOOD_FORMATS if i < 7 else BAD_FORMATS if i < 9
                                     else st.text()))
def test_compressed_is_decoded_or_refused(data, fmt):
    msg = SimpleNamespace(format=fmt, data=data)
    try:
        rgb = im.image_to_rgb(msg)
    except im.ImageFormatError as err:
        event(f"refused: {err.reason}")
        assert err.reason in IMAGE_REASONS, err.reason
        return
    event("decoded")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] * rgb.shape[1] <= im.MAX_PIXELS


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -1.0, 1e300, 5e-324])
K = np.array([[300.0, 0.0, 160.0], [0.0, 290.0, 120.0], [0.0, 0.0, 1.0]])


@st.composite
def rectified_infos(draw):
    """A plausible rectified calibration (P near K, R a rotation) with up to two entries broken."""
    scale = draw(st.sampled_from([0.6, 0.9, 1.0, 1.3, 1.9]) | st.floats(0.4, 2.5))
    P = np.hstack([K * [[scale], [scale], [1.0]], [[draw(st.floats(-200, 200))], [0.0], [0.0]]])
    P[:2, 2] = [draw(st.floats(-5, 325)), draw(st.floats(-5, 245))]
    R = cv2.Rodrigues(np.array([draw(st.floats(-0.2, 0.2)) for _ in range(3)]))[0]
    if draw(st.booleans()):
        R = np.zeros((3, 3))
    p, r = P.reshape(-1).tolist(), R.reshape(-1).tolist()
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        target = draw(st.sampled_from(["p", "r"]))
        values = p if target == "p" else r
        values[draw(st.integers(0, len(values) - 1))] = draw(ANY_FLOAT)
    if draw(st.integers(0, 9)) == 0:
        p = draw(st.lists(ANY_FLOAT, max_size=14))
    if draw(st.integers(0, 9)) == 0:
        r = draw(st.lists(ANY_FLOAT, max_size=10))
    return SimpleNamespace(height=240, width=320, distortion_model="plumb_bob", d=[0.1, -0.05, 0.0, 0.0, 0.0],
                           k=K.reshape(-1).tolist(), p=p, r=r, binning_x=0, binning_y=0,
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))


@FUZZ
@given(info=rectified_infos())
def test_rectified_model_or_refusal(info):
    try:
        model = im.camera_info_to_model(info, rectified=True)
    except im.CameraInfoError as err:
        event(f"refused: {err.reason}")
        assert err.reason in {"bad_p", "zero_p", "p_k_mismatch", "p_center_outside", "bad_r"}, err.reason
        return
    event("accepted")
    assert model.rectified and not model.distorted
    ratio = np.diag(model.K)[:2] / np.diag(K)[:2]
    assert np.isfinite(model.K).all() and ((ratio > 0.5) & (ratio < 2.0)).all()
    assert -0.5 <= model.K[0, 2] <= 319.5 and -0.5 <= model.K[1, 2] <= 239.5
    assert np.abs(model.R.T @ model.R - np.eye(3)).max() <= im.R_TOLERANCE
    for extrinsic_to in im.EXTRINSIC_FRAMES:
        assert np.isfinite(model.view_T(np.eye(4), extrinsic_to)).all()
