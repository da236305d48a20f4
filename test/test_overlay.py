"""Label overlay drawing: right pixel, right colour, nearest point on top, nothing else touched."""

from __future__ import annotations

import numpy as np
import pytest

from xkd_core.classes import PALETTE_RGB
from xkd_core.overlay import draw_label_overlay

K = np.array([[50.0, 0.0, 39.5], [0.0, 50.0, 19.5], [0.0, 0.0, 1.0]])
T = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
HW = (40, 80)


def grey() -> np.ndarray:
    return np.full((*HW, 3), 100, dtype=np.uint8)


def test_point_lands_on_its_pixel_in_its_class_colour() -> None:
    # 10 m ahead, 1 m left, 0.5 m up: u = 39.5 - 50 * 0.1 = 34.5 -> 34 (banker's rint), v = 19.5 - 2.5 = 17.
    xyz = np.array([[10.0, 1.0, 0.5]])
    out = draw_label_overlay(grey(), xyz, np.array([1]), K, T, radius=0, alpha=1.0)
    changed = np.argwhere((out != 100).any(axis=2))
    assert changed.tolist() == [[17, 34]]
    assert out[17, 34].tolist() == PALETTE_RGB[1].tolist()


def test_radius_grows_the_dot_and_alpha_blends() -> None:
    xyz = np.array([[10.0, 0.0, 0.0]])  # centre pixel (19.5, 39.5) -> (20, 40) after rint
    out = draw_label_overlay(grey(), xyz, np.array([9]), K, T, radius=1, alpha=0.5)
    changed = (out != 100).any(axis=2)
    assert changed.sum() == 9
    expect = np.round(0.5 * PALETTE_RGB[9].astype(float) + 0.5 * 100).astype(np.uint8)
    assert np.abs(out[changed].astype(int) - expect.astype(int)).max() <= 1


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_nearest_point_wins_whatever_the_input_order(order: list[int]) -> None:
    xyz = np.array([[5.0, 0.0, 0.0], [20.0, 0.0, 0.0]])[order]  # same ray, near and far
    labels = np.array([1, 9])[order]
    out = draw_label_overlay(grey(), xyz, labels, K, T, radius=2, alpha=1.0)
    assert out[20, 40].tolist() == PALETTE_RGB[1].tolist()
    assert ((out != 100).any(axis=2)).sum() == 25  # the far point's square is fully covered


def test_hidden_points_leave_the_image_untouched() -> None:
    xyz = np.array([[-10.0, 0.0, 0.0],  # behind the camera
                    [10.0, 50.0, 0.0],  # far outside the image
                    [10.0, 0.0, 0.0],  # visible, but label 0 (not segmented)
                    [np.nan, 0.0, 0.0]])
    img = grey()
    out = draw_label_overlay(img, xyz, np.array([1, 1, 0, 1]), K, T)
    assert np.array_equal(out, img) and out is not img


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        draw_label_overlay(np.zeros((*HW, 3), np.float32), np.zeros((1, 3)), np.array([1]), K, T)
    with pytest.raises(ValueError, match="labels must be"):
        draw_label_overlay(grey(), np.zeros((2, 3)), np.array([1]), K, T)
    with pytest.raises(ValueError, match="learning ids"):
        draw_label_overlay(grey(), np.zeros((1, 3)), np.array([40]), K, T)
