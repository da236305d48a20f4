"""From `Frame`s to the tensors the model eats: per-sample preparation and batching.

`prepare_sample` runs on the data-loader workers (numpy, OpenCV): it drops non-finite points,
augments points and images, resizes every image to one network size and recomputes the point-pixel
pairs from the augmented calibration, so pairs are exact by construction. `collate` concatenates
samples with global point / image indices, the layout the sparse network and `grid_sample` want.
The camera teacher's stage (`stage: camera`) trains on single images with dense class labels instead:
`prepare_view_sample` warps image and labels with one drawn augmentation, `collate_views` stacks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from xkd_core.data.frame import CameraView, Frame
from xkd_core.geometry.augment import (
    ImageAugConfig,
    PointAugConfig,
    ViewAugParams,
    augment_view,
    colour_jitter,
    resize_view,
    sample_point_transform,
    sample_view_aug,
    transform_points,
    warp_image,
)
from xkd_core.geometry.projection import point_pixel_pairs, views_of

#: ImageNet statistics used by every timm backbone's pretrained weights (RGB, 0..1 scale).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class Sample:
    """One prepared frame: finite (augmented) points, resized views and their pairs."""

    points: np.ndarray  # (N, 4) float32
    labels: np.ndarray | None  # (N,) int64
    images: list[np.ndarray]  # V x (H, W, 3) uint8, all of size image_hw
    views: list[CameraView]  # the augmented views (K, T match `images`)
    pair_point: np.ndarray  # (M,) int64 index into points
    pair_view: np.ndarray  # (M,) int64 index into images
    pair_uv: np.ndarray  # (M, 2) float32 pixel (u = column, v = row) in the resized image
    kept_index: np.ndarray  # (N,) int64 index of each kept point in the input frame
    num_input_points: int  # points in the input frame, before dropping non-finite ones
    sequence: str = ""
    frame_id: str = ""
    # With `label_points`: the camera branch's own labels, every labeled point of the scan that a view
    # sees (not only the points kept for the 3D network), as (view, pixel, class); None otherwise.
    label_view: np.ndarray | None = None  # (L,) int64 index into images
    label_uv: np.ndarray | None = None  # (L, 2) float32 pixel in the resized image
    label_class: np.ndarray | None = None  # (L,) int64


def prepare_sample(
    frame: Frame,
    *,
    train: bool,
    rng: np.random.Generator | None,
    point_aug: PointAugConfig | None,
    image_aug: ImageAugConfig | None,
    image_hw: tuple[int, int],
    use_camera: bool,
    label_points: tuple[np.ndarray, np.ndarray] | None = None,
) -> Sample:
    """Drop non-finite points, augment (when `train`), resize views to `image_hw`, recompute pairs.

    Without `train` (or without a config) nothing random happens and `rng` may be None. With
    `use_camera` False the views are dropped and the sample has no pairs (LiDAR-only baseline).
    `label_points` = (points (L, >=3), classes (L,)) in the frame's coordinates: labeled points to
    project into the augmented views as the camera branch's labels (`Sample.label_*`), e.g. the
    whole scan's when `frame` is a subsample that only bounds the 3D network's cost.
    """
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be (H, W) with H, W >= 1, got {image_hw}")
    if train and (point_aug is not None or image_aug is not None) and rng is None:
        raise ValueError("prepare_sample: rng is required when training with augmentation")
    finite = np.isfinite(frame.points).all(axis=1)
    kept_index = np.flatnonzero(finite).astype(np.int64)
    points = frame.points[kept_index]
    labels = None if frame.labels is None else frame.labels[kept_index]
    views = list(frame.views) if use_camera else []
    label_xyz = label_cls = None  # the camera branch's own labeled points, when given
    if label_points is not None and use_camera:
        label_xyz = np.asarray(label_points[0])[:, :3]
        label_cls = np.asarray(label_points[1], dtype=np.int64)
        if len(label_xyz) != len(label_cls):
            raise ValueError(f"label_points: {len(label_xyz)} points but {len(label_cls)} classes")
        ok = np.isfinite(label_xyz).all(axis=1)
        label_xyz, label_cls = label_xyz[ok], label_cls[ok]
    if train and point_aug is not None:
        transform = sample_point_transform(rng, point_aug)  # one draw for both point sets
        points, views = transform_points(points, views, transform)
        points = points.astype(np.float32, copy=False)
        if label_xyz is not None:
            label_xyz = transform_points(label_xyz, [], transform)[0]
    out_hw = (int(image_hw[0]), int(image_hw[1]))
    if train and image_aug is not None:
        views = [augment_view(v, rng, image_aug, out_hw) for v in views]
    else:
        views = [resize_view(v, out_hw) for v in views]
    pairs = point_pixel_pairs(points[:, :3], views_of(views))
    label_view = label_uv = label_class = None
    if label_xyz is not None:
        seen = point_pixel_pairs(label_xyz, views_of(views))
        label_view, label_uv, label_class = seen.view, seen.uv, label_cls[seen.point]
    return Sample(
        points=np.ascontiguousarray(points, dtype=np.float32),
        labels=labels,
        images=[v.image for v in views],
        views=views,
        pair_point=pairs.point,
        pair_view=pairs.view,
        pair_uv=pairs.uv,
        kept_index=kept_index,
        num_input_points=frame.num_points,
        sequence=frame.sequence,
        frame_id=frame.frame_id,
        label_view=label_view,
        label_uv=label_uv,
        label_class=label_class,
    )


@dataclass
class Batch:
    """A collated batch; all indices are global over the batch (pairs index `points` and `images`)."""

    points: Tensor  # (N, 4) float32
    batch_idx: Tensor  # (N,) int64 sample of each point
    labels: Tensor | None  # (N,) int64, None when any sample has no labels
    images: Tensor | None  # (I, 3, H, W) float32 ImageNet-normalised, None without images
    image_batch: Tensor  # (I,) int64 sample of each image
    pair_point: Tensor  # (M,) int64 global point index
    pair_image: Tensor  # (M,) int64 global image index
    pair_uv: Tensor  # (M, 2) float32 pixel in the (resized) image
    num_samples: int
    point_offsets: list[int] = field(default_factory=list)  # sample b owns points [o[b], o[b+1])
    kept_index: list[np.ndarray] = field(default_factory=list)  # per sample, see `Sample`
    num_input_points: list[int] = field(default_factory=list)
    meta: list[tuple[str, str]] = field(default_factory=list)  # (sequence, frame_id) per sample
    # The camera branch's labels when every sample has them (`Sample.label_*`), else None: the 2D
    # cross-entropy then uses the labels of the paired points.
    label_image: Tensor | None = None  # (L,) int64 global image index
    label_uv: Tensor | None = None  # (L, 2) float32
    label_class: Tensor | None = None  # (L,) int64

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """(H, W) of the network images, or None without images."""
        return None if self.images is None else (int(self.images.shape[2]), int(self.images.shape[3]))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device` (numpy / Python metadata shared)."""
        kwargs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=non_blocking)
            kwargs[f.name] = value
        return Batch(**kwargs)

    def pin_memory(self) -> Batch:
        """Page-locked copy (DataLoader `pin_memory=True` calls this on custom batch types)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in kwargs.items():
            if isinstance(value, Tensor):
                kwargs[name] = value.pin_memory()
        return Batch(**kwargs)


def normalize_images(images: np.ndarray) -> Tensor:
    """(I, H, W, 3) uint8 RGB -> (I, 3, H, W) float32 normalised with the ImageNet statistics."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.from_numpy(IMAGENET_MEAN)[None, :, None, None]
    std = torch.from_numpy(IMAGENET_STD)[None, :, None, None]
    return (x - mean) / std


