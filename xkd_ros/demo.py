"""`xkd-demo` (`make demo`): the whole product on one synthetic drive, with nothing but this command.

    xkd-demo --out DIR [--scans 40] [--checkpoint CKPT] [--rate-scale auto] [--timeout 900]

1. generate a short synthetic drive in the SemanticKITTI format (`xkd_core.synth`, a 32-beam
   LiDAR so a CPU keeps up; sequence 08, a world the `synth_small` training preset never sees),
2. convert it to a rosbag2 (mcap) with `xkd-kitti2bag`'s converter and its defaults (every camera
   view of the sequence),
3. replay that bag *live* over DDS into `segment_node` (a child process) with the shipped model and
   score what it publishes (`xkd-bag-eval --live --write-bag`; the node's topics, cameras and
   extrinsics come from the bag, as for any user's bag),
4. print mIoU in percent (full scan / camera frustum), latency p50/p99, drops, per-camera figures
   and where the files are.

DIR receives `data/` (the synthetic sequence), `drive/` (the input bag), `labeled/` (the node's
labeled clouds as a bag) and `eval/` (`report.json`, `latency_hist.png`, `per_class_iou.png`,
`bev.png`, `node.log`); a rerun replaces exactly those. The demo runs in its own ROS domain with
localhost-only discovery unless `ROS_DOMAIN_ID` is set, so it neither hears nor disturbs a robot
on the network. A global timeout (SIGALRM) ends a stuck run; the node child process is stopped on
every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import cv2

from xkd_core.config import ConfigError
from xkd_core.overlay import draw_label_overlay
from xkd_core.synth import SynthConfig, generate
from xkd_core.synth.config import LidarConfig
from xkd_ros.bag_eval import BagEvalOptions, replay_and_score, summary_lines
from xkd_ros.bag_io import read_bag_frames
from xkd_ros.bag_replay import bag_messages
from xkd_ros.fastdds import use_shipped_profile
from xkd_ros.kitti2bag import convert_sequence
from xkd_ros.replay_score import NodeOutput, decode_output
from xkd_ros.segment_params import resolve_checkpoint

DEMO_SEQUENCE = "08"
DEMO_SEED = 0
#: Recorded scan rate of the demo drive (Hz), as a KITTI Velodyne.
DEMO_RATE_HZ = 10.0
#: Replay speed on a machine without a GPU: the CPU model needs ~0.1-0.3 s per 32-beam scan.
CPU_RATE_SCALE = 0.4
_SUBDIRS = ("data", "drive", "labeled", "eval")
#: The node's input QoS in the demo. The player and the node share one host here, and a best-effort
#: link drops large clouds whose UDP fragments do not all arrive (~15 % of 0.5 MB scans on the 2-core
#: dev machine); a reliable link shows what the node itself does. `xkd-bag-eval` keeps the node's
#: configured QoS and reports such transport losses separately (`player.scans_received_by_node`).
DEMO_INPUT_QOS = "reliable"


def demo_synth_config() -> SynthConfig:
    """The demo's world: the default street, seen by a 32-beam LiDAR (~32k points per scan)."""
    return SynthConfig(lidar=LidarConfig(beams=32, columns=1024))


def _isolate_ros() -> str:
    """Own ROS domain and localhost discovery unless the user chose a domain, and the launch file's
    Fast DDS profile unless one is set; returns a description."""
    profile = use_shipped_profile(os.environ)
    if "ROS_DOMAIN_ID" in os.environ:
        return (f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} (from the environment), "
                f"Fast DDS profile {profile}")
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = os.environ
    return (f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']}, "
            f"Fast DDS profile {profile}")


def _cpu_threads() -> int:
    """Node inference threads: leave one core to the bag player and the scorer."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class DemoTimeout(RuntimeError):
    """The whole demo ran past `--timeout`."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise DemoTimeout("the demo ran past its --timeout")


