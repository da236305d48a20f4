"""Rectified camera images (`image_rect`): the CameraInfo's P and R give the model, the image is not
undistorted again, and LiDAR points land where OpenCV's rectification (what image_proc runs) puts them.

Calibrations are made as calibrators make them: a monocular camera's P from
`cv2.getOptimalNewCameraMatrix` (R = I, D non-zero), a stereo pair's R1, R2, P1, P2 from
`cv2.stereoRectify` (right camera: P[0, 3] = -fx' * B). Expected pixels come from OpenCV: project
into the raw image with the lens model, then `cv2.undistortPointsIter` with the rectification.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from xkd_core.geometry.projection import project
from xkd_ros import image as im
from xkd_ros.bag_io import TYPESTORE
from xkd_ros.stamp import rosbags_header

HW = (240, 320)
K1 = np.array([[262.0, 0.0, 158.3], [0.0, 263.5, 121.2], [0.0, 0.0, 1.0]])
D1 = np.array([-0.28, 0.09, 0.0008, -0.0005, -0.012])
K2 = np.array([[259.5, 0.0, 161.0], [0.0, 260.8, 118.4], [0.0, 0.0, 1.0]])
D2 = np.array([-0.26, 0.08, -0.0006, 0.0004, -0.010])
STOP = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)

# LiDAR (x forward, y left, z up) -> left camera optical frame (x right, y down, z forward), 5 cm apart
LIDAR_TO_LEFT = np.array([[0.0, -1.0, 0.0, 0.02], [0.0, 0.0, -1.0, -0.05], [1.0, 0.0, 0.0, -0.03],
                          [0.0, 0.0, 0.0, 1.0]])
# left -> right camera (OpenCV stereo convention X_right = R X_left + T): 12 cm baseline, slight misalignment
R_LR = cv2.Rodrigues(np.array([0.004, -0.012, 0.003]))[0]
T_LR = np.array([-0.12, 0.0015, -0.001])
# LiDAR points 4 .. 20 m ahead, within a wide but not extreme field of view
POINTS = np.array([[4.0, 0.5, -0.3], [6.0, -1.5, 0.4], [10.0, 2.5, -1.0], [20.0, -3.0, 1.5], [5.0, 1.2, 0.9],
                   [8.0, -2.0, -0.8]])


def rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def transform(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return xyz @ T[:3, :3].T + T[:3, 3]


def rectified_pixels(cam_xyz: np.ndarray, K: np.ndarray, D: np.ndarray, R: np.ndarray,
                     P: np.ndarray) -> np.ndarray:
    """Where OpenCV's rectification of the raw image (lens K, D) puts points given in the raw camera frame."""
    raw, _ = cv2.projectPoints(cam_xyz.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
        return cv2.undistortPointsIter(raw, K, D, R, P, STOP).reshape(-1, 2)
    return cv2.undistortPoints(raw, K, D, R=R, P=P, criteria=STOP).reshape(-1, 2)


def info(K: np.ndarray, D: np.ndarray, P: np.ndarray, R: np.ndarray | None = None, **over) -> SimpleNamespace:
    base = dict(height=HW[0], width=HW[1], distortion_model="plumb_bob", d=list(D), k=K.reshape(-1).tolist(),
                p=np.asarray(P, dtype=float).reshape(-1).tolist(),
                r=(np.eye(3) if R is None else R).reshape(-1).tolist(),
                binning_x=0, binning_y=0, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    base.update(over)
    return SimpleNamespace(**base)


def mono_P() -> np.ndarray:
    Kp, _ = cv2.getOptimalNewCameraMatrix(K1, D1, (HW[1], HW[0]), 0.0)
    return np.hstack([Kp, np.zeros((3, 1))])


def stereo() -> tuple[np.ndarray, ...]:
    size = (HW[1], HW[0])
    R1, R2, P1, P2, *_ = cv2.stereoRectify(K1, D1, K2, D2, size, R_LR, T_LR.reshape(3, 1), alpha=0.0)
    return R1, R2, P1, P2


def test_monocular_rectified_camera_projects_where_opencv_rectifies():
    P = mono_P()
    assert not np.allclose(P[:, :3], K1, atol=1.0)  # rectification rescaled the image: K is not P
    model = im.camera_info_to_model(info(K1, D1, P), rectified=True)
    assert model.rectified and not model.distorted
    np.testing.assert_array_equal(model.K, P[:, :3])
    np.testing.assert_array_equal(model.t, np.zeros(3))
    want = rectified_pixels(transform(LIDAR_TO_LEFT, POINTS), K1, D1, np.eye(3), P)
    for extrinsic_to, T in (("camera", LIDAR_TO_LEFT), ("stereo_rectified", LIDAR_TO_LEFT)):
        uv, depth = project(POINTS, model.K, model.view_T(T, extrinsic_to))
        assert (depth > 0).all()
        np.testing.assert_allclose(uv, want, atol=1e-6, err_msg=extrinsic_to)
    # the raw model of the same CameraInfo (K, undistortion) would put them elsewhere
    uv_raw, _ = project(POINTS, K1, LIDAR_TO_LEFT)
    assert np.abs(uv_raw - want).max() > 5.0


def test_rectified_image_is_not_undistorted_and_the_dot_is_where_the_model_says():
    """image_proc's rectification (initUndistortRectifyMap + remap) of a raw image with a bright dot."""
    P = mono_P()
    point = POINTS[4:5]  # up and left, where the lens distorts
    raw_px, _ = cv2.projectPoints(transform(LIDAR_TO_LEFT, point).reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                  K1, D1)
    u0, v0 = raw_px.reshape(2)
    v, u = np.mgrid[0 : HW[0], 0 : HW[1]]
    raw = np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * 1.5**2))
    raw_rgb = np.repeat(np.rint(255 * raw)[..., None], 3, axis=2).astype(np.uint8)
    maps = cv2.initUndistortRectifyMap(K1, D1, np.eye(3), P[:, :3], (HW[1], HW[0]), cv2.CV_32FC1)
    rect_rgb = cv2.remap(raw_rgb, *maps, interpolation=cv2.INTER_LINEAR)

    header = rosbags_header(3, "camera", TYPESTORE)
    image_msg = im.to_rosbags_image(header, rect_rgb, TYPESTORE)
    info_msg = im.to_rosbags_camera_info(header, K1, HW, TYPESTORE, P=P, D=D1)
    view = im.camera_view_from_msgs(image_msg, info_msg, LIDAR_TO_LEFT, "cam", rectified=True)
    np.testing.assert_array_equal(view.image, rect_rgb)  # not undistorted a second time
    uv, _ = project(point, view.K, view.T)
    np.testing.assert_allclose(uv[0], dot_centre(view.image), atol=0.3)
    # the raw path undistorts the image a second time, and its dot is off its own projection
    twice = im.camera_view_from_msgs(image_msg, info_msg, LIDAR_TO_LEFT, "cam")
    uv_twice, _ = project(point, twice.K, twice.T)
    assert np.linalg.norm(dot_centre(twice.image) - uv_twice[0]) > 3.0


