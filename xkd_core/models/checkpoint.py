"""The checkpoint file: written by training, read by evaluation, fine-tuning and the ROS node.

A checkpoint is a `torch.save`d dict::

    {"format_version": 1,
     "model": state_dict,                       # XModelKD, no DDP / torch.compile prefixes
     "config": {"model": ModelConfig as dict,   # the resolved config (sections; older: flat, migrated)
                "image_hw": [H, W] | None,      # network image size (None for the LiDAR-only model)
                "input_convention": {...}},     # InputConvention: the training points' intensity
     "class_names": [...],
     **extra}                                   # e.g. epoch, optimizer, metrics (plain data only)

It is written atomically (temporary file in the same folder, then `os.replace`), so a reader never
sees a torn file even if training is killed mid-write. Loading uses `weights_only=True`, so `extra`
must hold only tensors and plain Python data.

`input_convention` says what intensity the model was trained on, so the node can bring any driver's
intensity to it (`xkd_ros.intensity`). Checkpoints written before it existed (the model
shipped until 2026-12-04 among them) lack it and read as `LEGACY_INPUT_CONVENTION`: every xkd model so
far was trained on SemanticKITTI-format scans, whose intensity is 0..1 reflectance.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError, from_dict, to_dict
from xkd_core.models.model_config import migrate_model_dict
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD

FORMAT_VERSION = 1
_RESERVED = ("format_version", "model", "config", "class_names")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class InputConvention:
    """The point intensity the model was trained on: `0..intensity_max`, `intensity_fill` for none.

    SemanticKITTI and xkd-synth scans hold 0..1 reflectance (`intensity_max` 1). `intensity_fill` is
    what a point without intensity gets (a cloud with no intensity field); 0.0 unless the trainer
    knows better: the same value `Segmenter.segment` uses for (N, 3) points.
    """

    intensity_max: float = 1.0
    intensity_fill: float = 0.0
    #: Where the convention comes from, for logs and diagnostics.
    source: str = "SemanticKITTI-format reflectance 0..1"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.intensity_max) and self.intensity_max > 0):
            raise ValueError(f"intensity_max must be finite and > 0, got {self.intensity_max}")
        if not (math.isfinite(self.intensity_fill) and 0.0 <= self.intensity_fill <= self.intensity_max):
            raise ValueError(f"intensity_fill must lie in [0, intensity_max={self.intensity_max}], "
                             f"got {self.intensity_fill}")


#: What a checkpoint without `input_convention` reads as (see the module docstring).
LEGACY_INPUT_CONVENTION = InputConvention(
    source="not recorded in the checkpoint: assumed SemanticKITTI-format reflectance 0..1")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    extra: dict[str, Any] | None = None,
    image_hw: tuple[int, int] | None = None,
    input_convention: InputConvention | None = None,
) -> Path:
    """Atomically write `model`'s weights with its config, network image size and input convention.

    The image size is `image_hw`, else `extra["image_hw"]`, else `extra["train_config"]["data"]
    ["image_hw"]` (what xkd-train passes); a camera model without one is refused, because inference
    must resize images exactly as training did. `input_convention` defaults to `InputConvention()`
    (0..1 reflectance, fill 0).
    """
    path = Path(path)
    extra = dict(extra or {})
    if image_hw is None:
        image_hw = extra.pop("image_hw", None)
    if image_hw is None:
        train_cfg = extra.get("train_config")
        data = train_cfg.get("data") if isinstance(train_cfg, dict) else None
        image_hw = data.get("image_hw") if isinstance(data, dict) else None
    if cfg.use_camera and image_hw is None:
        raise ValueError(f"save_checkpoint({path}): the network image size image_hw (H, W) is required "
                         "for a camera model")
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint({path}): extra keys {clash} are reserved")
    hw = None if image_hw is None else [int(v) for v in image_hw]
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "config": {"model": to_dict(cfg), "image_hw": hw,
                   "input_convention": to_dict(input_convention or InputConvention())},
        "class_names": list(CLASS_NAMES[: cfg.num_classes]),
        **extra,
    }
    return _atomic_save(ckpt, path)


def _atomic_save(ckpt: dict[str, Any], path: Path) -> Path:
    """torch.save into a temporary file beside `path`, fsync, then rename: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: a node running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: What an exported (deployment) checkpoint keeps besides the reserved keys: provenance, not state.
EXPORT_KEYS = ("train_config", "step", "description")


#: Modules of a camera-capable model that only the camera uses (the LiDAR branch runs without them).
CAMERA_MODULES = ("image_net", "proj_3d", "proj_2d", "fusion_head")


