"""PointCloud2 <-> numpy cost for a 120k-point scan (SPEC §6 target: <= 2 ms each way on the CPU).

Run: .venv/bin/python bench/bench_pointcloud.py [--points 120000] [--reps 300]
Writes bench/results/pointcloud.json with p50/p99 in milliseconds per case:

- decode_*: `cloud_to_xyzi` on a message as a subscriber gets it (rclpy: deserialized from CDR, so
  `data` is an `array.array`; rosbags: deserialized from CDR, `data` an ndarray), for the KITTI layout
  (x y z intensity, 16 bytes) and an Ouster-like 32-byte layout (intensity after a gap, ring, time).
- encode_*: `labeled_cloud_array` + `to_rclpy_cloud` (what the node does per scan), and the parts.
- assign_*: ways of putting the bytes into an rclpy message's `data` (the one unavoidable copy).
  `*_checked` messages run rclpy's field checks (always on in Humble/Jazzy, opt-in in Kilted via
  ROS_PYTHON_CHECK_FIELDS=1): a `bytes` value is then checked element by element, so it gets only 5
  repetitions; an `array.array('B')` skips that check.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, get_typestore

from xkd_ros.pointcloud import (
    cloud_to_xyzi,
    labeled_cloud_array,
    to_rclpy_cloud,
    to_rosbags_cloud,
    xyzi_array,
)
from xkd_ros.stamp import rclpy_header, rosbags_header

RESULTS = Path(__file__).resolve().parent / "results" / "pointcloud.json"


def timeit(fn: Callable[[], object], reps: int) -> dict[str, float]:
    """p50/p99/mean in ms of `reps` calls after 10 warm-up calls."""
    for _ in range(min(10, reps)):
        fn()
    times = np.empty(reps)
    for i in range(reps):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    ms = times * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "reps": reps}


def scan(n: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(3, 60, n)
    az = rng.uniform(-np.pi, np.pi, n)
    return np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-2, 2, n), rng.uniform(0, 1, n)], 1).astype(
        np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=120_000)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.reps < 200:
        ap.error("--reps must be >= 200 for a meaningful p99")

    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    rng = np.random.default_rng(0)
    n = args.points
    xyzi = scan(n, rng)
    labels = rng.integers(0, 20, n).astype(np.uint16)
    conf = rng.random(n).astype(np.float32)
    ts = get_typestore(Stores.ROS2_HUMBLE)
    results: dict[str, dict[str, float]] = {}

    # Input clouds as subscribers receive them (built with the encoders, then through CDR).
    ouster_dt = np.dtype({"names": ["x", "y", "z", "intensity", "t", "ring"],
                          "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2"],
                          "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 32})
    ouster = np.zeros(n, ouster_dt)
    for k, name in enumerate(("x", "y", "z", "intensity")):
        ouster[name] = xyzi[:, k]
    pc2 = "sensor_msgs/msg/PointCloud2"
    for name, points in {"kitti16": xyzi_array(xyzi), "ouster32": ouster}.items():
        received = deserialize_message(serialize_message(to_rclpy_cloud(rclpy_header(1, "velodyne"), points)),
                                       PointCloud2)
        assert np.array_equal(cloud_to_xyzi(received), xyzi)
        results[f"decode_rclpy_{name}"] = timeit(lambda m=received: cloud_to_xyzi(m), args.reps)
        wire = ts.serialize_cdr(to_rosbags_cloud(rosbags_header(1, "velodyne", ts), points, ts), pc2)
        bag_msg = ts.deserialize_cdr(wire, pc2)
        assert np.array_equal(cloud_to_xyzi(bag_msg), xyzi)
        results[f"decode_rosbags_{name}"] = timeit(lambda m=bag_msg: cloud_to_xyzi(m), args.reps)

    header = rclpy_header(1, "velodyne")
    arr = labeled_cloud_array(xyzi, labels, conf)
    results["encode_rclpy_total"] = timeit(
        lambda: to_rclpy_cloud(header, labeled_cloud_array(xyzi, labels, conf)), args.reps)
    results["encode_labeled_cloud_array"] = timeit(lambda: labeled_cloud_array(xyzi, labels, conf), args.reps)
    results["encode_to_rclpy_cloud"] = timeit(lambda: to_rclpy_cloud(header, arr), args.reps)
    bag_header = rosbags_header(1, "velodyne", ts)
    results["encode_to_rosbags_cloud"] = timeit(lambda: to_rosbags_cloud(bag_header, arr, ts), args.reps)

    target = PointCloud2()

    def frombytes() -> array.array:
        buf = array.array("B")
        buf.frombytes(memoryview(arr).cast("B"))
        return buf

    results["assign_array_frombytes"] = timeit(lambda: setattr(target, "data", frombytes()), args.reps)
    results["assign_array_of_tobytes"] = timeit(
        lambda: setattr(target, "data", array.array("B", arr.tobytes())), args.reps)
    results["assign_bytes"] = timeit(lambda: setattr(target, "data", arr.tobytes()), args.reps)
    checked = PointCloud2(check_fields=True)  # as Humble/Jazzy always are
    results["assign_bytes_checked"] = timeit(lambda: setattr(checked, "data", arr.tobytes()), 5)
    results["assign_array_frombytes_checked"] = timeit(
        lambda: setattr(checked, "data", frombytes()), args.reps)

    report = {
        "points": n,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "target_ms": 2.0,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, r in results.items():
        print(f"{key:<{width}}  p50 {r['p50_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms   (n={r['reps']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