def dot_centre(rgb: np.ndarray) -> np.ndarray:
    """(u, v) centroid of the bright pixels."""
    weight = rgb[..., 0].astype(float)
    weight[weight < 20] = 0
    v, u = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    return np.array([(weight * u).sum(), (weight * v).sum()]) / weight.sum()


def test_stereo_right_camera():
    R1, R2, P1, P2 = stereo()
    baseline = np.linalg.norm(T_LR)
    assert P2[0, 3] < 0 and P2[0, 3] == pytest.approx(-P2[0, 0] * baseline, rel=1e-3)  # Tx = -fx' B
    model = im.camera_info_to_model(info(K2, D2, P2, R2), rectified=True)
    np.testing.assert_allclose(model.t, np.linalg.inv(P2[:, :3]) @ P2[:, 3])
    np.testing.assert_allclose(model.t, [-baseline, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(model.R, R2)

    lidar_to_right = rigid(R_LR, T_LR) @ LIDAR_TO_LEFT  # the right lens's own optical frame
    lidar_to_left_rect = rigid(R1, np.zeros(3)) @ LIDAR_TO_LEFT  # the frame P projects from
    want = rectified_pixels(transform(lidar_to_right, POINTS), K2, D2, R2, P2)
    # ROS's formula for either camera of a pair: [u v w] = P [X Y Z 1] in the first camera's rectified frame
    hom = transform(lidar_to_left_rect, POINTS) @ P2[:, :3].T + P2[:, 3]
    np.testing.assert_allclose(hom[:, :2] / hom[:, 2:], want, atol=1e-6)

    K_view, T_view = im.projection_of(model, lidar_to_right)  # what the node does with TF's transform
    uv, _ = project(POINTS, K_view, T_view)
    np.testing.assert_allclose(uv, want, atol=1e-6)
    uv, _ = project(POINTS, model.K, model.view_T(lidar_to_left_rect, "stereo_rectified"))
    np.testing.assert_allclose(uv, want, atol=1e-6)
    # mixing the conventions is visibly wrong (the baseline counted twice, or the rotation dropped)
    uv, _ = project(POINTS, model.K, model.view_T(lidar_to_left_rect, "camera"))
    assert np.abs(uv - want).max() > 3.0
    uv, _ = project(POINTS, model.K, model.view_T(lidar_to_right, "stereo_rectified"))
    assert np.abs(uv - want).max() > 3.0


def test_stereo_left_camera_and_kitti_style_p():
    R1, _, P1, _ = stereo()
    model = im.camera_info_to_model(info(K1, D1, P1, R1), rectified=True)
    want = rectified_pixels(transform(LIDAR_TO_LEFT, POINTS), K1, D1, R1, P1)
    uv, _ = project(POINTS, model.K, model.view_T(LIDAR_TO_LEFT))
    np.testing.assert_allclose(uv, want, atol=1e-6)
    # KITTI's P_rect_02 has a small Tz: pixel = P (R0_rect Tr_velo_to_cam p), depth included
    P = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791],
                  [0.0, 0.0, 1.0, 0.002745884]])
    Kk = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    kitti = im.camera_info_to_model(info(Kk, np.zeros(5), P, height=375, width=1242), rectified=True)
    T = rigid(cv2.Rodrigues(np.array([0.01, 0.02, -0.01]))[0], [0.1, -0.2, 0.3]) @ LIDAR_TO_LEFT
    hom = transform(T, POINTS) @ P[:, :3].T + P[:, 3]
    uv, depth = project(POINTS, kitti.K, kitti.view_T(T, "stereo_rectified"))
    np.testing.assert_allclose(uv, hom[:, :2] / hom[:, 2:], atol=1e-9)
    np.testing.assert_allclose(depth, hom[:, 2], atol=1e-12)


