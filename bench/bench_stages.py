"""Per-stage latency of one scan through the node's own per-frame path, against scan size.

Run: .venv/bin/python -m bench.bench_stages [--sizes 30000 60000 120000 240000] [--scans 200]
     [--device cpu|cuda] [--backends auto] [--precisions fp32 fp16] [--threads 0] [--checkpoint shipped]

Each scan goes through exactly what `segment_node` does with a frame: its `FramePipeline` with the
node's default parameters and one camera (`image_2`, static extrinsics), fed messages as a subscriber
receives them (after CDR), then the messages the node publishes. Stages: `decode`
(`FramePipeline.on_cloud`: PointCloud2 -> points, intensity scaling, stamp check, nearest image),
`Segmenter.segment` split by its stage timing into `preprocess` (checks, range filter, batching,
host -> device), `voxelize` (voxels and their mean features), `forward_3d` (the sparse UNet) and
`gather` (point head, softmax, device -> host, labels back in input order), `outputs` (the rest of
`FramePipeline.process`: camera image decoded and undistorted, ego / range gate, labeled and filtered
records, overlay drawn), `encode` (the labeled and filtered PointCloud2) and `overlay` (the overlay
Image); `total` is decode to overlay, `inference` is `segment` alone (SPEC's "per-scan
inference"). The scans come from the synthetic world (`xkd_core.synth`, 64-beam, ~128k points): a
few are generated once, resized to each size (random subset, or consecutive scans appended then a
subset) and cycled with 1 cm of fresh noise per scan, so generation is never timed. The model is the
shipped checkpoint with the node's default `max_range` (`--checkpoint random-full`: the full-size
`semantickitti` architecture, random weights, for GPU runs).

GPU rows (`--device cuda`, `--backends spconv spconv_triton`, `--precisions fp32 fp16`) also record
`torch.cuda.max_memory_allocated`; rows this machine cannot run are listed under `skipped` with the
reason. Writes bench/results/stages_<device>.json and docs/img/stage_latency_<device>.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    BENCH_CAMERA,
    IMAGES,
    RESULTS,
    STAGES,
    command_line,
    finish,
    load_average,
    machine_info,
    now_utc,
    resize_cloud,
    resolve_checkpoint,
    stats_ms,
)

#: Stages in the order the node runs them; `total` is their sum per scan.
SIZES = (30_000, 60_000, 120_000, 240_000)


def synthetic_pool(count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """`count` scans of one synthetic drive, the first frame's camera image and its K, T."""
    from xkd_core.synth import SynthConfig, SyntheticSequence

    seq = SyntheticSequence(SynthConfig(), seed, 0, count)
    K, T = seq.calib.camera(2)
    return [seq.scan(i)[0] for i in range(count)], seq.image(0, 2)[0], K, T


def received(msg: Any) -> Any:
    """The message a subscriber gets for `msg`: serialised and deserialised (CDR)."""
    from rclpy.serialization import deserialize_message, serialize_message

    return deserialize_message(serialize_message(msg), type(msg))


def received_cloud(points: np.ndarray, stamp_ns: int) -> Any:
    """The PointCloud2 a subscriber gets for `points`."""
    from xkd_ros.pointcloud import to_rclpy_cloud, xyzi_array
    from xkd_ros.stamp import rclpy_header

    return received(to_rclpy_cloud(rclpy_header(stamp_ns, "velodyne"), xyzi_array(points)))


def node_config(T: np.ndarray) -> Any:
    """The node's default parameters with one camera, `image_2`, whose extrinsics are `T`."""
    from xkd_ros.segment_params import CameraConfig, SegmentNodeConfig

    return SegmentNodeConfig(camera_names=[BENCH_CAMERA], cameras={BENCH_CAMERA: CameraConfig(
        lidar_to_camera=[float(v) for v in T.reshape(-1)])})


class TimedSegmenter:
    """A `Segmenter` that keeps its last result and call time (the pipeline keeps only the labels)."""

    def __init__(self, seg: Any) -> None:
        self.seg = seg
        self.input_convention = seg.input_convention
        self.last: Any = None
        self.seconds = 0.0

    def segment(self, points: np.ndarray, views: Any = None, exclude: np.ndarray | None = None) -> Any:
        t = time.perf_counter()
        self.last = self.seg.segment(points, views, exclude=exclude)
        self.seconds = time.perf_counter() - t
        return self.last


