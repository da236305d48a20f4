"""Point and image augmentation that keeps point-pixel pairs exact.

Nothing here moves a pair by hand. A point augmentation is a 4x4 matrix `A` applied to the points
and folded into every view as `T <- T @ inv(A)`; an image crop / resize / flip is a 3x3 affine map
`B` of pixel coordinates (centres at integers) folded in as `K <- B @ K`. Pairs recomputed with
`projection.point_pixel_pairs` after augmentation are therefore exact by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from xkd_core.data.frame import CameraView


def _check_range(name: str, rng: tuple[float, float], lo: float, hi: float) -> None:
    if len(rng) != 2 or not (lo <= rng[0] <= rng[1] <= hi):
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {rng}")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability and must lie in [0, 1], got {p}")


@dataclass
class PointAugConfig:
    """Random rigid / similarity augmentation of the LiDAR cloud (all off by default)."""

    rotate_z: bool = False  # uniform yaw in [-pi, pi)
    flip_x: float = 0.0  # probability of mirroring x -> -x
    flip_y: float = 0.0  # probability of mirroring y -> -y
    scale: tuple[float, float] = (1.0, 1.0)  # uniform isotropic scale range
    translate_std: float = 0.0  # std (m) of a Gaussian translation on each of x, y, z

    def __post_init__(self) -> None:
        _check_prob("PointAugConfig.flip_x", self.flip_x)
        _check_prob("PointAugConfig.flip_y", self.flip_y)
        _check_range("PointAugConfig.scale", tuple(self.scale), 1e-3, 1e3)
        if not 0.0 <= self.translate_std < math.inf:
            raise ValueError(f"PointAugConfig.translate_std must be finite, >= 0: {self.translate_std}")


@dataclass
class ImageAugConfig:
    """Random crop, resize, horizontal flip and colour jitter of a camera view (all off by default)."""

    crop_scale: tuple[float, float] = (1.0, 1.0)  # crop side as a fraction of the image side (aspect kept)
    out_hw: tuple[int, int] | None = None  # output (H, W); None keeps the input size
    hflip: float = 0.0  # probability of a horizontal flip
    brightness: float = 0.0  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.0  # factor uniform in [1 - c, 1 + c]
    saturation: float = 0.0  # factor uniform in [1 - s, 1 + s]
    hue: float = 0.0  # shift uniform in [-h, h], fraction of the hue circle (<= 0.5)

    def __post_init__(self) -> None:
        _check_range("ImageAugConfig.crop_scale", tuple(self.crop_scale), 1e-3, 1.0)
        if self.out_hw is not None and (len(self.out_hw) != 2 or min(self.out_hw) < 1):
            raise ValueError(f"ImageAugConfig.out_hw must be (H, W) with H, W >= 1, got {self.out_hw}")
        _check_prob("ImageAugConfig.hflip", self.hflip)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ImageAugConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ImageAugConfig.hue must lie in [0, 0.5], got {self.hue}")


# ---------------------------------------------------------------------------------------------- points


def sample_point_transform(rng: np.random.Generator, cfg: PointAugConfig) -> np.ndarray:
    """A random 4x4 transform `A` = translate @ scale @ flip @ yaw, drawn from `cfg`."""
    A = np.eye(4)
    if cfg.rotate_z:
        a = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(a), math.sin(a)
        A[:2, :2] = [[c, -s], [s, c]]
    flip = np.diag([-1.0 if rng.random() < cfg.flip_x else 1.0, -1.0 if rng.random() < cfg.flip_y else 1.0,
                    1.0, 1.0])
    A = flip @ A
    A[:3] *= rng.uniform(cfg.scale[0], cfg.scale[1])
    if cfg.translate_std > 0:
        A[:3, 3] += rng.normal(0.0, cfg.translate_std, 3)
    return A


def transform_points(
    points: np.ndarray, views: Sequence[CameraView], A: np.ndarray
) -> tuple[np.ndarray, list[CameraView]]:
    """Apply `A` to xyz (extra columns such as intensity kept) and `T <- T @ inv(A)` to every view."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got {pts.shape}")
    A = np.asarray(A, dtype=np.float64)
    if A.shape != (4, 4):
        raise ValueError(f"A must be (4, 4), got {A.shape}")
    out = pts.copy()
    out[:, :3] = pts[:, :3].astype(np.float64) @ A[:3, :3].T + A[:3, 3]
    A_inv = np.linalg.inv(A)
    new_views = [CameraView(v.image, v.K.copy(), v.T @ A_inv, v.name) for v in views]
    return out, new_views


def augment_points(
    points: np.ndarray, views: Sequence[CameraView], rng: np.random.Generator, cfg: PointAugConfig
) -> tuple[np.ndarray, list[CameraView]]:
    """Randomly transform a cloud and keep every view's projection of it unchanged."""
    return transform_points(points, views, sample_point_transform(rng, cfg))