def test_view_t_of_a_raw_model_and_bad_arguments():
    raw = im.camera_info_to_model(info(K1, D1, mono_P()))
    assert not raw.rectified and raw.distorted
    np.testing.assert_array_equal(raw.K, K1)
    np.testing.assert_array_equal(raw.view_T(LIDAR_TO_LEFT), LIDAR_TO_LEFT)
    with pytest.raises(ValueError, match="rectified"):
        raw.view_T(LIDAR_TO_LEFT, "stereo_rectified")
    rect = im.camera_info_to_model(info(K1, D1, mono_P()), rectified=True)
    with pytest.raises(ValueError, match="extrinsic_to"):
        rect.view_T(LIDAR_TO_LEFT, "lidar")
    with pytest.raises(ValueError, match="4x4"):
        rect.view_T(np.eye(3))


def test_raw_mode_does_not_read_p_or_r():
    """A raw camera whose driver leaves P and R unset (or garbage) is still fine without `rectified`."""
    got = im.camera_info_to_model(info(K1, D1, np.zeros((3, 4)), np.full((3, 3), np.nan)))
    np.testing.assert_array_equal(got.K, K1)


# ---------------------------------------------------------------------------------------------------
# Tolerances: both sides of each


K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
SIZE = dict(height=480, width=640)


def p_with(**entries: float) -> np.ndarray:
    P = np.hstack([K, np.zeros((3, 1))])
    names = {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2), "p10": (1, 0), "p22": (2, 2),
             "tx": (0, 3)}
    for name, value in entries.items():
        P[names[name]] = value
    return P


@pytest.mark.parametrize(
    ("P", "ok"),
    [
        (p_with(fx=0.501 * 500), True), (p_with(fx=0.5 * 500), False),
        (p_with(fx=1.999 * 500), True), (p_with(fx=2.0 * 500), False),
        (p_with(fy=0.501 * 480), True), (p_with(fy=0.5 * 480), False),
        (p_with(fy=1.999 * 480), True), (p_with(fy=2.0 * 480), False),
        (p_with(cx=-0.5), True), (p_with(cx=-0.51), False),
        (p_with(cx=639.5), True), (p_with(cx=639.51), False),
        (p_with(cy=-0.5), True), (p_with(cy=-0.6), False),
        (p_with(cy=479.5), True), (p_with(cy=479.6), False),
        (p_with(tx=-500 * 0.5), True),  # a 50 cm stereo baseline
    ],
)
def test_projection_tolerances(P, ok):
    msg = info(K, np.zeros(5), P, **SIZE)
    if ok:
        np.testing.assert_array_equal(im.camera_info_to_model(msg, rectified=True).K, P[:, :3])
        return
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_to_model(msg, rectified=True)
    is_focal = P[0, 0] != K[0, 0] or P[1, 1] != K[1, 1]
    assert err.value.reason == ("p_k_mismatch" if is_focal else "p_center_outside"), str(err.value)