def run_demo(out: str | Path, scans: int = 40, checkpoint: str = "", rate_scale: float | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns the evaluation report (with a `demo` section added)."""
    if scans < 2:
        raise ConfigError(f"--scans must be >= 2, got {scans}")
    resolve_checkpoint(checkpoint)  # a missing model stops the demo before any work, naming the file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in _SUBDIRS:  # a rerun replaces the previous demo's outputs, and only those
        shutil.rmtree(out / name, ignore_errors=True)
    ros = _isolate_ros()
    if rate_scale is None:
        rate_scale = 1.0 if _has_cuda() else CPU_RATE_SCALE
    timings: dict[str, float] = {}

    t = time.monotonic()
    generate(out / "data", [DEMO_SEQUENCE], scans, DEMO_SEED, demo_synth_config(), progress=progress)
    timings["synth_s"] = time.monotonic() - t

    t = time.monotonic()
    conversion = convert_sequence(out / "data", DEMO_SEQUENCE, out / "drive", storage="mcap",
                                  rate=DEMO_RATE_HZ, progress=progress)
    timings["kitti2bag_s"] = time.monotonic() - t

    t = time.monotonic()
    opts = BagEvalOptions(bag=str(conversion.bag), out=str(out / "eval"), checkpoint=checkpoint, live=True,
                          rate_scale=rate_scale, write_bag=str(out / "labeled"),
                          param=[f"cpu_threads:={_cpu_threads()}",
                                 f"qos.input.reliability:={DEMO_INPUT_QOS}"], progress=progress)
    report = replay_and_score(opts)
    timings["replay_s"] = time.monotonic() - t
    _write_overlay_picture(conversion.bag, out / "labeled", out / "overlay.png")
    report["demo"] = {"scans": scans, "sequence": DEMO_SEQUENCE, "seed": DEMO_SEED, "ros": ros,
                      "input_qos": DEMO_INPUT_QOS,
                      "replay_hz": DEMO_RATE_HZ * rate_scale,
                      **{k: round(v, 2) for k, v in timings.items()}}
    report_path = out / "eval" / report["files"]["report"]
    report_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")  # with the demo section
    return report


def _write_overlay_picture(drive: Path, labeled: Path, path: Path) -> None:
    """The labels the node published for the middle scored scan, drawn into its first camera's image:
    what the node's overlay topic shows (the README's picture)."""
    outputs = {o.stamp_ns: o for o in (NodeOutput(m.log_ns, m.data, 0.0) for m in bag_messages(labeled))}
    stamps = sorted(outputs)
    if not stamps:
        return
    stamp = stamps[len(stamps) // 2]
    frame = next(f for f in read_bag_frames(drive) if f.stamp_ns == stamp)
    _, xyzi, labels = decode_output(outputs[stamp].data)
    view = frame.views[0]
    picture = draw_label_overlay(view.image, xyzi[:, :3], labels, view.K, view.T, radius=1)
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def print_summary(report: dict[str, Any], out: str | Path) -> None:
    """The short summary `make demo` ends with."""
    demo = report["demo"]
    diag = report.get("node_diagnostics") or {}
    print()
    print(f"xkd demo: {demo['scans']} synthetic scans (sequence {demo['sequence']}), replayed live at "
          f"{demo['replay_hz']:.1f} Hz through segment_node on {diag.get('device', '?')} "
          f"({Path(report['checkpoint']).name}; {demo['input_qos']} input QoS; {demo['ros']})")
    for line in summary_lines(report, Path(out) / "eval"):
        print("  " + line)
    print(f"  the node's labels in the camera image {Path(out, 'overlay.png').resolve()}")
    print(f"  input bag {Path(out, 'drive').resolve()}; synthetic data {Path(out, 'data').resolve()}")
    print(f"  time: synth {demo['synth_s']:.1f} s, kitti2bag {demo['kitti2bag_s']:.1f} s, "
          f"replay + scoring {demo['replay_s']:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xkd-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True,
                   help="output folder (its data/ drive/ labeled/ eval/ are replaced)")
    p.add_argument("--scans", type=int, default=40, help="scans in the synthetic drive (default 40)")
    p.add_argument("--checkpoint", default="", help="model .pt (default: the shipped model)")
    p.add_argument("--rate-scale", type=float, default=None,
                   help=f"replay speed vs the recorded {DEMO_RATE_HZ:.0f} Hz "
                        f"(default: 1.0 with a GPU, {CPU_RATE_SCALE} on the CPU)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="give up after this many seconds (default 900)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xkd-demo`: 0 on success, 2 on bad input, 1 when a step fails or times out."""
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        print("xkd-demo: error: --timeout must be > 0", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        report = run_demo(args.out, args.scans, args.checkpoint, args.rate_scale,
                          progress=not args.no_progress)
    except ConfigError as exc:
        print(f"xkd-demo: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"xkd-demo: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    print_summary(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
