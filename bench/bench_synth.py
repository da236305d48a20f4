"""Cost of the synthetic world per frame, single-threaded (task target: scan + image well under 1 s).

Run: .venv/bin/python bench/bench_synth.py [--frames 20] [--seed 0]
Writes bench/results/synth.json: median seconds for the world build, one LiDAR scan, one camera
image at the default half-KITTI size (620x188) and at full KITTI size (1241x376), writing a frame's
files, points per scan and the class shares of the scans.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one core, like the task target
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from xkd_core.classes import CLASS_NAMES, LEARNING_MAP  # noqa: E402
from xkd_core.config import from_dict  # noqa: E402
from xkd_core.data.semantickitti import write_image, write_labels, write_points  # noqa: E402
from xkd_core.synth import SynthConfig, SyntheticSequence  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    cfg = SynthConfig()
    full = from_dict(SynthConfig, {"camera": {"image_width": 1241, "image_height": 376}})
    t0 = time.perf_counter()
    seq = SyntheticSequence(cfg, args.seed, "00", args.frames * 5)
    world_s = time.perf_counter() - t0
    seq_full = SyntheticSequence(full, args.seed, "00", args.frames * 5)

    scan_s, img_s, img_full_s, write_s, points = [], [], [], [], []
    counts = np.zeros(1 << 16, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.frames):
            f = 5 * k
            t = time.perf_counter()
            pts, sem, inst = seq.scan(f)
            scan_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            rgb, _ = seq.image(f, 2)
            img_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            seq_full.image(f, 2)
            img_full_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            write_points(Path(tmp) / "p.bin", pts)
            write_labels(Path(tmp) / "l.label", sem, inst)
            write_image(Path(tmp) / "i.png", rgb)
            write_s.append(time.perf_counter() - t)
            points.append(int(pts.shape[0]))
            counts += np.bincount(sem, minlength=1 << 16)

    total = counts.sum()
    shares = {
        f"{int(c)} {CLASS_NAMES[LEARNING_MAP.get(int(c), 0)]}": round(float(counts[c] / total), 4)
        for c in np.argsort(-counts)
        if counts[c]
    }
    result = {
        "host": platform.node(),
        "cpu_threads": 1,
        "frames": args.frames,
        "world_build_s": round(world_s, 4),
        "scan_s_median": round(_median(scan_s), 4),
        "image_620x188_s_median": round(_median(img_s), 4),
        "image_1241x376_s_median": round(_median(img_full_s), 4),
        "write_frame_s_median": round(_median(write_s), 4),
        "frame_default_s_median": round(_median(scan_s) + _median(img_s) + _median(write_s), 4),
        "points_per_scan_mean": int(np.mean(points)),
        "points_per_scan_min": int(np.min(points)),
        "class_shares": shares,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