def rotation_noise(scale: float) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal((3, 3))
    return cv2.Rodrigues(np.array([0.1, -0.2, 0.05]))[0] + scale * noise


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        (dict(p=[0.0] * 12), "zero_p"),
        (dict(p=[500.0, 0, 320, 0, 0, 480, 240, 0, 0, 0, 1]), "bad_p"),
        (dict(p=p_with(fx=np.nan).reshape(-1).tolist()), "bad_p"),
        (dict(p=p_with(tx=np.inf).reshape(-1).tolist()), "bad_p"),
        (dict(p=p_with(fx=-500).reshape(-1).tolist()), "bad_p"),
        (dict(p=p_with(p22=2.0).reshape(-1).tolist()), "bad_p"),
        (dict(p=p_with(p10=1.0).reshape(-1).tolist()), "bad_p"),
        (dict(r=(2 * np.eye(3)).reshape(-1).tolist()), "bad_r"),
        (dict(r=np.diag([1.0, 1.0, -1.0]).reshape(-1).tolist()), "bad_r"),  # a reflection
        (dict(r=rotation_noise(1e-2).reshape(-1).tolist()), "bad_r"),
        (dict(r=[1.0, 0, 0, 0, 1, 0, 0, 0]), "bad_r"),
        (dict(r=[np.nan] * 9), "bad_r"),
        (dict(k=[0.0] * 9), "zero_k"),
        (dict(d=[np.inf, 0, 0, 0, 0]), "bad_distortion"),
        (dict(binning_x=2), "unsupported_binning"),
        (dict(roi=SimpleNamespace(x_offset=4, y_offset=0, width=10, height=10)), "unsupported_roi"),
        (dict(height=0), "size_mismatch"),
    ],
)
def test_rectified_refusals(over, reason):
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_to_model(info(K, np.zeros(5), p_with(), **{**SIZE, **over}), rectified=True)
    assert err.value.reason == reason, str(err.value)


def test_rectified_acceptances():
    """Unset R (all zero) is identity; R within float noise is a rotation; D's lens model is not needed."""
    base = dict(K=K, D=np.zeros(5), P=p_with())
    zero_r = im.camera_info_to_model(info(**base, R=np.zeros((3, 3)), **SIZE), rectified=True)
    np.testing.assert_array_equal(zero_r.R, np.eye(3))
    noisy = rotation_noise(1e-5)
    got = im.camera_info_to_model(info(**base, R=noisy, **SIZE), rectified=True)
    np.testing.assert_array_equal(got.R, noisy)
    lens = info(K, np.array([0.3, -0.1, 0.02]), p_with(), distortion_model="fancy_lens", **SIZE)
    assert not im.camera_info_to_model(lens, rectified=True).distorted
    with pytest.raises(im.CameraInfoError) as err:  # the raw path would have to undistort it: refused
        im.camera_info_to_model(lens)
    assert err.value.reason == "unsupported_distortion"


def test_rectified_camera_info_through_cdr_and_camera_info_k():
    R1, R2, P1, P2 = stereo()
    header = rosbags_header(5, "right", TYPESTORE)
    msg = im.to_rosbags_camera_info(header, K2, HW, TYPESTORE, P=P2, D=D2, R=R2)
    back = TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo"),
                                     "sensor_msgs/msg/CameraInfo")
    np.testing.assert_array_equal(im.camera_info_K(back, image_hw=HW, rectified=True), P2[:, :3])
    np.testing.assert_array_equal(im.camera_info_K(back, image_hw=HW), K2)
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_K(back, image_hw=(HW[0] + 1, HW[1]), rectified=True)
    assert err.value.reason == "size_mismatch"


def test_rclpy_stereo_camera_info():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    serialization = pytest.importorskip("rclpy.serialization")
    from xkd_ros.stamp import rclpy_header

    _, R2, _, P2 = stereo()
    msg = im.to_rclpy_camera_info(rclpy_header(1, "right"), K2, HW, P=P2, D=D2, R=R2)
    back = serialization.deserialize_message(serialization.serialize_message(msg), sensor_msgs.CameraInfo)
    model = im.camera_info_to_model(back, rectified=True)
    np.testing.assert_array_equal(model.R, R2)
    np.testing.assert_array_equal(model.K, P2[:, :3])
    np.testing.assert_allclose(model.t, np.linalg.solve(P2[:, :3], P2[:, 3]))


def test_an_absurd_but_finite_fourth_column_of_p_is_refused():
    """Found by hypothesis: P[2, 3] = 9e307 is finite, but the offset it gives overflows to inf."""
    K = np.array([[300.0, 0.0, 160.0], [0.0, 290.0, 120.0], [0.0, 0.0, 1.0]])
    P = np.array([[180.0, 0.0, 0.0, 0.0], [0.0, 174.0, 2.0, 0.0], [0.0, 0.0, 1.0, 8.98846567431158e307]])
    info = im.to_rosbags_camera_info(rosbags_header(3, "camera", TYPESTORE), K, (240, 320), TYPESTORE, P=P)
    with pytest.raises(im.CameraInfoError) as err:
        im.camera_info_to_model(info, rectified=True)
    assert err.value.reason == "bad_p"
