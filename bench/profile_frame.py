"""Where one frame's time goes: cProfile and torch.profiler over the node's per-frame path.

Run: .venv/bin/python -m bench.profile_frame [--points 120000] [--frames 10] [--threads 1] [--device cpu]
     [--out research/bench_logs/profile_<device>.txt]

The same path as `bench_stages` (`bench_stages.NodeFramePath`: the node's `FramePipeline` with one
camera, then the messages it publishes) on one synthetic scan resized to `--points`, after two
warm-up frames. Prints, and writes to `--out` (a raw log, not a results file), the top functions by own
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

from bench.bench_stages import NodeFramePath, received_cloud, synthetic_pool
from bench.common import REPO, load_average, resize_cloud, resolve_checkpoint


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=120_000)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a busy machine)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--checkpoint", default="shipped")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="default research/bench_logs/profile_<device>.txt")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from xkd_core.inference import Segmenter
    from xkd_ros.segment_params import SegmentNodeConfig

    pool, image, K, T = synthetic_pool(2, 0)
    points = resize_cloud(pool, 0, args.points, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, kind = resolve_checkpoint(args.checkpoint, Path(tmp))
        max_range = SegmentNodeConfig().max_range or None  # the node's default
        seg = Segmenter.from_checkpoint(ckpt, device=args.device, max_range=max_range)
    path = NodeFramePath(seg, image, K, T)
    stamps = iter(range(10**9, 10**12, 10**8))  # a 10 Hz clock: the node refuses repeated stamps

    def frame() -> None:
        path.run(received_cloud(points, next(stamps)))

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
    out = args.out or REPO / "research" / "bench_logs" / f"profile_{args.device}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
