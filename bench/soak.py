"""Soak test of `segment_node`: a 10 Hz camera + LiDAR stream for many minutes, watching for leaks.

Run: `make soak` (= `python -m bench.soak --minutes 10`), or
     python -m bench.soak [--minutes 10] [--rate 10] [--points 30000] [--threads 2] [--device cpu]
                          [--sample-every 5] [--checkpoint PATH] [--no-pair-log]

The node runs as a child process (`xkd_ros.node_process.NodeProcess`, the console script's `main`)
with the shipped model (`xkd_ros.segment_params.SHIPPED_CHECKPOINT`), camera on, overlay on and the
pair logger on (every 10th frame, a 4-frame queue and a 5 MiB disk budget in a temporary directory,
so its bounded queue and its drop-oldest budget are both exercised). This process publishes
synthetic frames (`xkd_core.synth`: a 64-beam scan randomly thinned to `--points` points, and its
620x188 camera image) over real Fast DDS with wall-clock stamps, and samples every `--sample-every`
seconds: the node's resident memory and threads (psutil on the child pid), its `/diagnostics`
(rates, latency, drops, `queue.*` gauges, `pair_log.queued`) and the output rate seen here.

`--points 30000` is the default because two CPU cores keep up with it at 10 Hz: the shipped model
segments the full 127k-point scan in ~320 ms with 2 threads on this machine (bench/results/
node_cpu.json), ~75 ms scaled to 30k, which leaves room for the overlay and the pair log. On a
loaded machine the node drops frames instead (counted): memory and queues must stay flat either way.

Writes `bench/results/soak.json` (config, samples, summary, load averages) and `docs/img/soak_cpu.png`
(RSS vs time, rates vs time, queues vs time), and prints a markdown summary for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import node_params, node_status

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "soak.json"
PLOT = REPO / "docs" / "img" / "soak_cpu.png"
NODE = "xkd_soak"
TOPICS = {"cloud_in": "/soak/points", "image_in": "/soak/image", "camera_info_in": "/soak/camera_info",
          "cloud_out": "/soak/labeled", "filtered_out": "/soak/filtered", "overlay_out": "/soak/overlay"}
#: Diagnostics values sampled (numbers).
DIAG_KEYS = ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p99_ms", "frames_in", "frames_out",
             "dropped", "skipped", "queue.waiting_frame", "queue.image_cache",
             "pair_log.queued", "pair_log.written", "pair_log.dropped_queue_full",
             "pair_log.deleted_for_budget", "pair_log.errors", "pair_log.files_on_disk",
             "pair_log.bytes_on_disk", "process.rss_mb", "process.threads")
QUEUE_KEYS = ("queue.waiting_frame", "queue.image_cache", "pair_log.queued")
#: Small enough that a few minutes of logging (~1 MB per logged frame, one frame in 10) reach it.
PAIR_LOG_BUDGET_MB = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the stream")
    p.add_argument("--rate", type=float, default=10.0, help="LiDAR and camera rate (Hz)")
    p.add_argument("--points", type=int, default=30000, help="points per scan (a thinned 64-beam scan)")
    p.add_argument("--frames", type=int, default=20, help="distinct synthetic frames, cycled")
    p.add_argument("--threads", type=int, default=2, help="the node's torch threads on the CPU")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--checkpoint", default="", help="model .pt (default: the shipped model)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--no-pair-log", action="store_true", help="run without the pair logger")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)
    for name in ("minutes", "rate", "sample_every"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.points < 1 or args.frames < 1:
        p.error("--points and --frames must be >= 1")
    return args


def synthetic_frames(n_frames: int, n_points: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray,
                                                              np.ndarray]:
    """`n_frames` (scan thinned to `n_points`, image) of a synthetic drive, and the camera's K and T."""
    from xkd_core.synth.config import SynthConfig
    from xkd_core.synth.sequence import SyntheticSequence

    seq = SyntheticSequence(SynthConfig(), 0, 0, n_frames)
    K, T = seq.calib.camera(2)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n_frames):
        scan = seq.scan(i)[0]
        keep = np.sort(rng.choice(len(scan), min(n_points, len(scan)), replace=False))
        frames.append((np.ascontiguousarray(scan[keep]), seq.image(i, 2)[0]))
    return frames, K, T


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def window_mean(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    values = [s[key] for s in samples if t0 <= s["t_s"] <= t1 and s.get(key) is not None]
    return float(np.mean(values)) if values else None


def summarize(samples: list[dict[str, Any]], duration_s: float, published: int, received: int,
              latencies_ms: list[float]) -> dict[str, Any]:
    """Growth of memory, queues and threads over the run, and how steady the output was."""
    if not samples:
        return {"error": "no samples"}
    win = min(60.0, duration_s / 3)  # "first minute" / "last minute" (a third of a short run)
    t_end = samples[-1]["t_s"]
    first = window_mean(samples, "rss_mb", 0.0, win)
    last = window_mean(samples, "rss_mb", t_end - win, t_end)
    t = np.array([s["t_s"] for s in samples if s.get("rss_mb") is not None])
    rss = np.array([s["rss_mb"] for s in samples if s.get("rss_mb") is not None])
    settled = t >= win  # past the warm-up allocations
    slope = float(np.polyfit(t[settled] / 60, rss[settled], 1)[0]) if settled.sum() >= 3 else None
    half = t_end / 2
    queues = {}
    for key in QUEUE_KEYS:
        values = [s.get(key) for s in samples if s.get(key) is not None]
        early = [s[key] for s in samples if s.get(key) is not None and s["t_s"] < half]
        late = [s[key] for s in samples if s.get(key) is not None and s["t_s"] >= half]
        queues[key] = {"max": max(values) if values else None,
                       "max_first_half": max(early) if early else None,
                       "max_second_half": max(late) if late else None}
    def settled_values(key: str) -> list[float]:
        return [s[key] for s in samples if s.get(key) is not None and s["t_s"] >= win]

    rates, here = settled_values("output_rate_hz"), settled_values("received_rate_hz")
    threads = [s["threads"] for s in samples if s.get("threads") is not None]
    lat = np.array(latencies_ms) if latencies_ms else np.array([np.nan])
    return {
        "duration_s": round(duration_s, 1),
        "window_s": round(win, 1),
        "rss_mb_first_window": round(first, 1) if first is not None else None,
        "rss_mb_last_window": round(last, 1) if last is not None else None,
        "rss_growth_mb": round(last - first, 1) if first is not None and last is not None else None,
        "rss_slope_mb_per_min_after_first_window": round(slope, 2) if slope is not None else None,
        "rss_mb_max": round(float(rss.max()), 1) if rss.size else None,
        "threads_first": threads[0] if threads else None,
        "threads_last": threads[-1] if threads else None,
        "threads_max": max(threads) if threads else None,
        "queues": queues,
        "node_output_rate_hz": {"mean": round(float(np.mean(rates)), 2) if rates else None,
                                "min": round(float(np.min(rates)), 2) if rates else None},
        "received_rate_hz": {"mean": round(float(np.mean(here)), 2) if here else None,
                             "min": round(float(np.min(here)), 2) if here else None},
        "frames_published": published,
        "frames_received": received,
        "drop_fraction": round(1 - received / published, 3) if published else None,
        "latency_publish_to_receive_ms": {"p50": round(float(np.nanpercentile(lat, 50)), 1),
                                          "p99": round(float(np.nanpercentile(lat, 99)), 1)},
        "final_diagnostics": {k: samples[-1].get(k) for k in DIAG_KEYS},
    }


def markdown(result: dict[str, Any]) -> str:
    """The soak section's figures, ready to paste into docs/reliability.md."""
    s, cfg = result["summary"], result["config"]
    q = s["queues"]
    load = result["loadavg_start"], result["loadavg_end"]

    def fmt(v: Any) -> str:
        return "n/a" if v is None else str(v)

    rows = [
        ("command", f"`{result['command']}`"),
        ("stream", f"{cfg['rate_hz']} Hz, {cfg['points']} points/scan + "
                   f"{cfg['image_hw'][1]}x{cfg['image_hw'][0]} image, {s['duration_s']:.0f} s, "
                   f"device {cfg['device']}, {cfg['threads']} threads, "
                   f"pair log {'on' if cfg['pair_log'] else 'off'}"),
        ("machine", f"{result['machine']['cpu']}, {result['machine']['cores']} cores; load average "
                    f"{load[0][0]:.2f} at start, {load[1][0]:.2f} at end"),
        (f"RSS first / last {s['window_s']:.0f} s", f"{fmt(s['rss_mb_first_window'])} MB / "
                                                    f"{fmt(s['rss_mb_last_window'])} MB "
                                                    f"(growth {fmt(s['rss_growth_mb'])} MB, max "
                                                    f"{fmt(s['rss_mb_max'])} MB)"),
        ("RSS slope after the first window", f"{fmt(s['rss_slope_mb_per_min_after_first_window'])} MB/min"),
        ("threads first / last / max", f"{fmt(s['threads_first'])} / {fmt(s['threads_last'])} / "
                                       f"{fmt(s['threads_max'])}"),
        ("max queue sizes (1st half / 2nd half)",
         ", ".join(f"{k} {fmt(v['max_first_half'])} / {fmt(v['max_second_half'])}" for k, v in q.items())),
        ("node output rate mean / min", f"{fmt(s['node_output_rate_hz']['mean'])} / "
                                        f"{fmt(s['node_output_rate_hz']['min'])} Hz"),
        ("frames published / received", f"{s['frames_published']} / {s['frames_received']} "
                                        f"(drop fraction {fmt(s['drop_fraction'])})"),
        ("latency publish -> receive p50 / p99", f"{s['latency_publish_to_receive_ms']['p50']} / "
                                                 f"{s['latency_publish_to_receive_ms']['p99']} ms"),
    ]
    lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + f"\n\n![soak]({os.path.relpath(result['plot'], REPO / 'docs')})\n"


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s["t_s"] for s in samples]) / 60
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [s.get("rss_mb") for s in samples], label="RSS (psutil)")
    axes[0].set_ylabel("node RSS (MB)")
    axes[0].legend(loc="lower right")
    for key, label in (("input_rate_hz", "input (node)"), ("output_rate_hz", "output (node)"),
                       ("received_rate_hz", "received here")):
        axes[1].plot(t, [s.get(key) for s in samples], label=label)
    axes[1].set_ylabel("rate (Hz)")
    axes[1].legend(loc="lower right")
    for key in QUEUE_KEYS:
        axes[2].plot(t, [s.get(key) for s in samples], label=key, drawstyle="steps-post")
    axes[2].set_ylabel("queue size")
    axes[2].set_xlabel("time (min)")
    axes[2].legend(loc="upper right", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import psutil
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tqdm import tqdm

    from xkd_ros.image import to_rclpy_camera_info, to_rclpy_image
    from xkd_ros.node_process import NodeProcess, write_overrides
    from xkd_ros.pointcloud import to_rclpy_cloud, xyzi_array
    from xkd_ros.segment_params import resolve_checkpoint
    from xkd_ros.stamp import header_ns, rclpy_header, split_ns

    checkpoint = resolve_checkpoint(args.checkpoint)
    frames, K, T = synthetic_frames(args.frames, args.points)
    hw = frames[0][1].shape[:2]
    loadavg_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xkd_soak_") as tmp_dir:
        tmp = Path(tmp_dir)
        params = {"checkpoint": str(checkpoint), "device": args.device, "cpu_threads": args.threads,
                  "qos.input.reliability": "reliable",  # best-effort clouds > 512 KB are lost in fragments
                  "diagnostics.period": 1.0, "log_pairs": not args.no_pair_log,
                  "pair_log.dir": str(tmp / "pairs"), "pair_log.every_n": 10, "pair_log.queue": 4,
                  "pair_log.disk_budget_mb": PAIR_LOG_BUDGET_MB, **node_params(TOPICS, T)}
        node = NodeProcess([write_overrides(tmp / "params.yaml", params, NODE)], tmp / "node.log",
                           extra_ros_args=["-r", f"__node:={NODE}"])
        proc = psutil.Process(node.pid)
        rclpy.init()
        me = rclpy.create_node("xkd_soak_driver")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        cloud_pub = me.create_publisher(PointCloud2, TOPICS["cloud_in"], qos)
        image_pub = me.create_publisher(Image, TOPICS["image_in"], qos)
        info_pub = me.create_publisher(CameraInfo, TOPICS["camera_info_in"], qos)
        sent: dict[int, float] = {}
        received: dict[int, float] = {}
        diag: dict[str, str] = {}

        def on_cloud(msg: PointCloud2) -> None:
            received[header_ns(msg.header)] = time.monotonic()

        def on_diag(msg: DiagnosticArray) -> None:
            values = node_status(msg, NODE)
            if values is not None:
                diag.clear()
                diag.update(values)

        me.create_subscription(PointCloud2, TOPICS["cloud_out"], on_cloud, qos)
        me.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        # Messages built once; only the stamps change (the driver's cost is not what is measured).
        msgs = [(to_rclpy_cloud(rclpy_header(0, "velodyne"), xyzi_array(p)), to_rclpy_image(
                 rclpy_header(0, "camera_2"), rgb), to_rclpy_camera_info(rclpy_header(0, "camera_2"), K, hw))
                for p, rgb in frames]
        samples: list[dict[str, Any]] = []
        try:
            node.wait_until(lambda: (rclpy.spin_once(me, timeout_sec=0.05) or True)
                            and cloud_pub.get_subscription_count() > 0 and bool(diag), 300.0, "running")
            period, duration = 1.0 / args.rate, args.minutes * 60.0
            start = time.monotonic()
            next_pub, next_sample, i = start, start, 0
            last_count, last_t = 0, start
            bar = tqdm(total=int(duration), unit="s", desc="soak", file=sys.stderr)
            while (now := time.monotonic()) < start + duration:
                if not node.alive():
                    raise RuntimeError(f"segment_node exited with {node.proc.returncode}; "
                                       f"log:\n{node.log_tail()}")
                if now >= next_pub:
                    cloud, image, info = msgs[i % len(msgs)]
                    sec, nanosec = split_ns(time.time_ns())
                    for m in (info, image, cloud):
                        m.header.stamp.sec, m.header.stamp.nanosec = sec, nanosec
                    info_pub.publish(info)
                    image_pub.publish(image)
                    cloud_pub.publish(cloud)
                    sent[sec * 10**9 + nanosec] = time.monotonic()
                    i += 1
                    next_pub += period
                    if next_pub < now - 1.0:  # this process was starved: do not burst to catch up
                        next_pub = now + period
                if now >= next_sample:
                    with proc.oneshot():
                        rss, threads = proc.memory_info().rss / 2**20, proc.num_threads()
                    n = len(received)
                    sample = {"t_s": round(now - start, 2), "rss_mb": round(rss, 1), "threads": threads,
                              "received_rate_hz": round((n - last_count) / max(now - last_t, 1e-9), 2)
                              if samples else None,
                              "loadavg_1m": round(os.getloadavg()[0], 2),
                              **{k: _number(diag.get(k)) for k in DIAG_KEYS}}
                    samples.append(sample)
                    last_count, last_t = n, now
                    next_sample += args.sample_every
                    bar.update(int(now - start) - bar.n)
                rclpy.spin_once(me, timeout_sec=max(0.0, min(0.01, next_pub - time.monotonic())))
            bar.close()
            end = time.monotonic()
            while time.monotonic() < end + 2.0:  # the last frames in flight
                rclpy.spin_once(me, timeout_sec=0.05)
        finally:
            me.destroy_node()
            rclpy.try_shutdown()
            rc = node.stop()
        loadavg_end = os.getloadavg()
        log_tail = node.log_tail(2000)

    latencies = [(received[s] - t) * 1e3 for s, t in sent.items() if s in received]
    result: dict[str, Any] = {
        "what": "segment_node soak: 10 Hz synthetic camera + LiDAR stream, memory / queues / rates over time",
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "config": {"rate_hz": args.rate, "points": int(np.mean([len(f[0]) for f in frames])),
                   "image_hw": list(hw), "minutes": args.minutes, "device": args.device,
                   "threads": args.threads,
                   "checkpoint": str(checkpoint.name), "pair_log": not args.no_pair_log,
                   "pair_log_budget_mb": PAIR_LOG_BUDGET_MB, "pair_log_queue": 4, "pair_log_every_n": 10,
                   "sample_every_s": args.sample_every},
        "loadavg_start": list(loadavg_start), "loadavg_end": list(loadavg_end),
        "node_exit_code": rc,
        "summary": summarize(samples, args.minutes * 60.0, len(sent), len(latencies), latencies),
        "samples": samples,
        "plot": str(args.plot),
    }
    if rc != 0:
        result["node_log_tail"] = log_tail
    result["markdown"] = markdown(result)
    plot(samples, args.plot, f"segment_node soak: {args.rate:g} Hz, {result['config']['points']} points, "
                             f"{args.device}, {args.threads} threads (load {loadavg_start[0]:.1f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"wrote {args.out} and {args.plot}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
