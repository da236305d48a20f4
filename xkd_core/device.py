"""Which torch device to run on: one rule for training, inference and the node."""

from __future__ import annotations

import torch

from xkd_core.config import ConfigError


def resolve_device(pref: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda (cuda:LOCAL_RANK) when a GPU is usable, else cpu; `cuda` -> cuda:LOCAL_RANK.

    Asking for CUDA on a machine without a usable GPU is a ConfigError that says so, not a crash later.
    """
    text = str(pref)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if text == "cuda" else text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(pref)!r} requested but no CUDA GPU is available "
                          "(use 'auto' or 'cpu')")
    return dev
