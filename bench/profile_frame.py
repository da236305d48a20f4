"""Where one frame's time goes: cProfile and torch.profiler over the node's per-frame path.

Run: .venv/bin/python -m bench.profile_frame [--points 120000] [--frames 10] [--threads 1] [--device cpu]

The same path as `bench_stages` (decode, `Segmenter.segment`, encode, overlay) on one synthetic scan
resized to `--points`, after two warm-up frames. Prints, and writes to
research/bench_logs/profile_<device>.txt (a raw log, not a results file), the top functions by own
time (cProfile) and the top torch operators by self time (torch.profiler), which is how the
per-frame bottlenecks outside the sparse convolutions were found (docs/performance.md, "What was
optimised").
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.bench_stages import received_cloud, synthetic_pool
from bench.common import REPO, load_average, resize_cloud, resolve_checkpoint


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=120_000)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a busy machine)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--checkpoint", default="shipped")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from xkd_core.inference import Segmenter
    from xkd_core.overlay import draw_label_overlay
    from xkd_ros.image import to_rclpy_image
    from xkd_ros.pointcloud import cloud_to_xyzi, labeled_cloud_array, to_rclpy_cloud
    from xkd_ros.segment_params import SegmentNodeConfig

    pool, image, K, T = synthetic_pool(2, 0)
    msg = received_cloud(resize_cloud(pool, 0, args.points, np.random.default_rng(0)), 1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, kind = resolve_checkpoint(args.checkpoint, Path(tmp))
        max_range = SegmentNodeConfig().max_range or None  # the node's default
        seg = Segmenter.from_checkpoint(ckpt, device=args.device, max_range=max_range)

    def frame() -> None:
        xyzi = cloud_to_xyzi(msg)
        res = seg.segment(xyzi)
        to_rclpy_cloud(msg.header, labeled_cloud_array(xyzi, res.labels, res.confidence))
        to_rclpy_image(msg.header, draw_label_overlay(image, xyzi[:, :3], res.labels, K, T))

    for _ in range(2):
        frame()
    load = load_average()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.frames):
        frame()
    prof.disable()
    text = io.StringIO()
    text.write(f"# {args.frames} frames of {args.points} points, {kind}, {args.device}, "
               f"{torch.get_num_threads()} torch threads, load average {load}\n\n## cProfile, own time\n")
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.top)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as tp:
        for _ in range(args.frames):
            frame()
    text.write("\n## torch.profiler, operators by self time\n")
    text.write(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    report = text.getvalue()
    out = REPO / "research" / "bench_logs" / f"profile_{args.device}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
