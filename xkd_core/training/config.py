"""`TrainConfig`: everything one training run needs, loaded strictly from YAML with presets.

A config file holds a mapping plus `presets: {name: {...}}`; a preset is deep-merged onto it (so one
file carries both the full-size GPU recipe and a CPU recipe on the synthetic world), then `--set
key.path=value` overrides apply, then `xkd_core.config.from_dict` validates every key and type. A
file may start from another with `base: other.yaml` (a path relative to the file): the other file,
presets included, is deep-merged under it, so a variant states only how it differs. The resolved
config is what a checkpoint embeds, so a run is reproducible from it alone.

Model keys in the flat layout of earlier configs (`model.wkd`) are moved into their sections
(`model.distillation.wkd`) wherever they come from: files, overrides and checkpoints
(`xkd_core.models.model_config.migrate_model_dict`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from xkd_core.config import ConfigError, apply_overrides, from_dict, load_yaml
from xkd_core.data.views import camera_selectors
from xkd_core.geometry.augment import ImageAugConfig, PointAugConfig
from xkd_core.models.model_config import (
    REMOVED,
    ModelConfig,
    is_off,
    migrate_model_dict,
    migrate_model_path,
    removed_switch_error,
)


def _sequence_ids(values: list[str | int] | None, where: str) -> list[str] | None:
    """YAML reads `08` as a string but `07` as the octal int 7: accept both, store `"07"`."""
    if values is None:
        return None
    out = []
    for v in values:
        s = str(v).strip()
        if not s.isdigit():
            raise ValueError(f"{where}: sequence id {v!r} is not a number like '08'")
        out.append(f"{int(s):02d}")
    return out


@dataclass
class MixConfig:
    """Labeled scans mixed into a fine-tune on a pair log (`data.source: pairlog`), so that the model
    keeps what it knew: every batch holds `data.batch_size` logged scans, which teach through the
    camera only, plus `per_batch` scans of a SemanticKITTI-format root with their labels (e.g. the
    data the deployed model was trained on), drawn from a stream of their own."""

    #: SemanticKITTI-format root; None = the log alone.
    root: str | None = None
    #: Its sequences; None = the official train split.
    sequences: list[str | int] | None = None
    per_batch: int = 1

    def __post_init__(self) -> None:
        if self.root is not None and not self.root:
            raise ValueError("data.mix.root must name a SemanticKITTI-format folder (or null for none)")
        self.sequences = _sequence_ids(self.sequences, "data.mix.sequences")
        if self.per_batch < 1:
            raise ValueError(f"data.mix.per_batch must be >= 1, got {self.per_batch}")


@dataclass
class DataConfig:
    """Where the scans come from and how they are turned into batches."""

    root: str
    source: Literal["semantickitti", "pairlog"] = "semantickitti"
    #: SemanticKITTI sequences to train on; None = the official train split. Ignored for `pairlog`,
    #: whose `root` is the log directory (no labels: the camera teaches, `docs/fleet_loop.md`).
    train_sequences: list[str | int] | None = None
    #: Sequences to validate on (with ground truth); None = the official val split, [] = no validation.
    val_sequences: list[str | int] | None = None
    #: SemanticKITTI root holding `val_sequences`; None = `root` (needed when `source` is `pairlog`).
    val_root: str | None = None
    #: `source: pairlog` only: labeled scans added to every batch of the log's (see `MixConfig`).
    mix: MixConfig = field(default_factory=lambda: MixConfig())
    #: Views per frame (`xkd_core.data.views`): KITTI indices 2 / 3, view names (`CAM_FRONT`), or `all`;
    #: of a pair log, the logged views of those names (KITTI index 2 = the view `image_2`).
    cameras: list[int | str] | str = field(default_factory=lambda: [2])
    image_hw: tuple[int, int] = (320, 960)
    point_aug: PointAugConfig = field(default_factory=PointAugConfig)
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    batch_size: int = 2
    val_batch_size: int = 1
    num_workers: int = 4
    #: Random subsample of each training scan to at most this many points (CPU runs); None = all.
    max_points: int | None = None
    #: Weak supervision: keep the labels of only this fraction of each training scan's points (the
    #: same points every epoch and run, as if an annotator had labeled them once); the rest become ignore.
    label_fraction: float = 1.0
    #: Also keep the label of every point a camera sees (with `label_fraction` < 1): a diagnostic,
    #: the "perfect teacher" - the supervision that an error-free camera teacher would add in the frustum.
    label_frustum: bool = False
    #: The camera branch's 2D cross-entropy learns from the labeled points it sees among the points
    #: kept for the 3D network ("sampled"), or among all of the scan's ("scan"): `max_points` bounds
    #: the 3D network's cost, and with "sampled" it also withholds the rest of the labels from the
    #: camera branch (with 20k of 128k points, 84 % of them).
    image_labels: Literal["sampled", "scan"] = "sampled"
    #: A few fully labeled scans among many unlabeled paired ones: only this many training scans keep
    #: their labels (evenly spaced over the training set, the same for every run); the others teach
    #: through the camera terms only. None = every scan keeps its labels (`label_fraction` still applies).
    labeled_scans: int | None = None
    #: With `labeled_scans`: each batch holds `batch_size` labeled scans plus this many unlabeled ones
    #: (None = `batch_size`) when the model learns from unlabeled scans (camera with wkd or wc > 0); a
    #: model that does not (the LiDAR-only baseline) sees the same labeled batches alone.
    unlabeled_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("data.root must name the dataset folder")
        self.train_sequences = _sequence_ids(self.train_sequences, "data.train_sequences")
        self.val_sequences = _sequence_ids(self.val_sequences, "data.val_sequences")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise ValueError("data.batch_size and data.val_batch_size must be >= 1")
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"data.label_fraction must lie in (0, 1], got {self.label_fraction}")
        if self.max_points is not None and self.max_points < 1:
            raise ValueError("data.max_points must be >= 1 (or null for all points)")
        if len(self.image_hw) != 2 or min(self.image_hw) < 1:
            raise ValueError(f"data.image_hw must be two positive sizes (H, W), got {self.image_hw}")
        if self.mix.root is not None and self.source != "pairlog":
            raise ValueError("data.mix adds labeled scans to the batches of a pair log (data.source: "
                             "pairlog); a SemanticKITTI-format source trains on its own labels")
        if self.source == "pairlog" and self.labeled_scans is not None:
            raise ValueError("data.labeled_scans chooses labeled scans of a SemanticKITTI-format source; a "
                             "pair log has no labels (data.mix adds labeled scans to its batches)")
        if self.labeled_scans is not None and self.labeled_scans < 0:
            raise ValueError(f"data.labeled_scans must be >= 0 (or null), got {self.labeled_scans}")
        if self.unlabeled_batch_size is not None and self.unlabeled_batch_size < 1:
            raise ValueError(f"data.unlabeled_batch_size must be >= 1 (or null), "
                             f"got {self.unlabeled_batch_size}")
        if self.image_labels not in ("sampled", "scan"):
            raise ValueError(f"data.image_labels must be 'sampled' or 'scan', got {self.image_labels!r}")
        try:
            self.cameras = camera_selectors(self.cameras)
        except ValueError as exc:
            raise ValueError(f"data.cameras: {exc}") from None


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and the training budget (`steps` or `epochs`, not both)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9  # sgd only (nesterov)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    #: Linear warm-up from 0 (cosine/constant); for onecycle it is the rising phase.
    warmup_steps: int = 0
    #: The cosine schedule ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.0
    steps: int | None = None
    epochs: int | None = None
    #: Max global gradient norm; null disables clipping.
    clip_grad_norm: float | None = 10.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError("optim.weight_decay must be >= 0")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of optim.steps and optim.epochs")
        if (self.steps is not None and self.steps < 1) or (self.epochs is not None and self.epochs < 1):
            raise ValueError("optim.steps / optim.epochs must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError("optim.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must lie in [0, 1]")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError("optim.clip_grad_norm must be > 0 (or null to disable)")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: Top-level modules of XModelKD that `init_modules` can name.
INIT_MODULES = ("image_net", "unet", "point_head", "proj_3d", "proj_2d", "fusion_head")


@dataclass
class TrainConfig:
    """One training run: model, data, optimisation and bookkeeping."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    out_dir: str
    #: "lidar": the LiDAR branch (alone, or taught by the camera); "camera": the camera branch alone on
    #: images with dense per-pixel labels (`class_<view>/` of the data's views), validated by pixel
    #: mIoU: the camera teacher, whose checkpoint a "lidar" run loads (`init_modules: [image_net]`).
    stage: Literal["lidar", "camera"] = "lidar"
    #: Mixed precision on the GPU (ignored, with a warning, on the CPU).
    amp: Literal["none", "bf16", "fp16"] = "none"
    seed: int = 0
    #: Reproducible runs (slower): deterministic cuDNN / cuBLAS kernels on the GPU; on the CPU one torch
    #: thread, since multi-threaded CPU kernels sum in a varying order (two 2-thread runs diverge).
    deterministic: bool = False
    #: auto | cpu | cuda | cuda:N; under torchrun each process uses cuda:LOCAL_RANK.
    device: str = "auto"
    #: Sparse-convolution library of this run (a run setting: checkpoints load under any backend).
    sparse_backend: Literal["auto", "spconv", "spconv_triton"] = "auto"
    log_every: int = 10
    #: Validate every this many steps (0 = only at the end of training).
    val_every: int = 0
    #: Write last.pt every this many steps (0 = only at the end of training).
    ckpt_every: int = 0
    #: Checkpoint whose weights start the run (fine-tuning, e.g. on pair logs); optimiser starts fresh.
    init_checkpoint: str | None = None
    #: Only these parts of `init_checkpoint` (module names of XModelKD: image_net, unet, point_head,
    #: proj_3d, proj_2d, fusion_head); null = every weight it has. `[image_net]` takes a camera
    #: teacher and leaves the 3D network at this run's seed init, as the baseline's.
    init_modules: list[str] | None = None
    #: Take `model.architecture` and `data.image_hw` from `init_checkpoint` instead of this file: a
    #: fine-tune of whatever model is deployed (config/train/fleet_finetune.yaml) needs no preset that
    #: matches it. The resolved config (what checkpoints embed) holds the adopted values.
    init_architecture: bool = False
    #: Checkpoint whose camera branch (`image_net`) is loaded after `init_checkpoint`, to teach frozen
    #: (`distillation.freeze_camera`): an explicit camera teacher instead of the fine-tuned model's own.
    teacher_checkpoint: str | None = None
    #: DDP: allow parameters that get no gradient in a step (e.g. no point-pixel pairs in a batch).
    find_unused_parameters: bool = True
    #: DDP on GPUs: BatchNorm statistics over all ranks (SyncBatchNorm; gloo/CPU has none, there the
    #: running statistics are averaged over ranks before every validation and checkpoint instead).
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ValueError("out_dir must name the run folder")
        if not _DEVICE.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if self.val_every < 0 or self.ckpt_every < 0:
            raise ValueError("val_every and ckpt_every must be >= 0")
        if self.model.backend not in ("auto", self.sparse_backend):
            raise ValueError(f"model.backend ({self.model.backend!r}) disagrees with sparse_backend "
                             f"({self.sparse_backend!r}); choose the backend with sparse_backend only")
        if self.model.use_camera and not self.data.cameras:
            raise ValueError("model.use_camera is true but data.cameras is empty")
        if self.stage not in ("lidar", "camera"):
            raise ValueError(f"stage must be 'lidar' or 'camera', got {self.stage!r}")
        frozen = self.model.use_camera and self.model.distillation.freeze_camera
        if self.stage == "camera" and (not self.model.use_camera or frozen):
            raise ValueError("stage: camera trains the camera branch: it needs model.use_camera true and "
                             "model.distillation.freeze_camera false")
        if self.init_modules is not None:
            unknown = sorted(set(self.init_modules) - set(INIT_MODULES))
            if unknown or not self.init_modules:
                raise ValueError(f"init_modules: unknown or empty {unknown or self.init_modules}; choose "
                                 f"among {list(INIT_MODULES)} (or null for every weight)")
            if self.init_checkpoint is None:
                raise ValueError("init_modules needs init_checkpoint")
        if self.init_architecture and self.init_checkpoint is None:
            raise ValueError("init_architecture takes the model of init_checkpoint: set init_checkpoint "
                             "(e.g. the deployed model)")
        if self.teacher_checkpoint is not None:
            if not self.teacher_checkpoint:
                raise ValueError("teacher_checkpoint must name a checkpoint (or null for none)")
            if self.stage != "lidar" or not frozen:
                raise ValueError("teacher_checkpoint loads a frozen camera teacher: it needs stage lidar, "
                                 "model.use_camera true and model.distillation.freeze_camera true")
        kd = self.model.distillation
        loads_camera = self.teacher_checkpoint is not None or (
            self.init_checkpoint is not None
            and (self.init_modules is None or "image_net" in self.init_modules))
        if self.stage == "lidar" and frozen and kd.wkd > 0 and kd.kd_teacher == "2d" and not loads_camera:
            raise ValueError("model.distillation.freeze_camera with kd_teacher 2d: a frozen camera branch "
                             "teaches what it was trained on: load one with init_checkpoint (a stage: camera "
                             "run) and init_modules holding image_net, or with teacher_checkpoint")
        if self.data.source == "pairlog" and self.stage == "lidar" and self.data.mix.root is None:
            learns = self.model.use_camera and (kd.wkd > 0 or self.model.losses.wc > 0)
            if not learns:
                raise ValueError("data.source pairlog: a pair log has no labels, so the model learns from it "
                                 "through the camera only (model.use_camera with distillation.wkd or "
                                 "losses.wc > 0); with neither, and no data.mix, there is nothing to train "
                                 "on")


