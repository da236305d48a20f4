"""Seeds and random-number state: what makes a run repeatable and a resume bit-exact.

Three sources of randomness exist in training: the global RNGs (python, numpy, torch CPU/CUDA) that
model code may draw from, the per-sample augmentation, and the data order. The global states are
captured into checkpoints in a `weights_only`-loadable form; augmentation draws from a generator
seeded by (seed, epoch, index), so it does not depend on worker count, worker scheduling or resume
point; data order is a pure function of (seed, epoch) (see `training.data`).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG is what third-party code draws from
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample in one epoch: independent of who loads it and when."""
    return np.random.default_rng([seed, epoch, index])


def worker_init_fn(worker_id: int) -> None:
    """Seed a DataLoader worker's python/numpy RNGs from its torch seed (base seed + worker id).

    The base seed comes from the loader's own generator, which the trainer seeds per epoch, so worker
    RNGs are reproducible too (torch only seeds its own RNG in workers).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - see seed_everything


def capture_rng_state() -> dict:
    """The global RNG states as tensors and plain Python values (loadable with `weights_only=True`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"][0])
