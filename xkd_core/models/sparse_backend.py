"""Which sparse-convolution library runs the 3D network, and the small fixes it needs on the CPU.

spconv 2.x ships prebuilt CUDA kernels for NVIDIA only; spconv-triton (PyPI `spconv-triton`, import
name `spconv_triton`) reimplements the same `spconv.pytorch` API in Triton, has no CPU path, and
loads spconv checkpoints unchanged. Models import the backend module through `get_spconv` and never
`import spconv` themselves, so switching is one config value.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Any, Literal

import torch

Backend = Literal["auto", "spconv", "spconv_triton"]
BACKENDS: tuple[str, ...] = ("auto", "spconv", "spconv_triton")

_SHIM_FLAG = "_xkd_cpu_stream_shim"


def _cpu_safe_current_stream() -> int:
    """CUDA stream handle of the current stream, or 0 (the "no stream" handle) without CUDA."""
    if torch.cuda.is_available():
        return torch.cuda.current_stream().cuda_stream
    return 0


def install_cpu_backward_shim() -> bool:
    """Make spconv 2.3.8's CPU backward work; returns True when the patch was (or already is) in place.

    Why: `spconv.pytorch.ops.indice_conv_backward` (the Native-algorithm backward) calls
    `get_current_stream()` before it checks whether the tensors are on the CPU, and that helper is
    `torch.cuda.current_stream().cuda_stream`, which raises on a machine without a CUDA driver. The
    handle is only ever passed to CUDA kernels; the CPU branch ignores it (the forward already uses
    0 for CPU tensors). What: the module-level name `get_current_stream` that `ops` looks up at call
    time is replaced by a function that returns the real current stream when CUDA is available
    (unchanged behaviour, so GPU runs are untouched) and 0 otherwise - and without CUDA there are no
    CUDA tensors, so 0 is exactly "the stream handle of a CPU tensor". Nothing else is patched; a
    second call is a no-op.
    """
    try:
        ops = importlib.import_module("spconv.pytorch.ops")
    except ImportError:
        return False
    if getattr(ops.get_current_stream, _SHIM_FLAG, False):
        return True
    setattr(_cpu_safe_current_stream, _SHIM_FLAG, True)
    ops.get_current_stream = _cpu_safe_current_stream
    return True


def _triton_usable() -> bool:
    return torch.cuda.is_available() and _importable("spconv_triton.pytorch")


def resolve_backend(backend: Backend, device: torch.device | str | None = None) -> str:
    """The concrete backend "auto" stands for on `device` (None: the CUDA device if there is one).

    spconv-triton where the network runs on a CUDA device and the package imports; spconv
    everywhere else. So a machine with both (the CPU wheel for tests and tools, spconv-triton for
    the GPU) runs a CPU model with spconv and a CUDA model with spconv-triton. A machine with
    spconv-triton alone still builds CPU models with it (it has no CPU path, but loading, exporting
    and moving a checkpoint to the GPU need no forward on the CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"sparse backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda:
        return "spconv_triton" if _triton_usable() else "spconv"
    if not _importable("spconv.pytorch") and _importable("spconv_triton.pytorch"):
        return "spconv_triton"
    return "spconv"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def get_spconv(backend: Backend = "auto", device: torch.device | str | None = None) -> ModuleType:
    """The `spconv.pytorch`-compatible module for `backend` on `device` (see `resolve_backend`).

    Asking for a backend that cannot be imported is an error naming it.
    """
    backend = resolve_backend(backend, device)  # type: ignore[assignment]
    if backend == "spconv_triton":
        try:
            module = importlib.import_module("spconv_triton.pytorch")
        except ImportError as exc:
            raise ImportError(
                "sparse backend 'spconv_triton' requested but the package is not installed "
                "(pip install spconv-triton; it needs a CUDA/ROCm GPU)"
            ) from exc
        _limit_triton_autotune_once(os.environ.get(AUTOTUNE_ENV, "full"))
        return module
    try:
        module = importlib.import_module("spconv.pytorch")
    except ImportError as exc:
        raise ImportError("sparse backend 'spconv' requested but spconv is not installed "
                          "(pip install spconv or spconv-cuXXX)") from exc
    if device is not None and torch.device(device).type == "cuda" and _cpu_only_build():
        raise ImportError("sparse backend 'spconv' cannot run on CUDA: the installed spconv is the "
                          "CPU-only wheel (pip install spconv-cuXXX, or spconv-triton)")
    install_cpu_backward_shim()
    return module


_TRITON_KERNEL_MODULES = ("spconv_triton.pytorch._impl.gemm", "spconv_triton.pytorch._impl.pair_kernels",
                          "spconv_triton.pytorch._impl.pool")
#: How many of spconv-triton's autotune candidates each kernel tries: "full" (all), or N (the first N).
AUTOTUNE_ENV = "XKD_SPCONV_TRITON_AUTOTUNE"


def limit_triton_autotune(setting: str) -> int:
    """Keep only the first N autotune candidates of every spconv-triton kernel; returns how many
    kernels were trimmed.

    Why: spconv-triton autotunes each sparse-convolution kernel per (kernel volume, channels, dtype)
    over up to ~38 tile configurations, each a Triton compile of ~2 s. On a fresh machine (empty
    Triton cache) the synth_small UNet's first fp32 scans were still autotuning after 6 minutes
    (H200, 2026-11-29, docs/performance.md). N = 1 makes Triton skip benchmarking altogether (one
    compile per key, the package's first, general-purpose tile); "full" leaves the package alone.
    The choice is cached on disk (TRITON_CACHE_DIR), so a full sweep is paid once per machine.
    """
    if setting == "full":
        return 0
    try:
        keep = int(setting)
    except ValueError:
        keep = 0
    if keep < 1:
        raise ValueError(f"{AUTOTUNE_ENV} must be 'full' or a count >= 1, got {setting!r}")
    for kernels in _TRITON_KERNEL_MODULES:  # they may be imported lazily: load them before trimming
        try:
            importlib.import_module(kernels)
        except ImportError:
            pass
    trimmed = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("spconv_triton") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            configs = getattr(obj, "configs", None)
            if type(obj).__name__ == "Autotuner" and isinstance(configs, list) and len(configs) > keep:
                obj.configs = configs[:keep]
                trimmed += 1
    return trimmed


@functools.cache
def _limit_triton_autotune_once(setting: str) -> int:
    """`limit_triton_autotune` once per setting: every model build asks for the backend, the trim is
    idempotent, and it walks every loaded module."""
    return limit_triton_autotune(setting)


def _cpu_only_build() -> bool:
    """Whether the installed spconv is the CPU wheel (its CUDA kernels are missing)."""
    try:
        return bool(importlib.import_module("spconv.cppconstants").CPU_ONLY_BUILD)
    except (ImportError, AttributeError):
        return False


def conv_algo(spconv: ModuleType, device: torch.device | str) -> Any:
    """The convolution algorithm for `device`: Native on the CPU, the backend's default on a GPU.

    CUDA builds of spconv default to implicit GEMM, which has no CPU implementation; Native
    (gather-GEMM-scatter) runs everywhere. Weights are stored KRSC for every algorithm, so the
    choice can change after a model is built (see `set_conv_algo`).
    """
    if torch.device(device).type == "cpu":
        return spconv.ConvAlgo.Native
    return _default_algo(spconv)


def set_conv_algo(module: torch.nn.Module, spconv: ModuleType, device: torch.device | str) -> None:
    """Set the algorithm of every sparse convolution in `module` for running on `device`."""
    algo = conv_algo(spconv, device)
    for m in module.modules():
        if isinstance(m, spconv.SparseModule) and hasattr(m, "algo"):
            m.algo = algo


@functools.cache
def _default_algo(spconv: ModuleType) -> Any:
    """What the backend picks for `algo=None` (implicit GEMM on CUDA builds, Native on CPU builds)."""
    return getattr(spconv.SubMConv3d(1, 1, 1, bias=False), "algo", None)