#: Run settings removed with the model switches they served (see model_config.REMOVED), each with the
#: value that left it off: `init_skip` kept parts of `init_checkpoint` fresh, for the camera teacher
#: trained first of the pseudo-label experiments.
REMOVED_RUN_KEYS = {"init_skip": []}
#: `data:` keys removed, with the value that left them off: `pairlog_min_confidence` kept the node's
#: confident predictions of a pair log as labels; a pair log now teaches through the camera only.
REMOVED_DATA_KEYS = {"pairlog_min_confidence": 0.0}


def removed_data_key_error(key: str, value: object) -> ConfigError:
    """The error for a removed `data:` key set to something other than its off value."""
    return ConfigError(
        f"data.{key} = {value!r}: removed. Training on a pair log no longer takes the node's own predictions "
        "as labels (its errors fed back); the log's camera images teach the LiDAR branch through the "
        "frozen camera branch (config/train/fleet_finetune.yaml, docs/fleet_loop.md). Only "
        f"{REMOVED_DATA_KEYS[key]!r} is accepted")


def migrate_train_dict(data: dict, where: str = "") -> dict:
    """A copy of a training mapping (or preset) in today's layout: the `model:` mapping migrated
    (`migrate_model_dict`), removed run settings that are off dropped, others refused."""
    out = dict(data)
    if "model" in out:
        out["model"] = migrate_model_dict(out["model"], f"{where}model")
    for key, off in REMOVED_RUN_KEYS.items():
        if key in out:
            value = out.pop(key)
            if value != off:
                raise removed_switch_error(where.rstrip(".") or "config", key, value, off)
    if isinstance(out.get("data"), dict):
        out["data"] = dict(out["data"])
        for key, off in REMOVED_DATA_KEYS.items():
            if key in out["data"]:
                value = out["data"].pop(key)
                if value != off:
                    raise removed_data_key_error(key, value)
    return out


