"""Datasets and loaders for training: resumable data order and per-sample augmentation seeds.

The training sampler is `DistributedSampler` (one shard per rank, reshuffled per epoch from
`seed + epoch`) wrapped so that it yields `(epoch, index)` keys and can start mid-epoch. The dataset
wrapper seeds each sample's augmentation from `(seed, epoch, index)`. Together with a loader
generator seeded per epoch, the stream of batches is a pure function of (config, step): a run
resumed at step k sees exactly the batches an uninterrupted run sees from step k on.

With `data.labeled_scans` (a few labeled scans, many unlabeled paired ones) an epoch is one pass over
the labeled scans, and a model that learns from unlabeled scans gets `unlabeled_batch_size` of them
added to every batch from a stream of its own whose position is also a function of the step
(`LabeledUnlabeledBatchSampler`). A pair log (`data.source: pairlog`) gives unlabeled scans that
teach through the camera only (`LogFrames`); with `data.mix` an epoch is one pass over the log and
every batch gets `mix.per_batch` labeled scans the same way. The camera teacher's stage (`stage:
camera`) samples single images with dense labels (`ViewSampleDataset`) the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from xkd_core.classes import IGNORE_INDEX
from xkd_core.data.collate import collate, collate_views, prepare_sample, prepare_view_sample
from xkd_core.data.dataset import SemanticKittiDataset, ViewImageDataset
from xkd_core.data.frame import Frame
from xkd_core.evaluation.agreement import evenly_spaced
from xkd_core.geometry.projection import in_any_view, views_of
from xkd_core.training.config import TrainConfig
from xkd_core.training.distributed import DistInfo
from xkd_core.training.seeding import sample_rng, worker_init_fn

#: Seed of the labeled-point subset under `data.label_fraction`: a property of the data set, so it is
#: the same for every training seed and both methods.
LABEL_SUBSET_SEED = 20240917
#: Stream id of the unlabeled scans' order under `data.labeled_scans` (mixed with the run's seed).
UNLABELED_STREAM = 7451


def labeled_scan_indices(num_scans: int, labeled_scans: int) -> np.ndarray:
    """The training scans that keep labels under `data.labeled_scans`: evenly spaced over the data set
    (first and last included), so they sample its variety and are the same for every seed and method."""
    return np.asarray(evenly_spaced(num_scans, labeled_scans), dtype=np.int64)


def learns_from_unlabeled(cfg: TrainConfig) -> bool:
    """Whether the model has a term that an unlabeled paired scan feeds (the KL or InfoNCE)."""
    m = cfg.model
    return m.use_camera and (m.distillation.wkd > 0 or m.losses.wc > 0)


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

    collate_fn = staticmethod(collate)

    def __init__(self, frames: Dataset, cfg: TrainConfig, train: bool) -> None:
        self.frames = frames
        self.cfg = cfg
        self.train = train
        #: Under `data.labeled_scans` (training only): the scans that keep labels and the others.
        self.labeled: np.ndarray | None = None
        self.unlabeled: np.ndarray | None = None
        k = cfg.data.labeled_scans
        if train and k is not None:
            n = len(frames)  # type: ignore[arg-type]
            self.labeled = labeled_scan_indices(n, k)
            self.unlabeled = np.setdiff1d(np.arange(n, dtype=np.int64), self.labeled)
            self._labeled_set = set(self.labeled.tolist())
            if not len(self.labeled) and not learns_from_unlabeled(cfg):
                raise ValueError("data.labeled_scans is 0 and the model learns nothing from unlabeled scans "
                                 "(it needs a camera with wkd or wc > 0): there is nothing to train on")

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def is_labeled(self, index: int) -> bool:
        """Whether training scan `index` keeps its labels (always, without `data.labeled_scans`)."""
        return self.labeled is None or index in self._labeled_set

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.cfg.seed, epoch, index)
        frame = self.frames[index]
        if self.train and not self.is_labeled(index):  # an unlabeled paired scan: no label at all
            frame = dataclasses.replace(frame, labels=np.full(frame.num_points, IGNORE_INDEX, np.int64))
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


class ViewSampleDataset(Dataset):
    """Images with dense labels (`ViewImageDataset`) -> augmented, resized `ViewSample`s: the camera
    teacher's data. Keys as in `SampleDataset`."""

    collate_fn = staticmethod(collate_views)

    def __init__(self, images: Dataset, cfg: TrainConfig, train: bool) -> None:
        self.images = images
        self.cfg = cfg
        self.train = train

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item = self.images[index]
        return prepare_view_sample(item.image, item.classes, train=self.train,
                                   rng=sample_rng(self.cfg.seed, epoch, index),
                                   image_aug=self.cfg.data.image_aug, image_hw=tuple(self.cfg.data.image_hw),
                                   meta=(item.sequence, item.frame_id, item.view))


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


