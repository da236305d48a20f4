"""End-to-end cost of `segment_node`: a 10 Hz synthetic LiDAR + camera stream in, labeled clouds out.

Run: .venv/bin/python bench/bench_node.py [--seconds 30] [--rate 10 | --rates 10 20] [--points 0 30000]
     [--device cpu] [--threads 2] [--checkpoint PATH] [--input-qos reliable|best_effort]
     [--out bench/results/node_cpu.json]

One row per (points, rate): a fresh node and its own topics for each, so rows never see each
other's frames or counters. `--points 0` streams the synthetic scans as generated; another value
resizes them (random subset, or consecutive scans appended first), e.g. to a size the CPU sustains.

The node runs as a child process (`xkd_ros.node_process.NodeProcess`, the same `main` as the
console script) and this process publishes frames of the synthetic world (`xkd_core.synth`, 64-beam
scan of ~128k points, 620x188 camera) at each rate with wall-clock stamps, over real Fast DDS.
Reported: the node's own latency (cloud callback -> labeled cloud published, from its
`/diagnostics`), the latency seen here (publish -> labeled cloud received, adds both DDS hops),
output rate, and drops (frames published without an output). The checkpoint is the shipped model
when present, else a random-init model of the `synth_small` preset (same cost, meaningless labels).
Input QoS defaults to reliable: on this machine's default Fast DDS set-up, best-effort clouds above
~512 KB (the shared-memory segment) are lost in UDP fragmentation, which would measure the
transport instead of the node.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script (python bench/bench_node.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BENCH_CAMERA,
    command_line,
    fastdds_profile,
    finish,
    load_average,
    machine_info,
    node_params,
    node_status,
    now_utc,
    random_checkpoint,
    resize_cloud,
)
from xkd_ros.fastdds import set_profile  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "node_cpu.json"
TOPICS = {"cloud_in": "/bench/points", "image_in": "/bench/image", "camera_info_in": "/bench/camera_info",
          "cloud_out": "/bench/labeled", "filtered_out": "/bench/filtered", "overlay_out": "/bench/overlay"}


def checkpoint_path(arg: str | None, tmp: Path) -> tuple[Path, str]:
    """The checkpoint to run and how it was chosen: given, else shipped, else random-init."""
    from xkd_ros.segment_params import SHIPPED_CHECKPOINT

    if arg:
        return Path(arg), "given"
    if SHIPPED_CHECKPOINT.is_file():
        return SHIPPED_CHECKPOINT, "shipped"
    return random_checkpoint(tmp), "random-init synth_small preset"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "max": round(float(max(values)), 2)}


def run_row(bench: Any, tmp: Path, args: argparse.Namespace, ckpt: Path, K: np.ndarray, T: np.ndarray,
            frames: list[tuple[np.ndarray, np.ndarray]], rate: float, row: int) -> dict[str, Any]:
    """One fresh node, one stream at `rate` Hz: what came out, how late, how much was dropped."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from xkd_ros.image import to_rclpy_camera_info, to_rclpy_image
    from xkd_ros.node_process import NodeProcess, write_overrides
    from xkd_ros.pointcloud import to_rclpy_cloud, xyzi_array
    from xkd_ros.stamp import header_ns, rclpy_header

    # topics of their own per row: a previous row's node, still known to discovery, cannot match them
    topics = {k: f"{v}/r{row}" for k, v in TOPICS.items()}
    hw = frames[0][1].shape[:2]
    params = {"checkpoint": str(ckpt), "device": args.device, "cpu_threads": args.threads,
              "qos.input.reliability": args.input_qos, "diagnostics.period": 1.0, **node_params(topics, T)}
    node = NodeProcess([write_overrides(tmp / f"params_r{row}.yaml", params)], tmp / f"node_r{row}.log")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    cloud_pub = bench.create_publisher(PointCloud2, topics["cloud_in"], qos)
    image_pub = bench.create_publisher(Image, topics["image_in"], qos)
    info_pub = bench.create_publisher(CameraInfo, topics["camera_info_in"], qos)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    diag: dict[str, str] = {}
    camera: dict[str, str] = {}

    def on_cloud(msg: PointCloud2) -> None:
        received[header_ns(msg.header)] = time.monotonic()

    def on_diag(msg: DiagnosticArray) -> None:
        for values, store in ((node_status(msg, "segment_node"), diag),
                              (node_status(msg, "segment_node", f"camera {BENCH_CAMERA}"), camera)):
            if values is not None:
                store.clear()
                store.update(values)

    subs = [bench.create_subscription(PointCloud2, topics["cloud_out"], on_cloud, qos),
            bench.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)]
    load_start = load_average()
    try:
        node.wait_until(lambda: (rclpy.spin_once(bench, timeout_sec=0.05) or True)
                        and cloud_pub.get_subscription_count() > 0, 180.0, "subscribing")
        # Pre-serialise nothing: building the messages is part of a real driver's cost, not the node's.
        period = 1.0 / rate
        start = time.monotonic()
        t_measure = start + args.warmup
        t_end = t_measure + args.seconds
        i = 0
        next_t = start
        while time.monotonic() < t_end:
            now = time.monotonic()
            if now >= next_t:
                points, rgb = frames[i % len(frames)]
                stamp = time.time_ns()
                header = rclpy_header(stamp, "camera_2")
                info_pub.publish(to_rclpy_camera_info(header, K, hw))
                image_pub.publish(to_rclpy_image(header, rgb))
                cloud_pub.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
                if now >= t_measure:
                    sent[stamp] = time.monotonic()
                i += 1
                next_t += period
            rclpy.spin_once(bench, timeout_sec=max(0.0, min(0.01, next_t - time.monotonic())))
        t_stop = time.monotonic()
        while time.monotonic() < t_stop + 3.0:  # let the last frames and one more report arrive
            rclpy.spin_once(bench, timeout_sec=0.05)
    finally:
        for sub in subs:
            bench.destroy_subscription(sub)
        for pub in (cloud_pub, image_pub, info_pub):
            bench.destroy_publisher(pub)
        node.stop()
    log_tail = node.log_path.read_text(errors="replace")[-1500:]

    outs = {s: received[s] - t for s, t in sent.items() if s in received}
    out_times = sorted(received[s] for s in outs)
    result = {
        "rate_hz": rate, "points_per_scan": int(np.mean([len(f[0]) for f in frames])),
        "frames_published": len(sent), "frames_out": len(outs),
        "drops": len(sent) - len(outs), "drop_fraction": round(1 - len(outs) / max(len(sent), 1), 3),
        "output_rate_hz": round((len(out_times) - 1) / (out_times[-1] - out_times[0]), 2)
        if len(out_times) > 1 else 0.0,
        "latency_publish_to_receive_ms": percentiles([v * 1e3 for v in outs.values()]),
        "node_diagnostics": {k: diag.get(k) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms",
                                                       "input_rate_hz", "output_rate_hz", "frames_in",
                                                       "frames_out", "dropped", "skipped")},
        # frames the camera was used in (its overlay published): every frame when the image pairs
        "camera_diagnostics": {k: camera.get(k) for k in ("used", "sync.matched", "extrinsics")},
        "load_avg_start": load_start, "load_avg_end": load_average(),
    }
    if not outs:
        result["node_log_tail"] = log_tail
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measured stream length per row")
    p.add_argument("--warmup", type=float, default=3.0, help="stream seconds before measuring")
    p.add_argument("--rate", type=float, default=10.0, help="LiDAR and camera rate (Hz) without --rates")
    p.add_argument("--rates", type=float, nargs="+", default=None, help="several rates, one row (node) each")
    p.add_argument("--points", type=int, nargs="+", default=[0],
                   help="points per scan, one row set each; 0 = the synthetic scan as generated (~128k)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=2, help="node's torch threads on the CPU")
    p.add_argument("--checkpoint", default=None, help="default: the shipped model, else a random-init one")
    p.add_argument("--input-qos", default="reliable", choices=["reliable", "best_effort"])
    p.add_argument("--frames", type=int, default=10, help="distinct synthetic frames, cycled")
    p.add_argument("--fastdds-profile", default="shipped",
                   help="'shipped' (config/fastdds_large_clouds.xml, as segment.launch.py sets it), "
                        "'none' (Fast DDS defaults) or an XML path; for the node and this stream")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rates = args.rates or [args.rate]
    profile = fastdds_profile(args.fastdds_profile)
    set_profile(os.environ, profile)  # before rclpy.init; the node's process inherits it

    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy

    from xkd_core.synth.config import SynthConfig
    from xkd_core.synth.sequence import SyntheticSequence

    seq = SyntheticSequence(SynthConfig(), 0, 0, args.frames)
    K, T = seq.calib.camera(2)
    scans = [seq.scan(i)[0] for i in range(args.frames)]
    images = [seq.image(i, 2)[0] for i in range(args.frames)]
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "what": "segment_node end to end, synthetic 64-beam LiDAR + 620x188 camera stream",
        "date": now_utc(), "command": command_line(), "machine": machine_info(args.device),
        "device": args.device,
        "node_threads": args.threads, "input_qos": args.input_qos,
        "fastdds_profile": args.fastdds_profile if profile is None else profile.name,
        "image_hw": list(images[0].shape[:2]),
        "seconds": args.seconds, "warmup_s": args.warmup, "load_avg_start": load_average(), "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="xkd_bench_node_") as tmp_dir:
        tmp = Path(tmp_dir)
        ckpt, result["checkpoint"] = checkpoint_path(args.checkpoint, tmp)
        rclpy.init()
        bench = rclpy.create_node("xkd_bench_node")
        try:
            for n in args.points:
                frames = [(scan if n <= 0 else resize_cloud(scans, k, n, rng), image)
                          for k, (scan, image) in enumerate(zip(scans, images))]
                for rate in rates:
                    row = run_row(bench, tmp, args, ckpt, K, T, frames, rate, len(result["rows"]))
                    result["rows"].append(row)
                    lat = row["latency_publish_to_receive_ms"]
                    print(f"{row['points_per_scan']:>7} pts @ {rate:g} Hz: {row['frames_out']}/"
                          f"{row['frames_published']} out, drops {row['drops']}, latency p50 {lat['p50']} "
                          f"p99 {lat['p99']} ms", flush=True)
        finally:
            bench.destroy_node()
            rclpy.try_shutdown()
    finish(result, args.out)
    return result


if __name__ == "__main__":
    main()