def collate(samples: list[Sample]) -> Batch:
    """Concatenate samples; pair indices are shifted to global point / image indices."""
    if not samples:
        raise ValueError("collate: no samples")
    n_points = [len(s.points) for s in samples]
    n_images = [len(s.images) for s in samples]
    p_off = np.concatenate([[0], np.cumsum(n_points)]).astype(np.int64)
    i_off = np.concatenate([[0], np.cumsum(n_images)]).astype(np.int64)
    points = torch.from_numpy(np.concatenate([s.points for s in samples]).astype(np.float32, copy=False))
    batch_idx = torch.from_numpy(np.repeat(np.arange(len(samples), dtype=np.int64), n_points))
    labels = None
    if all(s.labels is not None for s in samples):
        labels = torch.from_numpy(np.concatenate([s.labels for s in samples]).astype(np.int64, copy=False))
    images = None
    all_images = [img for s in samples for img in s.images]
    if all_images:
        shapes = {img.shape for img in all_images}
        if len(shapes) != 1:
            raise ValueError(f"collate: images of different sizes {sorted(shapes)}; resize them in "
                             "prepare_sample (image_hw)")
        images = normalize_images(np.stack(all_images))
    image_batch = torch.from_numpy(np.repeat(np.arange(len(samples), dtype=np.int64), n_images))
    pair_point = np.concatenate([s.pair_point + p_off[b] for b, s in enumerate(samples)]).astype(np.int64)
    pair_image = np.concatenate([s.pair_view + i_off[b] for b, s in enumerate(samples)]).astype(np.int64)
    pair_uv = np.concatenate([s.pair_uv for s in samples]).astype(np.float32, copy=False).reshape(-1, 2)
    label_image = label_uv = label_class = None
    if all(s.label_view is not None for s in samples):
        label_image = torch.from_numpy(
            np.concatenate([s.label_view + i_off[b] for b, s in enumerate(samples)]).astype(np.int64))
        label_uv = torch.from_numpy(
            np.concatenate([s.label_uv for s in samples]).astype(np.float32, copy=False).reshape(-1, 2))
        label_class = torch.from_numpy(np.concatenate([s.label_class for s in samples]).astype(np.int64))
    return Batch(
        points=points,
        batch_idx=batch_idx,
        labels=labels,
        images=images,
        image_batch=image_batch,
        pair_point=torch.from_numpy(pair_point),
        pair_image=torch.from_numpy(pair_image),
        pair_uv=torch.from_numpy(pair_uv),
        num_samples=len(samples),
        point_offsets=p_off.tolist(),
        kept_index=[s.kept_index for s in samples],
        num_input_points=[s.num_input_points for s in samples],
        meta=[(s.sequence, s.frame_id) for s in samples],
        label_image=label_image,
        label_uv=label_uv,
        label_class=label_class,
    )