class LabeledUnlabeledBatchSampler(Sampler):
    """One epoch of batches under `data.labeled_scans`: `batch_size` labeled scans (the
    `ResumableSampler` order over the labeled ones) and `unlabeled_size` unlabeled scans each.

    The unlabeled scans come from a stream of passes, each a permutation seeded by (seed, pass); the
    position of global step s on rank r is `(s * world + r) * unlabeled_size`, so the batches are a
    pure function of (config, step) as everywhere else, and ranks draw different scans.
    """

    def __init__(self, labeled: np.ndarray, unlabeled: np.ndarray, batch_size: int, unlabeled_size: int,
                 info: DistInfo, seed: int, epoch: int, start_batch: int = 0) -> None:
        if unlabeled_size and not len(unlabeled):
            raise ValueError("LabeledUnlabeledBatchSampler: unlabeled scans asked for, but every scan is "
                             "labeled")
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch_size, self.unlabeled_size = batch_size, unlabeled_size
        self.info, self.seed, self.epoch, self.start_batch = info, seed, epoch, start_batch
        self.steps_per_epoch = batches_per_epoch(len(labeled), info, batch_size)
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_batch, 0)

    def _unlabeled_key(self, position: int) -> tuple[int, int]:
        n = len(self.unlabeled)
        p, r = divmod(position, n)
        if p not in self._perms:
            self._perms = {p: np.random.default_rng([self.seed, UNLABELED_STREAM, p]).permutation(n)}
        return (p, int(self.unlabeled[self._perms[p][r]]))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        inner = ResumableSampler(len(self.labeled), self.info, self.seed, self.epoch,
                                 start=self.start_batch * self.batch_size)
        keys = [(e, int(self.labeled[i])) for e, i in inner]
        for b in range(0, len(keys), self.batch_size):
            step = self.epoch * self.steps_per_epoch + self.start_batch + b // self.batch_size
            first = (step * self.info.world_size + self.info.rank) * self.unlabeled_size
            yield keys[b:b + self.batch_size] + [self._unlabeled_key(first + j)
                                                  for j in range(self.unlabeled_size)]


