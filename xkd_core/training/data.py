"""Datasets and loaders for training: resumable data order and per-sample augmentation seeds.

The training sampler is `DistributedSampler` (one shard per rank, reshuffled per epoch from
`seed + epoch`) wrapped so that it yields `(epoch, index)` keys and can start mid-epoch. The dataset
wrapper seeds each sample's augmentation from `(seed, epoch, index)`. Together with a loader
generator seeded per epoch, the stream of batches is a pure function of (config, step): a run
resumed at step k sees exactly the batches an uninterrupted run sees from step k on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from xkd_core.classes import IGNORE_INDEX
from xkd_core.data.collate import collate, prepare_sample
from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.frame import Frame
from xkd_core.geometry.projection import in_any_view, views_of
from xkd_core.training.config import TrainConfig
from xkd_core.training.distributed import DistInfo
from xkd_core.training.seeding import sample_rng, worker_init_fn

#: Seed of the labeled-point subset under `data.label_fraction`: a property of the data set, so it is
#: the same for every training seed and both methods.
LABEL_SUBSET_SEED = 20240917


def keep_label_fraction(frame: Frame, fraction: float, index: int, keep_frustum: bool = False) -> Frame:
    """Set all but a fixed random `fraction` of the scan's labels to ignore (weak supervision);
    with `keep_frustum` the points a camera of the frame sees keep theirs too."""
    if fraction >= 1.0 or frame.labels is None:
        return frame
    rng = np.random.default_rng([LABEL_SUBSET_SEED, index])
    drop = rng.random(frame.num_points) >= fraction
    if keep_frustum:
        if not frame.views:
            raise ValueError(
                f"data.label_frustum: frame {frame.sequence}/{frame.frame_id} has no camera view")
        drop &= ~in_any_view(frame.points[:, :3], views_of(frame.views))
    labels = frame.labels.copy()
    labels[drop] = IGNORE_INDEX
    return dataclasses.replace(frame, labels=labels)


def subsample(frame: Frame, max_points: int | None, rng: np.random.Generator) -> Frame:
    """Keep a uniform random subset of at most `max_points` points (labels and instances follow)."""
    if max_points is None or frame.num_points <= max_points:
        return frame
    keep = np.sort(rng.choice(frame.num_points, size=max_points, replace=False))
    return dataclasses.replace(
        frame,
        points=frame.points[keep],
        labels=None if frame.labels is None else frame.labels[keep],
        instance=None if frame.instance is None else frame.instance[keep],
    )


class SampleDataset(Dataset):
    """`Frame` dataset -> model-ready `Sample`s via `prepare_sample`.

    Keys are `(epoch, index)` during training (augmentation seeded per epoch and sample) or plain
    indices for validation (no augmentation, full scans).
    """

    def __init__(self, frames: Dataset, cfg: TrainConfig, train: bool) -> None:
        self.frames = frames
        self.cfg = cfg
        self.train = train

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.cfg.seed, epoch, index)
        frame = self.frames[index]
        if frame.labels is None:
            raise ValueError(f"frame {frame.sequence}/{frame.frame_id} has no labels; training needs them")
        d = self.cfg.data
        use_camera = self.cfg.model.use_camera and self.train
        label_points = None
        if self.train:
            frame = keep_label_fraction(frame, d.label_fraction, index, d.label_frustum)
            if use_camera and d.image_labels == "scan":
                labeled = frame.labels != IGNORE_INDEX
                label_points = (frame.points[labeled], frame.labels[labeled])
            frame = subsample(frame, d.max_points, rng)
        return prepare_sample(
            frame,
            train=self.train,
            rng=rng,
            point_aug=d.point_aug,
            image_aug=d.image_aug,
            image_hw=tuple(d.image_hw),
            use_camera=use_camera,
            label_points=label_points,
        )


class ResumableSampler(Sampler):
    """`DistributedSampler` order for one epoch, as `(epoch, index)` keys, optionally from sample `start`."""

    def __init__(
        self, size: int, info: DistInfo, seed: int, epoch: int, start: int = 0, shuffle: bool = True
    ) -> None:
        self._inner = DistributedSampler(
            range(size), num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed
        )
        self._inner.set_epoch(epoch)
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return max(len(self._inner) - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i, index in enumerate(self._inner):
            if i >= self.start:
                yield (self.epoch, index)


class ShardSampler(Sampler):
    """Validation shard of one rank: every `world_size`-th scan, no padding (no scan counted twice)."""

    def __init__(self, size: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, size, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def build_frame_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training and (optional) validation `Frame` datasets named by `cfg.data`."""
    d = cfg.data
    cameras = tuple(d.cameras) if cfg.model.use_camera or d.label_frustum else ()
    if d.source == "pairlog":
        from xkd_core.data.pairlog import PairLogDataset

        train: Dataset = PairLogDataset(d.root, min_confidence=d.pairlog_min_confidence)
    else:
        train = SemanticKittiDataset(d.root, split="train", sequences=d.train_sequences, cameras=cameras)
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError(f"data.root {d.root!r}: the training set is empty")
    val_root = d.val_root or d.root
    if d.val_sequences == []:
        return train, None
    if d.source == "pairlog" and d.val_root is None:
        return train, None  # pair logs carry pseudo-labels only: nothing to validate against
    val = SemanticKittiDataset(val_root, split="val", sequences=d.val_sequences, cameras=())
    return train, (val if len(val) else None)


def batches_per_epoch(size: int, info: DistInfo, batch_size: int) -> int:
    """Optimizer steps in one epoch on every rank (DistributedSampler pads shards to equal length)."""
    per_rank = -(-size // info.world_size)
    return -(-per_rank // batch_size)


def _generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def train_loader(
    samples: SampleDataset, cfg: TrainConfig, info: DistInfo, epoch: int, start_batch: int = 0
) -> DataLoader:
    """The loader of one training epoch, starting at batch `start_batch` (exact resume)."""
    bs = cfg.data.batch_size
    sampler = ResumableSampler(len(samples), info, cfg.seed, epoch, start=start_batch * bs)
    return DataLoader(
        samples,
        batch_sampler=BatchSampler(sampler, bs, drop_last=False),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        generator=_generator(cfg.seed, epoch),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def val_loader(samples: SampleDataset, cfg: TrainConfig, info: DistInfo) -> DataLoader:
    """This rank's validation loader (full scans, no augmentation)."""
    return DataLoader(
        samples,
        batch_size=cfg.data.val_batch_size,
        sampler=ShardSampler(len(samples), info),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
        generator=_generator(cfg.seed, -1),
        pin_memory=torch.cuda.is_available(),
    )