class NodeFramePath:
    """One frame through `segment_node`'s code: `FramePipeline.on_cloud` and `.process` around `seg`
    (`node_config(T)`: the node's defaults, the camera image in every frame), then the output messages
    `SegmentNode.publish` builds. `run(cloud)` returns the stage times; a frame the node would skip,
    or one without its camera, raises (the bench would measure something else)."""

    def __init__(self, seg: Any, image: np.ndarray, K: np.ndarray, T: np.ndarray) -> None:
        from xkd_ros.image import to_rclpy_camera_info, to_rclpy_image
        from xkd_ros.pipeline import OK, FramePipeline
        from xkd_ros.stamp import rclpy_header

        self.timed = TimedSegmenter(seg)
        self.problems: list[str] = []
        self.pipeline = FramePipeline(node_config(T), self.timed,
                                      lambda level, line: self.problems.append(line) if level > OK else None,
                                      input_convention=seg.input_convention)
        header = rclpy_header(0, "camera_2")
        self.pipeline.on_camera_info(BENCH_CAMERA, received(to_rclpy_camera_info(header, K, image.shape[:2])))
        self.image = received(to_rclpy_image(header, image))

    def run(self, cloud: Any) -> tuple[Any, dict[str, float]]:
        """The frame's `FrameOutputs` and its stage times (s)."""
        from std_msgs.msg import Header

        from xkd_ros.image import to_rclpy_image
        from xkd_ros.pointcloud import to_rclpy_cloud

        self.image.header.stamp = cloud.header.stamp  # the camera frame of this scan (untimed callback)
        self.pipeline.on_image(BENCH_CAMERA, self.image)
        t0 = time.perf_counter()
        frame = self.pipeline.on_cloud(cloud)
        t1 = time.perf_counter()
        out = self.pipeline.process(frame) if frame is not None else None
        t2 = time.perf_counter()
        if out is None or not out.overlays:
            raise RuntimeError(f"the node would not publish this frame with its overlay: {self.problems}")
        to_rclpy_cloud(out.header, out.labeled)
        if out.filtered is not None:
            to_rclpy_cloud(out.header, out.filtered)
        t3 = time.perf_counter()
        for frame_id, overlay in out.overlays.values():
            to_rclpy_image(Header(stamp=out.header.stamp, frame_id=frame_id), overlay)
        t4 = time.perf_counter()
        st = self.timed.last.timings
        return out, {"decode": t1 - t0, **{k: st[k] for k in STAGES[1:5] if k in st},  # stage_timing
                     "outputs": t2 - t1 - self.timed.seconds, "encode": t3 - t2, "overlay": t4 - t3,
                     "total": t4 - t0, "inference": st["total"]}


def skip_reason(device: str, backend: str, precision: str) -> str | None:
    """Why this machine cannot run a row, or None."""
    from xkd_core.models.sparse_backend import get_spconv

    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if precision == "fp16" and device != "cuda":
        return "fp16 autocast is CUDA-only (Segmenter ignores fp16 on the CPU)"
    if backend == "spconv_triton" and device != "cuda":
        return "spconv-triton has no CPU path"
    try:
        get_spconv(backend, device)  # type: ignore[arg-type]
    except ImportError as exc:
        return str(exc).splitlines()[0]
    return None


def record_failure(result: dict[str, Any], exc: Exception, **where: Any) -> None:
    """A row that failed is recorded with where it failed; the other rows still run (one device
    call, many rows) and the script exits non-zero at the end."""
    traceback.print_exc()
    result.setdefault("failed", []).append({**where, "error": repr(exc)[:2000]})


def measure_row(seg: Any, pool: list[np.ndarray], image: np.ndarray, K: np.ndarray, T: np.ndarray,
                points: int, scans: int, warmup: int, seed: int) -> dict[str, Any]:
    """Stage timings of `scans` scans of `points` points (after `warmup` untimed ones)."""
    path = NodeFramePath(seg, image, K, T)
    rng = np.random.default_rng(seed)
    base = [resize_cloud(pool, k, points, rng) for k in range(len(pool))]
    times: dict[str, list[float]] = {k: [] for k in (*STAGES, "total", "inference")}
    voxels: list[int] = []
    seg.warmup(num_points=points, iterations=1)
    if seg.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(seg.device)
    for i in range(warmup + scans):
        pts = base[i % len(base)].copy()
        pts[:, :3] += rng.normal(0.0, 0.01, (points, 3)).astype(np.float32)
        _, measured = path.run(received_cloud(pts, 1_000_000_000 + i * 100_000_000))  # a 10 Hz clock
        if i < warmup:
            continue
        for name, value in measured.items():
            times[name].append(value)
        if i == warmup:  # occupied voxels of one scan, for the cost curve
            voxels.append(_count_voxels(pts, seg))
    row: dict[str, Any] = {"points": points, "scans": scans, "voxels": voxels[0] if voxels else None,
                           "stages_ms": {k: stats_ms(v) for k, v in times.items()}}
    if seg.device.type == "cuda":
        row["cuda_max_memory_mb"] = round(torch.cuda.max_memory_allocated(seg.device) / 2**20, 1)
    return row


def _count_voxels(xyzi: np.ndarray, seg: Any) -> int:
    from xkd_core.geometry.voxelize import voxelize

    keep = np.isfinite(xyzi).all(axis=1)
    if seg.max_range is not None:
        keep &= np.linalg.norm(xyzi[:, :3], axis=1) <= seg.max_range
    xyz = torch.from_numpy(np.ascontiguousarray(xyzi[keep, :3]))
    batch = torch.zeros(len(xyz), dtype=torch.int64)
    return voxelize(xyz, batch, seg.cfg.architecture.voxel_size, 1).num_voxels