class ShardSampler(Sampler):
    """Validation shard of one rank: every `world_size`-th scan, no padding (no scan counted twice)."""

    def __init__(self, size: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, size, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def build_frame_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training and (optional) validation `Frame` datasets named by `cfg.data` (for `stage:
    camera`, `ViewImageDataset`s of the same sequences: images with dense labels)."""
    d = cfg.data
    if cfg.stage == "camera":
        return _view_datasets(cfg)
    cameras = tuple(d.cameras) if cfg.model.use_camera or d.label_frustum else ()
    if d.source == "pairlog":
        train: Dataset = log_frames(cfg, cameras)
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


class LogFrames(Dataset):
    """The training frames of a fine-tune on a pair log: the log's scans (indices `log_indices`), every
    label ignore, then the `data.mix` scans with their labels (`mix_indices`).

    Why no label from the log: its predictions are the deployed model's own, errors included; trained
    on, they would be fed back. A logged scan teaches through the camera terms only (the KL towards the
    frozen camera branch, InfoNCE if configured); the mixed scans keep the model on what it knew.
    """

    def __init__(self, log: Dataset, mix: Dataset | None = None) -> None:
        self.log, self.mix = log, mix
        n_log = len(log)  # type: ignore[arg-type]
        n_mix = 0 if mix is None else len(mix)  # type: ignore[arg-type]
        self.log_indices = np.arange(n_log, dtype=np.int64)
        self.mix_indices = n_log + np.arange(n_mix, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.log_indices) + len(self.mix_indices)

    def __getitem__(self, index: int) -> Frame:
        n_log = len(self.log_indices)
        if index < n_log:
            frame = self.log[index]
            return dataclasses.replace(frame, labels=np.full(frame.num_points, IGNORE_INDEX, np.int64))
        return self.mix[index - n_log]  # type: ignore[index]


def log_frames(cfg: TrainConfig, cameras: tuple[int | str, ...]) -> LogFrames:
    """`data.source: pairlog`: the log at `data.root` (views selected by `data.cameras`) and the labeled
    scans of `data.mix`, if any."""
    from xkd_core.data.pairlog import PairLogDataset

    d = cfg.data
    log = PairLogDataset(d.root, cameras=d.cameras if cfg.model.use_camera else "all")  # no camera: unused
    if len(log) == 0:
        raise ValueError(f"data.root {d.root!r}: the pair log holds no pair file")
    mix = None
    if d.mix.root is not None:
        mix = SemanticKittiDataset(d.mix.root, split="train", sequences=d.mix.sequences, cameras=cameras)
        if len(mix) == 0:
            raise ValueError(f"data.mix.root {d.mix.root!r}: no scan in sequences {d.mix.sequences}")
    return LogFrames(log, mix)


def _view_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    d = cfg.data
    if d.source != "semantickitti" or d.train_sequences is None or d.val_sequences is None:
        raise ValueError("stage: camera trains on SemanticKITTI-format sequences with class images: give "
                         "data.source semantickitti, data.train_sequences and data.val_sequences "
                         "([] for none)")
    train = ViewImageDataset(d.root, d.train_sequences, d.cameras)
    if not d.val_sequences:
        return train, None
    return train, ViewImageDataset(d.val_root or d.root, d.val_sequences, d.cameras)


def build_sample_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The model-ready training and (optional) validation datasets of the run's stage."""
    frames_train, frames_val = build_frame_datasets(cfg)
    wrap = ViewSampleDataset if cfg.stage == "camera" else SampleDataset
    val = None if frames_val is None else wrap(frames_val, cfg, train=False)
    return wrap(frames_train, cfg, train=True), val


def batch_streams(samples: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int] | None:
    """How batches are composed when they draw on two kinds of scans: (the scans an epoch passes over,
    `batch_size` of them per batch; the scans added to every batch from a stream of their own; how
    many of those per batch). Under `data.labeled_scans`: the labeled scans, and the unlabeled ones when
    the model learns from them. On a pair log with `data.mix`: the log's scans, and the mixed labeled
    ones. None: plain batches over the whole training set."""
    frames = getattr(samples, "frames", None)
    if isinstance(frames, LogFrames) and len(frames.mix_indices):
        return frames.log_indices, frames.mix_indices, cfg.data.mix.per_batch
    labeled = getattr(samples, "labeled", None)
    if labeled is not None and len(labeled):
        unlabeled = 0
        if learns_from_unlabeled(cfg) and len(samples.unlabeled):
            unlabeled = cfg.data.unlabeled_batch_size or cfg.data.batch_size
        return labeled, samples.unlabeled, unlabeled
    return None


def steps_per_epoch(samples: Dataset, cfg: TrainConfig, info: DistInfo) -> int:
    """Optimizer steps in one epoch: a pass over the training set, over its labeled scans under
    `data.labeled_scans` (all scans when none is labeled), or over the log's scans of a pair log."""
    streams = batch_streams(samples, cfg)
    if streams is not None:
        return batches_per_epoch(len(streams[0]), info, cfg.data.batch_size)
    return batches_per_epoch(len(samples), info, cfg.data.batch_size)  # type: ignore[arg-type]


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
    streams = batch_streams(samples, cfg)
    if streams is not None:  # the sampler's "labeled" scans drive the epoch, its "unlabeled" are added
        first, added, per_batch = streams
        batch_sampler: Sampler = LabeledUnlabeledBatchSampler(first, added, bs, per_batch, info, cfg.seed,
                                                              epoch, start_batch)
    else:
        sampler = ResumableSampler(len(samples), info, cfg.seed, epoch, start=start_batch * bs)
        batch_sampler = BatchSampler(sampler, bs, drop_last=False)
    return DataLoader(
        samples,
        batch_sampler=batch_sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=samples.collate_fn,
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
        collate_fn=samples.collate_fn,
        worker_init_fn=worker_init_fn,
        generator=_generator(cfg.seed, -1),
        pin_memory=torch.cuda.is_available(),
    )