def export_checkpoint(src: str | Path, dst: str | Path, description: str = "",
                      extra: dict[str, Any] | None = None, lidar_only: bool = False) -> Path:
    """Write `src` without its training state (optimizer, scheduler, scaler, RNG: ~2/3 of a
    training checkpoint) for the node and evaluation; weights, config, class map, the training
    config and step stay. `description` (e.g. what data it saw) is stored for `xkd-eval` / the node
    to report, `extra` (plain data, e.g. the fine-tune guard's report) as well. `lidar_only` also
    drops the camera modules (`CAMERA_MODULES`: the camera branch is most of a small model's size)
    and marks the model camera-less: the LiDAR branch predicts exactly as before, fusion is gone.
    The weights are checked to fit the config before anything is written."""
    ckpt = load_checkpoint(src)
    model_from_loaded(ckpt, src)
    out = {k: ckpt[k] for k in (*_RESERVED, *EXPORT_KEYS) if k in ckpt}
    if lidar_only:
        out["model"] = {k: v for k, v in ckpt["model"].items() if k.split(".", 1)[0] not in CAMERA_MODULES}
        out["config"] = {**ckpt["config"], "model": {**ckpt["config"]["model"], "use_camera": False}}
        model_from_loaded(out, dst)  # the LiDAR branch alone must load strictly
    if description:
        out["description"] = description
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ValueError(f"export_checkpoint({dst}): extra keys {clash} are reserved")
    out.update(extra or {})
    return _atomic_save(out, Path(dst))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint dict (format version, required keys); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt / foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not an xkd checkpoint (top level is "
                              f"{type(ckpt).__name__}, expected a dict)")
    missing = [k for k in _RESERVED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an xkd checkpoint: missing keys {missing}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {ckpt['format_version']!r}; "
                              f"this xkd reads version {FORMAT_VERSION}")
    config = ckpt["config"]
    if not isinstance(config, dict) or "model" not in config or "image_hw" not in config:
        raise CheckpointError(f"checkpoint {path}: 'config' must hold 'model' and 'image_hw'")
    return ckpt


def config_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> tuple[
        ModelConfig, tuple[int, int] | None]:
    """The `ModelConfig` and network image size stored in a loaded checkpoint.

    A model config in the flat layout of checkpoints written before `ModelConfig` had sections is
    migrated (`migrate_model_dict`); one that turns on a removed switch is refused."""
    try:
        model = migrate_model_dict(ckpt["config"]["model"], "config.model")
        cfg = from_dict(ModelConfig, model, "config.model")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: incompatible model config: {exc}") from exc
    hw = ckpt["config"]["image_hw"]
    if hw is not None:
        if len(hw) != 2 or min(hw) < 1:
            raise CheckpointError(f"checkpoint {path}: image_hw must be [H, W], got {hw}")
        hw = (int(hw[0]), int(hw[1]))
    return cfg, hw


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", backend: str | None = None
) -> tuple[XModelKD, ModelConfig, tuple[int, int] | None]:
    """Rebuild the model of a checkpoint on `device` (eval mode); `backend` overrides the stored one.

    The image backbone is built without loading pretrained weights (the checkpoint holds them), so a
    checkpoint trained from a local weights file loads on a machine without that file; the stored
    `image_pretrained` still says how the camera branch normalises images.
    """
    return model_from_loaded(load_checkpoint(path, map_location="cpu"), path, device, backend)


def input_convention_from_checkpoint(ckpt: dict[str, Any],
                                     path: str | Path = "<checkpoint>") -> InputConvention:
    """The `InputConvention` stored in a loaded checkpoint; `LEGACY_INPUT_CONVENTION` when it has none."""
    raw = ckpt["config"].get("input_convention")
    if raw is None:
        return LEGACY_INPUT_CONVENTION
    try:
        return from_dict(InputConvention, raw, "config.input_convention")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: bad input convention: {exc}") from exc


def model_from_loaded(
    ckpt: dict[str, Any], path: str | Path, device: str | torch.device = "cpu", backend: str | None = None
) -> tuple[XModelKD, ModelConfig, tuple[int, int] | None]:
    """The model of an already loaded checkpoint, weights loaded strictly (a mismatch names the file)."""
    cfg, hw = config_from_checkpoint(ckpt, path)
    cfg = replace(cfg, backend=backend or cfg.backend)
    try:
        model = XModelKD.from_config(cfg, device=device, load_weights=False)
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the stored config: {exc}") from exc
    return model.to(device).eval(), cfg, hw
