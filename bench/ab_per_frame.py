"""Before/after of the per-frame Python path (voxelize, overlay, Segmenter) against an older revision.

The old and the working tree's versions run interleaved in one process on the same 120k-point scan,
and their outputs are checked identical.

Run: .venv/bin/python -m bench.ab_per_frame [--rev bdb3bf6] [--points 120000] [--reps 40] [--threads 1]
     [--out bench/results/ab_per_frame.json]

The old modules are read with `git show REV:path` into a temporary folder and imported under other
names; the old Segmenter runs with the old voxelize patched into the model module (what it called
then). Interleaving old and new call by call exposes both to the same machine load, so the ratio
holds even on a busy machine where the absolute figures do not. Writes `--out`.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from bench.common import (
    REPO,
    RESULTS,
    command_line,
    load_average,
    machine_info,
    now_utc,
    resize_cloud,
    write_json,
)

FILES = {"voxelize": "xkd_core/geometry/voxelize.py", "overlay": "xkd_core/overlay.py",
         "inference": "xkd_core/inference.py"}


def old_module(rev: str, path: str, tmp: Path) -> ModuleType:
    """`path` as it was at git revision `rev`, imported as a stand-alone module."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True)
    if src.returncode != 0:
        raise SystemExit(f"git show {rev}:{path} failed: {src.stderr.strip()}")
    name = "old_" + Path(path).stem
    file = tmp / f"{name}.py"
    file.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def interleaved(old: Callable[[], Any], new: Callable[[], Any],
                reps: int) -> tuple[list[float], list[float], list[Any], list[Any]]:
    """Wall times and results of `reps` calls of each, alternating old and new."""
    old(), new()
    times: tuple[list[float], list[float]] = ([], [])
    outs: tuple[list[Any], list[Any]] = ([], [])
    for _ in range(reps):
        for k, fn in enumerate((old, new)):
            t = time.perf_counter()
            outs[k].append(fn())
            times[k].append(time.perf_counter() - t)
    return times[0], times[1], outs[0], outs[1]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="bdb3bf6", help="the 'before' revision")
    p.add_argument("--points", type=int, default=120_000)
    p.add_argument("--reps", type=int, default=40, help="calls of each (segment: a third of it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "ab_per_frame.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import xkd_core.models.xmodel_kd as xmodel_kd
    from bench.bench_stages import synthetic_pool
    from xkd_core.geometry.voxelize import voxelize
    from xkd_core.inference import Segmenter
    from xkd_core.overlay import draw_label_overlay
    from xkd_ros.segment_params import SHIPPED_CHECKPOINT, SegmentNodeConfig

    pool, image, K, T = synthetic_pool(2, 0)
    pts = resize_cloud(pool, 0, args.points, np.random.default_rng(0))
    xyz = torch.from_numpy(np.ascontiguousarray(pts[:, :3]))
    batch = torch.zeros(len(pts), dtype=torch.int64)
    max_range = SegmentNodeConfig().max_range or None
    with tempfile.TemporaryDirectory() as tmp:
        old = {k: old_module(args.rev, path, Path(tmp)) for k, path in FILES.items()}
    new_seg = Segmenter.from_checkpoint(SHIPPED_CHECKPOINT, max_range=max_range)
    old_seg = old["inference"].Segmenter.from_checkpoint(SHIPPED_CHECKPOINT, max_range=max_range)
    voxel_size = new_seg.cfg.architecture.voxel_size

    def old_segment() -> Any:
        xmodel_kd.voxelize = old["voxelize"].voxelize
        try:
            return old_seg.segment(pts)
        finally:
            xmodel_kd.voxelize = voxelize

    labels = new_seg.segment(pts).labels
    a, b = old_segment(), new_seg.segment(pts)
    same_seg = np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)
    same = {"segment": bool(same_seg),
            "overlay": bool(np.array_equal(old["overlay"].draw_label_overlay(image, pts[:, :3], labels, K, T),
                                           draw_label_overlay(image, pts[:, :3], labels, K, T)))}
    vo, vn = old["voxelize"].voxelize(xyz, batch, voxel_size, 1), voxelize(xyz, batch, voxel_size, 1)
    same["voxelize"] = all(bool(torch.equal(getattr(vo, k), getattr(vn, k)))
                           for k in ("coords", "point2voxel", "voxel2point", "counts", "origin"))
    load_start = load_average()
    cases = {
        "voxelize": (lambda: old["voxelize"].voxelize(xyz, batch, voxel_size, 1),
                     lambda: voxelize(xyz, batch, voxel_size, 1), args.reps),
        "overlay": (lambda: old["overlay"].draw_label_overlay(image, pts[:, :3], labels, K, T),
                    lambda: draw_label_overlay(image, pts[:, :3], labels, K, T), args.reps),
        "segment": (old_segment, lambda: new_seg.segment(pts), max(args.reps // 3, 1)),
    }
    rows = []

    def add(name: str, t_old: list[float], t_new: list[float], reps: int) -> None:
        before, after = float(np.median(t_old) * 1e3), float(np.median(t_new) * 1e3)
        rows.append({"what": name, "before_ms": round(before, 2), "after_ms": round(after, 2),
                     "speedup": round(before / after, 2), "identical": same[name.split()[0]], "reps": reps})
        print(f"{name:18s} before {before:8.2f} ms  after {after:8.2f} ms  x{before / after:.2f}", flush=True)

    for name, (fo, fn, reps) in cases.items():
        t_old, t_new, r_old, r_new = interleaved(fo, fn, reps)
        add(name, t_old, t_new, reps)
        if name == "segment":  # Segmenter's own pre- and post-processing, without the network
            def outside(res: list[Any]) -> list[float]:
                return [r.timings["preprocess"] + r.timings["postprocess"] for r in res]

            add("segment outside the network", outside(r_old), outside(r_new), reps)
    result = {"what": "per-frame Python path before/after (bench/ab_per_frame.py)", "date": now_utc(),
              "command": command_line(), "rev_before": args.rev, "points": args.points,
              "machine": machine_info("cpu"), "torch_threads": torch.get_num_threads(),
              "load_avg_start": load_start, "load_avg_end": load_average(), "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
