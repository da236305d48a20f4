"""Projection and point-pixel pairs against hand-computed values and the validity rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xkd_core.data.frame import CameraView
from xkd_core.geometry.projection import Pairs, in_any_view, point_pixel_pairs, project, views_of, visible

# A 100 x 80 camera (W x H): u in [0, 99], v in [0, 79]; f = 100, principal point (50, 40).
K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
HW = (80, 100)
# LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd), camera 1 m behind and 2 m above the LiDAR.
T = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -2.0], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def lidar_from_cam(cam_xyz: np.ndarray) -> np.ndarray:
    """LiDAR coordinates of camera-frame points, inverting T by hand (x_l = z_c - 1, y_l = -x_c, ...)."""
    c = np.atleast_2d(cam_xyz)
    return np.column_stack([c[:, 2] - 1.0, -c[:, 0], -(c[:, 1] + 2.0)])


def test_project_hand_computed():
    # LiDAR (9, -1, -4) -> camera (1, 2, 10) -> u = 100 * 1/10 + 50 = 60, v = 100 * 2/10 + 40 = 60.
    # LiDAR (4, 2.5, -2) -> camera (-2.5, 0, 5) -> u = -50 + 50 = 0, v = 40.
    xyz = np.array([[9.0, -1.0, -4.0], [4.0, 2.5, -2.0]])
    uv, depth = project(xyz, K, T)
    assert uv.dtype == np.float64 and uv.shape == (2, 2) and depth.shape == (2,)
    np.testing.assert_allclose(uv, [[60.0, 60.0], [0.0, 40.0]], atol=1e-12)
    np.testing.assert_allclose(depth, [10.0, 5.0], atol=1e-12)


def test_project_accepts_xyzi_float32():
    xyzi = np.array([[9.0, -1.0, -4.0, 0.7]], dtype=np.float32)
    uv, depth = project(xyzi, K, T)
    np.testing.assert_allclose(uv, [[60.0, 60.0]], atol=1e-5)
    assert depth.dtype == np.float64


def test_project_rejects_bad_shapes():
    with pytest.raises(ValueError, match="xyz"):
        project(np.zeros((3, 2)), K, T)
    with pytest.raises(ValueError, match="K must be"):
        project(np.zeros((3, 3)), np.eye(4), T)
    with pytest.raises(ValueError, match="T must be"):
        project(np.zeros((3, 3)), K, np.eye(3))


def test_validity_behind_outside_and_edges():
    # Each row: camera-frame point, expected valid?
    cases = [
        ((1.0, 2.0, 10.0), True),  # (60, 60)
        ((-1.0, -2.0, -10.0), False),  # behind: mirrors onto (60, 60) but depth < 0
        ((0.0, 0.0, 0.0), False),  # depth 0
        ((-0.5, 0.0, 1.0), True),  # u = 0: left edge pixel centre
        ((0.49, 0.0, 1.0), True),  # u = 99: right edge pixel centre
        ((-0.4, -0.4, 1.0), True),  # (10, 0): top edge
        ((0.0, 0.39, 1.0), True),  # (50, 79): bottom edge
        ((-0.5001, 0.0, 1.0), False),  # u = -0.01
        ((0.4901, 0.0, 1.0), False),  # u = 99.01
        ((0.0, -0.4001, 1.0), False),  # v = -0.01
        ((0.0, 0.3901, 1.0), False),  # v = 79.01
        ((50.0, 0.0, 1.0), False),  # far outside
    ]
    cam = np.array([c for c, _ in cases])
    want = np.array([v for _, v in cases])
    xyz = lidar_from_cam(cam)
    uv, depth = project(xyz, K, T)
    np.testing.assert_allclose(depth, cam[:, 2], atol=1e-12)
    assert visible(uv, depth, HW).tolist() == want.tolist()
    pairs = point_pixel_pairs(xyz, [(K, T, HW)])
    assert pairs.point.tolist() == np.flatnonzero(want).tolist()
    assert pairs.view.tolist() == [0] * int(want.sum())
    np.testing.assert_allclose(pairs.uv, [[60, 60], [0, 40], [99, 40], [10, 0], [50, 79]], atol=1e-4)
    assert pairs.pixel().tolist() == [[60, 60], [0, 40], [99, 40], [10, 0], [50, 79]]


def test_non_finite_points_never_pair():
    xyz = np.array([[np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [9.0, -1.0, -4.0]])
    pairs = point_pixel_pairs(xyz, [(K, T, HW)])
    assert pairs.point.tolist() == [2]


def test_min_depth():
    xyz = lidar_from_cam(np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 1.5], [0.0, 0.0, 3.0]]))
    assert point_pixel_pairs(xyz, [(K, T, HW)]).point.tolist() == [0, 1, 2]
    assert point_pixel_pairs(xyz, [(K, T, HW)], min_depth=1.0).point.tolist() == [1, 2]
    assert point_pixel_pairs(xyz, [(K, T, HW)], min_depth=3.0).point.tolist() == []
    with pytest.raises(ValueError, match="min_depth"):
        point_pixel_pairs(xyz, [(K, T, HW)], min_depth=-1.0)


def test_pixel_rounding_stays_inside_at_the_border():
    # u = 98.6 rounds to the last column 99, u = 0.4 to the first column 0.
    xyz = lidar_from_cam(np.array([[0.486, 0.0, 1.0], [-0.496, 0.0, 1.0]]))
    pairs = point_pixel_pairs(xyz, [(K, T, (80, 100))])
    np.testing.assert_allclose(pairs.uv[:, 0], [98.6, 0.4], atol=1e-4)
    assert pairs.pixel()[:, 0].tolist() == [99, 0]


def test_multi_view_pairs_sorted_by_view_then_point():
    # view 0: the camera above; view 1: same pose, narrower and smaller image (40 x 30), shifted 1 m right;
    # view 2: looking backwards, sees nothing in front.
    K1 = np.array([[50.0, 0.0, 20.0], [0.0, 50.0, 15.0], [0.0, 0.0, 1.0]])
    T1 = T.copy()
    T1[0, 3] = -1.0  # camera 1 m right of camera 0: x_c1 = x_c0 - 1
    T2 = np.diag([-1.0, 1.0, -1.0, 1.0]) @ T  # rotated 180 deg about camera y
    cam = np.array([
        [1.0, 2.0, 10.0],  # v0 (60, 60); v1 x=0 -> (20, 25)
        [-4.0, 0.0, 10.0],  # v0 (10, 40); v1 x=-5 -> (-5, 15): outside
        [3.5, 0.0, 10.0],  # v0 (85, 40); v1 x=2.5 -> (32.5, 15)
        [0.0, 0.0, -5.0],  # behind views 0 and 1; view 2 sees it at its centre
        [20.0, 0.0, 10.0],  # v0 u=250 outside; v1 x=19 -> 115 outside
    ])
    xyz = lidar_from_cam(cam)
    views = [(K, T, HW), (K1, T1, (30, 40)), (K, T2, HW)]
    pairs = point_pixel_pairs(xyz, views)
    assert isinstance(pairs, Pairs) and len(pairs) == 6
    assert pairs.point.dtype == np.int64 and pairs.view.dtype == np.int64 and pairs.uv.dtype == np.float32
    got = list(zip(pairs.view.tolist(), pairs.point.tolist()))
    assert got == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 3)]
    np.testing.assert_allclose(
        pairs.uv, [[60, 60], [10, 40], [85, 40], [20, 25], [32.5, 15], [50, 40]], atol=1e-4
    )
    sub = pairs.of_view(1)
    assert sub.point.tolist() == [0, 2] and sub.view.tolist() == [1, 1]
    # views_of gives the same result from CameraViews
    cams = [CameraView(np.zeros((*hw, 3), np.uint8), k, t, f"c{i}") for i, (k, t, hw) in enumerate(views)]
    again = point_pixel_pairs(xyz, views_of(cams))
    assert np.array_equal(again.point, pairs.point) and np.array_equal(again.uv, pairs.uv)


def test_in_any_view_is_the_union_of_the_views_pairs():
    cam = np.array([[1.0, 2.0, 10.0], [20.0, 0.0, 10.0], [0.0, 0.0, -5.0], [np.nan, 0.0, 10.0]])
    xyz = lidar_from_cam(cam)
    T2 = np.diag([-1.0, 1.0, -1.0, 1.0]) @ T  # looking backwards: sees point 2 only
    assert in_any_view(xyz, [(K, T, HW)]).tolist() == [True, False, False, False]
    assert in_any_view(xyz, [(K, T, HW), (K, T2, HW)]).tolist() == [True, False, True, False]
    assert in_any_view(xyz, []).tolist() == [False] * 4  # no camera: nothing is in the frustum


def test_no_views_or_no_points_give_empty_pairs():
    empty = point_pixel_pairs(np.zeros((5, 3)), [])
    assert len(empty) == 0 and empty.uv.shape == (0, 2) and empty.pixel().shape == (0, 2)
    none = point_pixel_pairs(np.zeros((0, 4), np.float32), [(K, T, HW)])
    assert len(none) == 0 and none.uv.shape == (0, 2)
    with pytest.raises(ValueError, match=r"views\[0\]"):
        point_pixel_pairs(np.zeros((5, 3)), [(K, T)])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_views=st.integers(1, 3))
def test_pairs_match_per_point_rule(seed, n_views):
    """Every (point, view) is in `Pairs` iff it meets the rule, checked one point at a time."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-20, 20, (60, 3))
    views = []
    for _ in range(n_views):
        a = rng.uniform(-np.pi, np.pi)
        Tv = T.copy()
        Tv[:3, :3] = T[:3, :3] @ np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        Tv[:3, 3] = rng.normal(0, 1, 3)
        hw = (int(rng.integers(1, 60)), int(rng.integers(1, 90)))
        Kv = np.array([[rng.uniform(5, 50), 0, hw[1] / 2], [0, rng.uniform(5, 50), hw[0] / 2], [0, 0, 1]])
        views.append((Kv, Tv, hw))
    pairs = point_pixel_pairs(xyz, views, min_depth=0.5)
    expected = []
    for vi, (Kv, Tv, (h, w)) in enumerate(views):
        for pi, p in enumerate(xyz):
            c = Tv[:3, :3] @ p + Tv[:3, 3]
            if c[2] <= 0.5:
                continue
            u, v = Kv[0, 0] * c[0] / c[2] + Kv[0, 2], Kv[1, 1] * c[1] / c[2] + Kv[1, 2]
            if 0 <= u <= w - 1 and 0 <= v <= h - 1:
                expected.append((vi, pi, u, v))
    assert list(zip(pairs.view.tolist(), pairs.point.tolist())) == [(e[0], e[1]) for e in expected]
    if expected:
        np.testing.assert_allclose(pairs.uv, [(e[2], e[3]) for e in expected], rtol=1e-6, atol=1e-4)
        px = pairs.pixel()
        hws = np.array([views[v][2] for v in pairs.view])
        assert (px >= 0).all() and (px[:, 0] <= hws[:, 1] - 1).all() and (px[:, 1] <= hws[:, 0] - 1).all()
