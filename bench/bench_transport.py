"""One DDS hop of a LiDAR-sized PointCloud2 between two processes, with and without the Fast DDS profile.

Why: on the GPU the node's own time per 127k-point frame (~26 ms p50 on an H200) is about half of its
end-to-end latency; the rest is the two DDS hops of clouds of 2-4 MB. Fast DDS's default 512 KiB
shared-memory segment cuts such a cloud into fragments; `config/fastdds_large_clouds.xml` (set by
segment.launch.py) carries it whole. This measures publish -> subscriber callback (rclpy on both
sides, message built from numpy and read back as in the node) and how many clouds arrive, for each
profile and reliability (the node's input default is best effort, as LiDAR drivers publish), rounds
interleaved so that load drifts hit both profiles alike.

Run: .venv/bin/python -m bench.bench_transport [--points 30000 127000 240000] [--messages 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    REPO,
    RESULTS,
    command_line,
    fastdds_profile,
    finish,
    load_average,
    machine_info,
    now_utc,
    stats_ms,
)
from xkd_ros.fastdds import set_profile

PROFILES = ("none", "shipped")
RELIABILITY = ("best_effort", "reliable")


def _qos(reliability: str) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    # as the node's input: KEEP_LAST 5, best effort or reliable
    return QoSProfile(depth=5, reliability=ReliabilityPolicy[reliability.upper()],
                      history=HistoryPolicy.KEEP_LAST)


def publisher(topic: str, reliability: str, points: int, messages: int, rate: float, warmup: int) -> None:
    """Child: wait for the subscriber, then publish `warmup + messages` clouds stamped with wall time."""
    import rclpy
    from sensor_msgs.msg import PointCloud2

    from xkd_ros.pointcloud import to_rclpy_cloud, xyzi_array
    from xkd_ros.stamp import rclpy_header

    rclpy.init()
    node = rclpy.create_node("xkd_bench_transport_pub")
    pub = node.create_publisher(PointCloud2, topic, _qos(reliability))
    cloud = xyzi_array(np.random.default_rng(0).uniform(-50, 50, (points, 4)).astype(np.float32))
    deadline = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    period, next_t = 1.0 / rate, time.monotonic() + 0.5
    for i in range(warmup + messages):
        time.sleep(max(0.0, next_t - time.monotonic()))
        pub.publish(to_rclpy_cloud(rclpy_header(time.time_ns(), f"velodyne_{i}"), cloud))  # i: which one
        next_t += period
    time.sleep(1.0)  # reliable: let the last messages be acknowledged before the participant goes
    node.destroy_node()
    rclpy.try_shutdown()


def subscriber(topic: str, reliability: str, expected: int, timeout: float) -> None:
    """Child: receive clouds, decode them as the node does; on SIGTERM (the publisher is done) or when
    all arrived, print the latencies (s) as JSON."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import PointCloud2

    from xkd_ros.pointcloud import cloud_to_xyzi
    from xkd_ros.stamp import header_ns

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("xkd_bench_transport_sub")
    latencies: list[tuple[int, float]] = []
    sizes: list[int] = []

    def on_cloud(msg: PointCloud2) -> None:
        now = time.time_ns()
        sizes.append(len(cloud_to_xyzi(msg)))
        latencies.append((int(msg.header.frame_id.rsplit("_", 1)[1]), (now - header_ns(msg.header)) / 1e9))

    node.create_subscription(PointCloud2, topic, on_cloud, _qos(reliability))
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while not stop and len(latencies) < expected and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"latencies_s": latencies, "points": sizes[:1]}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run_round(profile: Path | None, reliability: str, points: int, messages: int, rate: float, warmup: int,
              domain: int) -> dict[str, Any]:
    """One publisher and one subscriber process, both with `profile`; what arrived, how late (the
    first `warmup` clouds published are not measured)."""
    env = dict(os.environ)
    set_profile(env, profile)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    topic = "/xkd_bench_transport/cloud"
    expected = warmup + messages
    me = [sys.executable, "-m", "bench.bench_transport"]
    sub_args = ["--child", "sub", topic, reliability, str(expected), str(expected / rate + 40)]
    sub = subprocess.Popen([*me, *sub_args], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if sub.stdout.readline().strip() != "ready":
            raise RuntimeError(f"subscriber did not start: {sub.stderr.read()[-2000:]}")
        pub_args = ["--child", "pub", topic, reliability, str(points), str(messages), str(rate), str(warmup)]
        pub = subprocess.run([*me, *pub_args], cwd=REPO, capture_output=True, text=True, env=env,
                             timeout=expected / rate + 60)
        if pub.returncode != 0:
            raise RuntimeError(f"publisher failed: {pub.stderr[-2000:]}")
        if sub.poll() is None:
            sub.send_signal(signal.SIGTERM)  # every cloud that will arrive has (the publisher waited 1 s)
        out, err = sub.communicate(timeout=60)
    finally:
        if sub.poll() is None:
            sub.kill()
    if sub.returncode != 0:
        raise RuntimeError(f"subscriber failed: {err[-2000:]}")
    got = json.loads(out.strip().splitlines()[-1])
    measured = [t for i, t in got["latencies_s"] if i >= warmup]
    return {"received": len(measured), "latencies_s": measured,
            "points_decoded": got["points"][0] if got["points"] else 0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":  # internal: one side of a round
        role, *rest = sys.argv[2:]
        if role == "pub":
            publisher(rest[0], rest[1], int(rest[2]), int(rest[3]), float(rest[4]), int(rest[5]))
        else:
            subscriber(rest[0], rest[1], int(rest[2]), float(rest[3]))
        return {}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, nargs="+", default=[30_000, 127_000, 240_000])
    p.add_argument("--profiles", nargs="+", default=list(PROFILES),
                   help="'none' (Fast DDS defaults), 'shipped' (config/fastdds_large_clouds.xml), XML paths")
    p.add_argument("--reliability", nargs="+", default=list(RELIABILITY), choices=list(RELIABILITY))
    p.add_argument("--messages", type=int, default=100, help="measured clouds per round")
    p.add_argument("--rounds", type=int, default=1, help="rounds per row, interleaved across profiles")
    p.add_argument("--rate", type=float, default=10.0, help="Hz: the LiDAR's rate")
    p.add_argument("--warmup", type=int, default=10, help="clouds per round before measuring")
    p.add_argument("--out", type=Path, default=RESULTS / "transport.json")
    args = p.parse_args(argv)
    profiles = {name: fastdds_profile(name) for name in args.profiles}
    result: dict[str, Any] = {
        "what": "one DDS hop of a PointCloud2 (x, y, z, intensity float32) between two processes, "
                "publish -> subscriber callback after decoding, KEEP_LAST 5",
        "date": now_utc(), "command": command_line(), "machine": machine_info("cpu"),
        "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
        "rate_hz": args.rate, "messages_per_round": args.messages, "rounds": args.rounds,
        "profiles": {name: (str(path) if path else None) for name, path in profiles.items()},
        "load_avg_start": load_average(), "rows": [],
    }
    domain = 1 + os.getpid() % 100
    for points in args.points:
        for reliability in args.reliability:
            samples: dict[str, list[float]] = {name: [] for name in profiles}
            received = {name: 0 for name in profiles}
            for _ in range(args.rounds):
                for name, path in profiles.items():
                    r = run_round(path, reliability, points, args.messages, args.rate, args.warmup, domain)
                    samples[name] += r["latencies_s"]
                    received[name] += r["received"]
                    if r["received"] and r["points_decoded"] != points:
                        raise RuntimeError(f"decoded {r['points_decoded']} points, sent {points}")
            for name in profiles:
                sent = args.rounds * args.messages
                row = {"points": points, "reliability": reliability, "profile": name, "bytes": points * 16,
                       "sent": sent, "received": received[name], "lost": sent - received[name],
                       "latency_ms": stats_ms(samples[name])}
                result["rows"].append(row)
                lat = row["latency_ms"]
                print(f"{points:>7} pts, {reliability:>11}, profile {name:>8}: {received[name]}/{sent} "
                      f"received, p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms", flush=True)
    finish(result, args.out)
    return result


if __name__ == "__main__":
    main()
