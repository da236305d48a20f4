"""Pair-log cost on the node's side: `submit` latency (must stay far below a frame) and writer throughput.

Run: .venv/bin/python bench/pairlog_bench.py [--points 120000] [--frames 50]
A KITTI-sized sample: 120k points, one 1242x375 image (smooth gradients plus sensor-like noise,
so the PNG size is realistic rather than best-case), pairs from the real projection.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from xkd_core.data.frame import CameraView
from xkd_core.data.pairlog import PairLogWriter, PairSample, encode_sample
from xkd_core.geometry.projection import point_pixel_pairs


def make_sample(n: int, stamp_ns: int, rng: np.random.Generator) -> PairSample:
    r = rng.uniform(3, 60, n)
    az = rng.uniform(-np.pi, np.pi, n)
    pts = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-2, 2, n), rng.uniform(0, 1, n)], 1)
    h, w = 375, 1242
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    K = np.array([[721.5, 0, 609.6], [0, 721.5, 172.9], [0, 0, 1]])
    T = np.array([[0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]], dtype=np.float64)
    view = CameraView(img, K, T, "cam2")
    pairs = point_pixel_pairs(pts[:, :3], [(K, T, view.hw)])
    return PairSample(pts.astype(np.float32), [view], rng.integers(0, 20, n).astype(np.uint16),
                      rng.uniform(0, 1, n).astype(np.float32), pairs, stamp_ns, "velodyne", "bench.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=120_000)
    ap.add_argument("--frames", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    samples = [make_sample(args.points, k * 100_000_000, rng) for k in range(8)]
    t0 = time.perf_counter()
    data = encode_sample(samples[0])
    encode_ms = (time.perf_counter() - t0) * 1e3
    with tempfile.TemporaryDirectory() as root:
        writer = PairLogWriter(root, max_queue=8)
        lat = []
        t_start = time.perf_counter()
        for k in range(args.frames):
            s = samples[k % len(samples)]
            s.stamp_ns = k * 100_000_000
            t = time.perf_counter()
            writer.submit(s)
            lat.append(time.perf_counter() - t)
            time.sleep(0.1)  # 10 Hz
        writer.close(timeout=60)
        wall = time.perf_counter() - t_start
        st = writer.stats()
    lat_us = np.array(lat) * 1e6
    print(json.dumps({
        "points": args.points, "file_bytes": len(data), "encode_ms": round(encode_ms, 1),
        "submit_us_p50": round(float(np.percentile(lat_us, 50)), 1),
        "submit_us_p99": round(float(np.percentile(lat_us, 99)), 1),
        "written": st["written"], "dropped_queue_full": st["dropped_queue_full"],
        "wall_s": round(wall, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