# ----------------------------------------------------------------------- images with dense labels


@dataclass
class ViewSample:
    """One camera image and its per-pixel learning ids, augmented and resized to the network size."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    classes: np.ndarray  # (H, W) uint8 learning ids, 0 = ignore
    meta: tuple[str, str, str] = ("", "", "")  # (sequence, frame_id, view)


def prepare_view_sample(
    image: np.ndarray,
    classes: np.ndarray,
    *,
    train: bool,
    rng: np.random.Generator | None,
    image_aug: ImageAugConfig | None,
    image_hw: tuple[int, int],
    meta: tuple[str, str, str] = ("", "", ""),
) -> ViewSample:
    """The same crop / resize / flip for the image (area or bilinear) and its labels (nearest, exact
    pixel centres), colour jitter on the image only; without `train` a plain resize to `image_hw`."""
    if image.shape[:2] != classes.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and class image {classes.shape[:2]} differ in size")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be (H, W) with H, W >= 1, got {image_hw}")
    out_hw = (int(image_hw[0]), int(image_hw[1]))
    h, w = image.shape[:2]
    if train and image_aug is not None:
        if rng is None:
            raise ValueError("prepare_view_sample: rng is required when training with augmentation")
        params = sample_view_aug(rng, image_aug, (h, w), out_hw)
    else:
        params = ViewAugParams(0, 0, w, h, out_hw[0], out_hw[1])
    rgb = colour_jitter(warp_image(image, params), params)
    ids = warp_image(np.ascontiguousarray(classes, dtype=np.uint8), params, cv2.INTER_NEAREST_EXACT)
    return ViewSample(rgb, ids, meta)


@dataclass
class ImageBatch:
    """Images with dense per-pixel labels: the batch of the camera teacher's stage."""

    images: Tensor  # (I, 3, H, W) float32 ImageNet-normalised
    classes: Tensor  # (I, H, W) int64 learning ids, 0 = ignore
    meta: list[tuple[str, str, str]] = field(default_factory=list)  # (sequence, frame_id, view)

    @property
    def num_samples(self) -> int:
        """Images in the batch (the unit of the trainer's throughput log)."""
        return int(self.images.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=non_blocking),
                          self.classes.to(device, non_blocking=non_blocking), self.meta)

    def pin_memory(self) -> ImageBatch:
        return ImageBatch(self.images.pin_memory(), self.classes.pin_memory(), self.meta)


def collate_views(samples: list[ViewSample]) -> ImageBatch:
    """Stack view samples (all of one size) into an `ImageBatch`."""
    if not samples:
        raise ValueError("collate_views: no samples")
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_views: images of different sizes {sorted(shapes)}; resize them first")
    images = normalize_images(np.stack([s.image for s in samples]))
    classes = torch.from_numpy(np.stack([s.classes for s in samples]).astype(np.int64))
    return ImageBatch(images, classes, [s.meta for s in samples])