def migrate_overrides(overrides: Iterable[str]) -> list[str]:
    """`--set` overrides in today's layout: `model.wkd=0.5` -> `model.distillation.wkd=0.5`; a removed
    switch set to its off value is dropped, to anything else refused."""
    out = []
    for item in overrides:
        path, eq, raw = item.partition("=")
        keys = path.strip().split(".")
        if not eq or len(keys) > 2:
            out.append(item)
            continue
        if keys[0] == "model" and len(keys) == 2:
            moved = migrate_model_path(keys[1:])
            if moved is None:
                value = yaml.safe_load(raw)
                if not is_off(keys[1], value):
                    raise removed_switch_error("model", keys[1], value, REMOVED[keys[1]])
                continue
            out.append(".".join(["model", *moved]) + "=" + raw)
        elif len(keys) == 2 and keys[0] == "data" and keys[1] in REMOVED_DATA_KEYS:
            value = yaml.safe_load(raw)
            if value != REMOVED_DATA_KEYS[keys[1]]:
                raise removed_data_key_error(keys[1], value)
        elif len(keys) == 1 and keys[0] in REMOVED_RUN_KEYS:
            value = yaml.safe_load(raw)
            if value != REMOVED_RUN_KEYS[keys[0]]:
                raise removed_switch_error("config", keys[0], value, REMOVED_RUN_KEYS[keys[0]])
        else:
            out.append(item)
    return out


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _migrate_file(data: dict, path: Path) -> dict:
    """One file's mapping and its presets in today's layout; errors name the file."""
    try:
        data = migrate_train_dict(data)
        presets = data.get("presets")
        if isinstance(presets, dict):
            data["presets"] = {name: migrate_train_dict(p, f"presets.{name}.") if isinstance(p, dict) else p
                               for name, p in presets.items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return data


def load_layered_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its `base:` file (and that file's base, ...) deep-merged under it.

    `base` is a path relative to the file that names it; a chain that comes back to a file it already
    holds is refused (it would never end), as is a base that is not a file name or not found.
    """
    path = Path(path)
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, here))
        raise ConfigError(f"{path}: 'base' files form a cycle: {cycle}")
    data = load_yaml(path)
    base = data.pop("base", None)
    data = _migrate_file(data, path)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: 'base' must name another config file, relative to {path.parent}, "
                          f"got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base file {base!r} not found (looked for {base_path})")
    return _deep_merge(load_layered_yaml(base_path, (*_chain, here)), data)


def resolve_train_dict(path: str | Path, preset: str | None = None, overrides: Iterable[str] = ()) -> dict:
    """The raw mapping of a config file (with its `base:` chain) after applying `preset` and
    `key.path=value` overrides."""
    data = load_layered_yaml(path)
    presets = data.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"{path}: 'presets' must be a mapping of name -> settings")
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path}: unknown preset {preset!r}; available: {sorted(presets)}")
        if not isinstance(presets[preset], dict):
            raise ConfigError(f"{path}: preset {preset!r} must be a mapping")
        data = _deep_merge(data, presets[preset])
    # migrated again: an override may replace a whole mapping (`model={...}`) in the flat layout
    return migrate_train_dict(apply_overrides(data, migrate_overrides(overrides)))


def load_train_config(
    path: str | Path, preset: str | None = None, overrides: Iterable[str] = ()
) -> TrainConfig:
    """Load and validate a training config (file + preset + overrides); errors name file and key."""
    where = f"{path}" + (f" (preset {preset!r})" if preset else "")
    try:
        data = resolve_train_dict(path, preset, overrides)
        return from_dict(TrainConfig, data)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{where}: {msg}") from exc


def train_config_from_dict(data: dict, overrides: Iterable[str] = ()) -> TrainConfig:
    """Validate an already-resolved mapping (e.g. the one embedded in a checkpoint, flat layout
    included), after `key.path=value` overrides."""
    data = migrate_train_dict(copy.deepcopy(data))
    return from_dict(TrainConfig, migrate_train_dict(apply_overrides(data, migrate_overrides(overrides))))
