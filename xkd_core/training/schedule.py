"""Optimizer and learning-rate schedule from `OptimConfig`.

Schedules are stepped once per optimizer step (never per epoch), so the same config means the same
curve whatever the dataset size, and the scheduler state is just the step count (exact resume).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from xkd_core.training.config import OptimConfig


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """AdamW or SGD; biases and norm scales (1-D tensors) get no weight decay, as is usual."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step` for the cosine and constant schedules."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - warm, 1)
    progress = min((step - warm) / span, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """The per-step scheduler; `onecycle` uses torch's OneCycleLR with `warmup_steps` as its rise."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if cfg.schedule == "onecycle":
        pct = min(max(cfg.warmup_steps / total_steps, 1e-3), 0.99) if cfg.warmup_steps else 0.3
        return OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total_steps + 1,  # OneCycleLR refuses a step past its end; the last is never used
            pct_start=pct,
            cycle_momentum=cfg.optimizer == "sgd",
        )
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