# ---------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ViewAugParams:
    """One drawn image augmentation: crop box, output size, flip and colour factors."""

    x0: int
    y0: int
    crop_w: int
    crop_h: int
    out_h: int
    out_w: int
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # fraction of the hue circle

    def matrix(self) -> np.ndarray:
        """The 3x3 pixel affine `B` (crop, then resize, then flip) with pixel centres at integers."""
        sx, sy = self.out_w / self.crop_w, self.out_h / self.crop_h
        crop = np.array([[1.0, 0, -self.x0], [0, 1.0, -self.y0], [0, 0, 1.0]])
        resize = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
        flip = np.array([[-1.0, 0, self.out_w - 1.0], [0, 1.0, 0], [0, 0, 1.0]]) if self.flip else np.eye(3)
        return flip @ resize @ crop


def sample_view_aug(
    rng: np.random.Generator,
    cfg: ImageAugConfig,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
) -> ViewAugParams:
    """Draw crop / flip / colour parameters for an image of size `in_hw`; `out_hw` overrides `cfg.out_hw`."""
    h, w = int(in_hw[0]), int(in_hw[1])
    out_h, out_w = out_hw or cfg.out_hw or (h, w)
    f = rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1])
    crop_h, crop_w = max(1, min(h, round(h * f))), max(1, min(w, round(w * f)))
    y0 = int(rng.integers(0, h - crop_h + 1))
    x0 = int(rng.integers(0, w - crop_w + 1))
    flip = bool(rng.random() < cfg.hflip)

    def factor(strength: float) -> float:
        return float(rng.uniform(1.0 - strength, 1.0 + strength)) if strength > 0 else 1.0

    hue = float(rng.uniform(-cfg.hue, cfg.hue)) if cfg.hue > 0 else 0.0
    return ViewAugParams(x0, y0, crop_w, crop_h, int(out_h), int(out_w), flip,
                         factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation), hue)


def _resize(image: np.ndarray, out_hw: tuple[int, int], interpolation: int | None) -> np.ndarray:
    # All of INTER_AREA / INTER_LINEAR / INTER_NEAREST_EXACT map output pixel x to input (x+0.5)/s-0.5,
    # the map that `ViewAugParams.matrix` assumes. (Plain INTER_NEAREST does not: it uses x/s.)
    h, w = image.shape[:2]
    if (h, w) == tuple(out_hw):
        return image
    if interpolation is None:
        interpolation = cv2.INTER_AREA if out_hw[0] * out_hw[1] < h * w else cv2.INTER_LINEAR
    elif interpolation == cv2.INTER_NEAREST:
        raise ValueError("use cv2.INTER_NEAREST_EXACT: cv2.INTER_NEAREST is not pixel-centre aligned")
    return cv2.resize(image, (int(out_hw[1]), int(out_hw[0])), interpolation=interpolation)


def warp_image(image: np.ndarray, params: ViewAugParams, interpolation: int | None = None) -> np.ndarray:
    """The geometric part only (crop, resize, flip) of `params`, for any image-like array.

    Default interpolation is area when shrinking and bilinear when enlarging; pass
    `cv2.INTER_NEAREST_EXACT` for label or id images.
    """
    h, w = image.shape[:2]
    p = params
    if not (0 <= p.x0 and p.x0 + p.crop_w <= w and 0 <= p.y0 and p.y0 + p.crop_h <= h):
        raise ValueError(f"crop box x0={p.x0} y0={p.y0} {p.crop_w}x{p.crop_h} exceeds the {w}x{h} image")
    out = _resize(image[p.y0:p.y0 + p.crop_h, p.x0:p.x0 + p.crop_w], (p.out_h, p.out_w), interpolation)
    if p.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def colour_jitter(image: np.ndarray, params: ViewAugParams) -> np.ndarray:
    """Brightness, contrast, saturation and hue changes of an RGB uint8 image (geometry untouched)."""
    if (params.brightness, params.contrast, params.saturation, params.hue) == (1.0, 1.0, 1.0, 0.0):
        return image
    img = image.astype(np.float32) * params.brightness
    gray_w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if params.contrast != 1.0:
        mean = float((np.clip(img, 0, 255) @ gray_w).mean())
        img = (img - mean) * params.contrast + mean
    if params.saturation != 1.0:
        gray = (np.clip(img, 0, 255) @ gray_w)[..., None]
        img = (img - gray) * params.saturation + gray
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if params.hue != 0.0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
        shift = round(params.hue * 256)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out


def apply_view_aug(view: CameraView, params: ViewAugParams, interpolation: int | None = None) -> CameraView:
    """Apply drawn parameters to a view: warped, jittered image and `K <- B @ K` (T unchanged)."""
    image = colour_jitter(warp_image(view.image, params, interpolation), params)
    return CameraView(image, params.matrix() @ view.K, view.T.copy(), view.name)


def augment_view(
    view: CameraView, rng: np.random.Generator, cfg: ImageAugConfig, out_hw: tuple[int, int] | None = None
) -> CameraView:
    """Random crop, resize to `out_hw` (or `cfg.out_hw`, else the input size), flip and colour jitter."""
    return apply_view_aug(view, sample_view_aug(rng, cfg, view.hw, out_hw))


def resize_view(view: CameraView, out_hw: tuple[int, int]) -> CameraView:
    """Deterministic whole-image resize to `out_hw` = (H, W) with the matching `K`, for inference."""
    h, w = view.hw
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"out_hw must be (H, W) with H, W >= 1, got {out_hw}")
    return apply_view_aug(view, ViewAugParams(0, 0, w, h, int(out_hw[0]), int(out_hw[1])))
