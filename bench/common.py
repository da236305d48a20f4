"""What every benchmark records the same way: machine, load, percentiles, JSON, the model and the scans.

Figures taken on a loaded machine are not comparable with quiet ones, so each results file carries
the load average before and after, the torch / BLAS thread counts and the exact command.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from xkd_ros.fastdds import PROFILE_NAME
from xkd_ros.paths import config_file

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
IMAGES = REPO / "docs" / "img"
#: The spconv wheels (one per CUDA version, see README); whichever is installed is recorded.
SPCONV_WHEELS = ("spconv", "spconv-cu120", "spconv-cu121", "spconv-cu124", "spconv-cu126")
#: Thread pools outside torch's control (numpy's BLAS runs the overlay's projection).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: The Fast DDS profile segment.launch.py gives its processes (whole clouds through shared memory).
FASTDDS_PROFILE = config_file(PROFILE_NAME)


def fastdds_profile(arg: str) -> Path | None:
    """`--fastdds-profile`: `shipped` (config/fastdds_large_clouds.xml), `none` (the middleware's
    defaults) or a path."""
    if arg == "none":
        return None
    path = FASTDDS_PROFILE if arg == "shipped" else Path(arg)
    if not path.is_file():
        raise FileNotFoundError(f"--fastdds-profile: no file {path}")
    return path.resolve()


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU, cores, library versions and, for a CUDA device, the GPU's name and memory."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__,
        "spconv": next(filter(None, map(_package_version, SPCONV_WHEELS)), None),
        "spconv_triton": _package_version("spconv-triton"),
        "env_threads": {k: os.environ.get(k) for k in THREAD_ENV},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        from xkd_core.models.sparse_backend import AUTOTUNE_ENV

        info["spconv_triton_autotune"] = os.environ.get(AUTOTUNE_ENV, "full")  # candidates per kernel
    return info


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: above the core count, timings are inflated."""
    return [round(x, 2) for x in os.getloadavg()]


def now_utc() -> str:
    """When a benchmark ran, for the results file."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def command_line() -> str:
    """How this benchmark was started, as a module run from the repository root."""
    module = Path(sys.argv[0]).stem
    return " ".join([f"python -m bench.{module}", *sys.argv[1:]])


def stats_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds and the sample count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "max": float("nan"), "n": 0}
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "mean": round(float(ms.mean()), 3),
            "max": round(float(ms.max()), 3), "n": int(ms.size)}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def finish(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Close a benchmark's results: the load at the end (beside the one at the start), written to `out`."""
    result["load_avg_end"] = load_average()
    write_json(out, result)
    print(f"wrote {out}")
    return result


def random_checkpoint(tmp: Path, preset: str = "synth_small") -> Path:
    """A random-init checkpoint of a training preset of config/train/xmodel_kd.yaml: that model's cost,
    meaningless labels. `synth_small` is the shipped model's architecture, `semantickitti` the
    full-size one (image weights not downloaded)."""
    import torch

    from xkd_core.models.checkpoint import save_checkpoint
    from xkd_core.models.xmodel_kd import XModelKD
    from xkd_core.training.config import load_train_config

    path = REPO / "config" / "train" / "xmodel_kd.yaml"
    cfg = load_train_config(path, preset, ["model.architecture.image_pretrained=none"])
    torch.manual_seed(0)
    return save_checkpoint(Path(tmp) / f"{preset}_random.pt", XModelKD.from_config(cfg.model), cfg.model,
                           image_hw=tuple(cfg.data.image_hw))


def resolve_checkpoint(arg: str, tmp: Path) -> tuple[Path, str]:
    """`shipped` (the default model), `random` / `random-full` (see `random_checkpoint`) or a path;
    and how it was chosen."""
    from xkd_ros.segment_params import SHIPPED_CHECKPOINT

    if arg == "random":
        return random_checkpoint(tmp), "random-init synth_small preset"
    if arg == "random-full":
        return random_checkpoint(tmp, "semantickitti"), "random-init full-size semantickitti preset"
    if arg == "shipped":
        if not SHIPPED_CHECKPOINT.is_file():
            raise FileNotFoundError(f"--checkpoint shipped: {SHIPPED_CHECKPOINT} is missing (use 'random')")
        return SHIPPED_CHECKPOINT, f"shipped ({SHIPPED_CHECKPOINT.name})"
    path = Path(arg)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint: no file {path}")
    return path, str(path)


def resize_cloud(scans: list[np.ndarray], k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly `n` points from pool scan `k`: a random subset in scan order, or, when `n` is larger
    than the scan, scan `k` with the next scans of the drive appended (a denser, accumulated
    sweep) before the subset is drawn."""
    pts = scans[k % len(scans)]
    j = k + 1
    while len(pts) < n:
        if j - k >= len(scans):
            raise ValueError(f"{len(scans)} pool scans hold fewer than {n} points; generate more")
        pts = np.concatenate([pts, scans[j % len(scans)]])
        j += 1
    keep = np.sort(rng.choice(len(pts), size=n, replace=False))
    return np.ascontiguousarray(pts[keep])


#: The camera the node benchmarks stream: the synthetic world's left colour camera (KITTI's image_2).
BENCH_CAMERA = "image_2"


def node_params(topics: dict[str, str], T: np.ndarray, camera: str = BENCH_CAMERA) -> dict[str, Any]:
    """`segment_node` parameters for a benchmark stream: its input topics (`cloud_in`, `image_in`,
    `camera_info_in`) for one camera `camera` with the static extrinsics `T` (LiDAR -> camera), and its
    output topics (`cloud_out`; `filtered_out` and `overlay_out` when given: the overlay is published
    on `<overlay_out>/<camera>`)."""
    params: dict[str, Any] = {
        "topics.cloud_in": topics["cloud_in"], "topics.cloud_out": topics["cloud_out"],
        "cameras.names": [camera], f"cameras.{camera}.image_topic": topics["image_in"],
        f"cameras.{camera}.camera_info_topic": topics["camera_info_in"],
        f"cameras.{camera}.lidar_to_camera": [float(v) for v in np.asarray(T).reshape(-1)]}
    for key in ("filtered_out", "overlay_out", "class_map_out"):
        if key in topics:
            params[f"topics.{key}"] = topics[key]
    return params


def node_status(msg: Any, node_name: str, status: str = "segmentation") -> dict[str, str] | None:
    """The key/values of status `/<node_name>: <status>` in a DiagnosticArray (the node also publishes
    one status per camera, `camera <name>`), or None when the array has none."""
    for st in msg.status:
        if st.name == f"/{node_name}: {status}":
            return {kv.key: kv.value for kv in st.values}
    return None


#: The node's per-frame stages as bench_stages times them, in pipeline order (bench/report.py renders
#: the ones a results file has).
STAGES = ("decode", "preprocess", "voxelize", "forward_3d", "gather", "outputs", "encode", "overlay")