def _series(rows: list[dict], stage: str, q: str) -> list[float]:
    return [max(r["stages_ms"][stage][q], 1e-3) for r in rows]  # log axis: no zeros


def plot(result: dict[str, Any], path: Path) -> Path:
    """p50 of every stage (and p99 of the total) against points, one panel per backend/precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for row in result["rows"]:
        groups.setdefault(f"{row['backend']} {row['precision']}", []).append(row)
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6.5 * max(len(groups), 1), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], groups.items()):
        rows = sorted(rows, key=lambda r: r["points"])
        x = [r["points"] / 1000 for r in rows]
        for stage in STAGES:
            ax.plot(x, _series(rows, stage, "p50"), marker="o", label=f"{stage} p50")
        ax.plot(x, _series(rows, "total", "p50"), "k-", lw=2.5, marker="s", label="total p50")
        ax.plot(x, _series(rows, "total", "p99"), "k--", lw=1.5, label="total p99")
        ax.set_yscale("log")
        ax.set_xlabel("points per scan (thousands)")
        ax.set_ylabel("ms per scan")
        ax.set_title(f"{result['device']} ({name}), {result['torch_threads']} torch threads, "
                     f"load {result['load_avg_start'][0]:.1f}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    where = result["machine"].get("gpu") or result["machine"]["cpu"]
    fig.suptitle(f"xkd per-scan stages: {where}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="points per scan")
    p.add_argument("--scans", type=int, default=200, help="timed scans per row (p99 needs >= 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed scans per row first")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backends", nargs="+", default=["auto"], choices=["auto", "spconv", "spconv_triton"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    p.add_argument("--checkpoint", default="shipped",
                   help="shipped | random (synth_small, random init) | random-full (full-size) | PATH")
    p.add_argument("--pool", type=int, default=4, help="distinct synthetic scans, cycled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default bench/results/stages_<device>.json")
    p.add_argument("--plot", default=None, help="PNG path, 'none' for no plot; default "
                                                "docs/img/stage_latency_<device>.png")
    args = p.parse_args(argv)
    if args.scans < 1 or args.warmup < 0 or min(args.sizes) < 1 or args.pool < 1:
        p.error("--scans, --sizes and --pool must be >= 1 and --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"stages_{args.device}.json"

    from xkd_core.inference import Segmenter
    from xkd_ros.segment_params import SegmentNodeConfig

    max_range = SegmentNodeConfig().max_range or None  # the node's default (the pipeline's config too)
    result: dict[str, Any] = {
        "what": "per-stage latency of one scan through segment_node's per-frame path (bench/bench_stages.py)",
        "date": now_utc(), "command": command_line(), "device": args.device,
        "machine": machine_info(args.device),
        "torch_threads": torch.get_num_threads(), "load_avg_start": load_average(), "scans": args.scans,
        "warmup": args.warmup, "max_range_m": max_range, "rows": [], "skipped": [],
    }
    if args.scans < 200:
        result["note"] = f"only {args.scans} scans per row: p99 is not meaningful (validation run)"
    t_start = time.perf_counter()
    pool, image, K, T = synthetic_pool(args.pool, args.seed)
    result["image_hw"] = list(image.shape[:2])
    with tempfile.TemporaryDirectory(prefix="xkd_bench_stages_") as tmp:
        ckpt, result["checkpoint"] = resolve_checkpoint(args.checkpoint, Path(tmp))
        for backend in args.backends:
            for precision in args.precisions:
                reason = skip_reason(args.device, backend, precision)
                if reason is not None:
                    result["skipped"].append({"backend": backend, "precision": precision, "reason": reason})
                    print(f"skip {backend} {precision}: {reason}", flush=True)
                    continue
                try:
                    seg = Segmenter.from_checkpoint(ckpt, device=args.device, fp16=precision == "fp16",
                                                    backend=backend, max_range=max_range, stage_timing=True)
                except Exception as exc:
                    record_failure(result, exc, backend=backend, precision=precision)
                    continue
                resolved = seg.model.unet.spconv.__name__.split(".")[0]
                for points in args.sizes:
                    try:
                        row = measure_row(seg, pool, image, K, T, points, args.scans, args.warmup, args.seed)
                    except Exception as exc:
                        record_failure(result, exc, backend=backend, precision=precision, points=points)
                        continue
                    row.update(backend=resolved, requested_backend=backend, precision=precision,
                               load_avg=load_average())
                    result["rows"].append(row)
                    st = row["stages_ms"]
                    print(f"{args.device} {resolved} {precision} {points:>7} pts: total p50 "
                          f"{st['total']['p50']:8.1f} p99 {st['total']['p99']:8.1f} ms | "
                          + " ".join(f"{k} {st[k]['p50']:.1f}" for k in STAGES), flush=True)
                del seg
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    finish(result, out)
    plot_path = args.plot or str(IMAGES / f"stage_latency_{args.device}.png")
    if plot_path != "none" and result["rows"]:
        print(f"wrote {plot(result, Path(plot_path))}")
    if result.get("failed"):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
