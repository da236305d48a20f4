"""`xkd-bag-eval`: replay a rosbag2 through the segment node's pipeline and score it against ground truth.

    xkd-bag-eval --bag BAG --out DIR [--checkpoint CKPT] [--live] [--fuse] [--rate-scale 1.0]
                 [--write-bag OUT_BAG] [--camera 2] [--params-file config/segment.yaml]
                 [--param NAME:=VALUE ...]

Both modes run the real `SegmentNode` with the node's own parameters (`config/segment.yaml`, plus
the topics and LiDAR -> camera extrinsics read from the bag, plus `--checkpoint` / `--fuse` /
`--param`, written to `DIR/node_params.yaml`), so conversions, synchronization policy and model are
exactly what runs on the vehicle:

- offline (default): the node is built in this process and the bag's messages are handed to its
  subscription callbacks one by one, each frame segmented before the next message, as fast as
  the model allows. Nothing is published on the network; latency is callback-in to labeled
  cloud out; a drop is a scan the node produced nothing for (bad input, no frame ever skipped for
  being late).
- `--live`: `segment_node` runs as a child process; the bag is published with rclpy at its
  recorded rate (times `--rate-scale`), the labeled clouds and `/diagnostics` the node publishes
  are collected over real DDS. Latency is receive time minus publish time of the scan (one
  monotonic clock); drops include frames the node skipped because it was still busy.

Outputs are matched to `/xkd/ground_truth` by header stamp and scored on the full scan and on the
camera frustum (`xkd_ros.replay_score`). `DIR` receives `report.json` (schema in docs/bag_eval.md),
`latency_hist.png`, `per_class_iou.png`, `bev.png`, `node_params.yaml` and, live, `node.log`;
`--write-bag` stores every labeled cloud the node published in a new bag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from xkd_core.config import ConfigError, from_dict
from xkd_core.evaluation.plots import plot_iou_bars
from xkd_core.geometry.projection import ViewGeometry
from xkd_ros.bag_io import (
    BAG_VERSION,
    GT_TOPIC,
    POINTCLOUD2,
    SCAN_TOPIC,
    SENSOR_QOS,
    TYPESTORE,
    BagFormatError,
    image_topic,
    info_topic,
    read_bag_frames,
)
from xkd_ros.bag_replay import (
    BagMessage,
    BagPlayer,
    BagTopics,
    OutputCollector,
    bag_messages,
    bag_topics,
    cloud_stamp_ns,
)
from xkd_ros.node_process import NODE_NAME, NodeProcess, default_params_file, ros_args, write_overrides
from xkd_ros.replay_plots import plot_bev, plot_latency_hist
from xkd_ros.replay_score import REPORT_SCHEMA, NodeOutput, ReplayScorer, merge_by_stamp
from xkd_ros.stamp import header_ns

DEFAULT_OUTPUT_TOPIC = "/xkd/labeled_cloud"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@dataclass
class BagEvalOptions:
    """Everything one evaluation run needs (the command line, validated with `xkd_core.config`)."""

    bag: str
    out: str
    checkpoint: str = ""  # empty: the shipped model
    live: bool = False
    fuse: bool = False
    rate_scale: float = 1.0
    write_bag: str | None = None
    write_format: Literal["mcap", "sqlite3"] = "mcap"
    camera: int = 2
    params_file: str = ""  # empty: config/segment.yaml
    param: list[str] = field(default_factory=list)  # NAME:=VALUE node parameter overrides
    output_topic: str = DEFAULT_OUTPUT_TOPIC
    startup_timeout: float = 300.0  # s for the live node to load its model and subscribe
    drain_timeout: float = 15.0  # s to wait for the last outputs once the bag is played
    camera_lead_ms: float = 20.0  # live: camera messages are played this much ahead of the scans
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.rate_scale > 0:
            raise ConfigError(f"--rate-scale must be > 0, got {self.rate_scale}")
        if not self.startup_timeout > 0 or not self.drain_timeout > 0:
            raise ConfigError("--startup-timeout and --drain-timeout must be > 0 s")
        if not self.camera_lead_ms >= 0:
            raise ConfigError(f"--camera-lead-ms must be >= 0, got {self.camera_lead_ms}")


@dataclass
class BagSetup:
    """What the bag says about itself, read once before replaying it."""

    topics: BagTopics
    scans: int
    camera: int | None  # the camera the node gets, None for a LiDAR-only bag
    geometry: ViewGeometry | None  # (K, T, (H, W)) of that camera: node extrinsics and frustum


def inspect_bag(bag: str | Path, camera: int) -> BagSetup:
    """Topics, scan count and the calibration of `camera` (taken from the bag's first frame with it)."""
    topics = bag_topics(bag)
    if SCAN_TOPIC not in topics.types:
        raise BagFormatError(f"bag {bag} has no {SCAN_TOPIC} topic (topics: {sorted(topics.types)})")
    if GT_TOPIC not in topics.types:
        raise BagFormatError(f"bag {bag} has no ground truth topic {GT_TOPIC}: nothing to score against")
    has_cam = image_topic(camera) in topics.types and info_topic(camera) in topics.types
    geometry = None
    if has_cam:
        for frame in read_bag_frames(bag, cameras=[camera]):
            if frame.views:
                v = frame.views[0]
                geometry = (v.K, v.T, v.hw)
                break
        if geometry is None:
            raise BagFormatError(f"bag {bag}: no scan of {SCAN_TOPIC} has an image of camera {camera}")
    else:
        cams = sorted(t for t in topics.types if t.endswith("/image_raw"))
        if cams:
            raise BagFormatError(f"bag {bag} has no image + camera_info of camera {camera} "
                                 f"(image topics: {cams}); choose one with --camera")
    return BagSetup(topics, topics.counts.get(SCAN_TOPIC, 0), camera if has_cam else None, geometry)


def parse_param(text: str) -> tuple[str, Any]:
    """`NAME:=VALUE` -> (name, value typed as YAML, as `ros2 run ... -p` does)."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise ConfigError(f"--param expects NAME:=VALUE, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--param {name}: cannot parse value {value!r}: {exc}") from exc


def node_overrides(opts: BagEvalOptions, setup: BagSetup, offline: bool) -> dict[str, Any]:
    """Node parameters that make the node read this bag (on top of the params file)."""
    params: dict[str, Any] = {
        "checkpoint": opts.checkpoint,
        "fuse_camera": bool(opts.fuse),
        "use_camera": setup.camera is not None,
        "topics.cloud_in": SCAN_TOPIC,
        "topics.cloud_out": opts.output_topic,
    }
    if setup.camera is not None and setup.geometry is not None:
        params["topics.image_in"] = image_topic(setup.camera)
        params["topics.camera_info_in"] = info_topic(setup.camera)
        params["extrinsics.lidar_to_camera"] = [float(v) for v in np.asarray(setup.geometry[1]).reshape(-1)]
    if offline:
        # in-process replay: nothing goes on the network, no pair log is written
        params["publish_overlay"] = False
        params["log_pairs"] = False
    for text in opts.param:
        name, value = parse_param(text)
        params[name] = value
    return params


class LabeledBagWriter:
    """The node's labeled clouds, written unchanged (CDR bytes) into a new bag stamped by header time."""

    def __init__(self, path: str | Path, storage: str = "mcap", topic: str = DEFAULT_OUTPUT_TOPIC) -> None:
        if storage not in STORAGES:
            raise ConfigError(f"--write-format must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise ConfigError(f"--write-bag {self.path} exists already; choose a new path")
        self.writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.conn = self.writer.add_connection(topic, POINTCLOUD2, typestore=TYPESTORE,
                                               offered_qos_profiles=[SENSOR_QOS])
        self.count = 0

    def write(self, output: NodeOutput) -> None:
        self.writer.write(self.conn, output.stamp_ns, output.data)
        self.count += 1

    def close(self) -> None:
        self.writer.close()


class InProcessNode:
    """The real `SegmentNode`, built in this process and fed directly (the offline replay).

    The node's worker thread is stopped right after start-up; each message goes to the node's own
    subscription callback and the frame it hands to its worker is processed at once with the node's
    own processing step, whose publications are captured instead of sent. Deterministic: every
    frame is finished before the next message, so nothing is dropped for being late.
    """

    def __init__(self, params_files: list[Path]) -> None:
        import rclpy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from xkd_ros.segment_node import SegmentNode

        self.context = rclpy.Context()
        rclpy.init(args=["xkd-bag-eval"], context=self.context)  # never sys.argv: no stray ROS args
        node = None
        try:
            node = SegmentNode(context=self.context, cli_args=ros_args(params_files))
            for name in ("_on_cloud", "_on_image", "_on_camera_info", "_process", "_publish_diagnostics",
                         "slot", "cloud_pub", "diag_pub", "cfg", "close"):
                if not hasattr(node, name):  # the node changed under this driver: fail loudly
                    raise RuntimeError(f"SegmentNode has no {name!r}: update xkd_ros.bag_eval.InProcessNode")
            node.close()  # stop the worker: frames are processed synchronously by `feed`
        except BaseException:
            if node is not None:
                node.close()
                node.destroy_node()
            self.context.try_shutdown()
            raise
        self.node = node
        self.outputs: list[NodeOutput] = []
        self.diagnostics: dict[str, str] | None = None
        self._received: dict[int, float] = {}
        self.errors = 0
        node.cloud_pub = _Capture(self._on_output)
        node.diag_pub = _Capture(self._on_diagnostics)
        topics = node.cfg.topics
        self.routes = {topics.cloud_in: (PointCloud2, node._on_cloud)}
        if node.cfg.use_camera:
            self.routes[topics.image_in] = (Image, node._on_image)
            self.routes[topics.camera_info_in] = (CameraInfo, node._on_camera_info)

    def feed(self, message: BagMessage) -> list[NodeOutput]:
        """Hand one bag message to the node; the labeled clouds this completes (usually 0 or 1)."""
        from rclpy.serialization import deserialize_message

        route = self.routes.get(message.topic)
        if route is None:
            return []
        cls, callback = route
        msg = deserialize_message(message.data, cls)
        if message.topic == self.node.cfg.topics.cloud_in:
            self._received[header_ns(msg.header)] = time.monotonic()
        callback(msg)
        start = len(self.outputs)
        frame = self.node.slot.take(timeout=0)
        if frame is not None:
            try:
                self.node._process(frame)
            except Exception as exc:  # noqa: BLE001 - as the node's worker: one bad frame is skipped
                self.errors += 1
                self.node.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}")
        return self.outputs[start:]

    def _on_output(self, msg: Any) -> None:
        from rclpy.serialization import serialize_message

        t = time.monotonic()
        stamp = header_ns(msg.header)
        t_in = self._received.pop(stamp, t)
        self.outputs.append(NodeOutput(stamp, serialize_message(msg), t - t_in))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            values["message"] = status.message
            self.diagnostics = values

    def final_diagnostics(self) -> dict[str, str] | None:
        """The node's own diagnostics report at the end of the replay."""
        self.node._publish_diagnostics()
        return self.diagnostics

    def close(self) -> None:
        self.node.destroy_node()
        self.context.try_shutdown()


class _Capture:
    """Stands in for a publisher: hands each message to a callback."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def publish(self, msg: Any) -> None:
        self.callback(msg)


def _score(bag: str, outputs: Iterator[NodeOutput], scorer: ReplayScorer,
           writer: LabeledBagWriter | None) -> None:
    """Pair the outputs with the bag's ground truth by stamp, score them, and write them out."""
    def written() -> Iterator[NodeOutput]:
        for out in outputs:
            if writer is not None:
                writer.write(out)
            yield out

    scorer.consume(merge_by_stamp(read_bag_frames(bag, cameras=[]), written()))


def _progress(opts: BagEvalOptions, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="scan", disable=not opts.progress, dynamic_ncols=True)


def run_offline(opts: BagEvalOptions, setup: BagSetup, params_files: list[Path], scorer: ReplayScorer,
                writer: LabeledBagWriter | None) -> dict[str, Any]:
    """The in-process replay (module docstring); fills `scorer`, returns the mode's report fields."""
    node = InProcessNode(params_files)
    try:
        topics = list(node.routes)
        bar = _progress(opts, setup.scans, "bag-eval offline")

        def outputs() -> Iterator[NodeOutput]:
            for message in bag_messages(opts.bag, topics):
                if message.topic == SCAN_TOPIC:
                    bar.update(1)
                yield from node.feed(message)

        try:
            _score(opts.bag, outputs(), scorer, writer)
        finally:
            bar.close()
        return {"node_diagnostics": node.final_diagnostics(), "inference_errors": node.errors,
                "latency_definition": "node callback called -> labeled cloud published (in process)"}
    finally:
        node.close()


_END = object()


def run_live(opts: BagEvalOptions, setup: BagSetup, params_files: list[Path], scorer: ReplayScorer,
             writer: LabeledBagWriter | None) -> dict[str, Any]:
    """The live replay over DDS with `segment_node` as a child process (module docstring)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    out_dir = Path(opts.out)
    context = rclpy.Context()
    rclpy.init(args=["xkd-bag-eval"], context=context)
    node = rclpy.create_node(f"xkd_bag_eval_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, name="xkd-bag-eval-spin", daemon=True)
    published: dict[int, float] = {}
    collector = OutputCollector(node, opts.output_topic, NODE_NAME)
    player = BagPlayer(node, opts.bag, setup.topics, SCAN_TOPIC, opts.rate_scale, skip=[GT_TOPIC],
                       on_cloud=published.__setitem__, camera_lead_s=opts.camera_lead_ms * 1e-3)
    failure: list[BaseException] = []

    def outputs() -> Iterator[NodeOutput]:
        while True:
            item = collector.clouds.get()
            if item is _END:
                return
            try:
                stamp = cloud_stamp_ns(item.data)
            except Exception:  # noqa: BLE001 - a message without a readable header cannot be paired
                scorer.counts["undecodable_outputs"] += 1
                continue
            t_pub = published.get(stamp)
            yield NodeOutput(stamp, item.data, float("nan") if t_pub is None else item.t - t_pub)

    def score() -> None:
        try:
            _score(opts.bag, outputs(), scorer, writer)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)

    scoring = threading.Thread(target=score, name="xkd-bag-eval-score", daemon=True)
    proc: NodeProcess | None = None
    bar = _progress(opts, setup.scans, "bag-eval live")
    try:
        spin.start()
        proc = NodeProcess(params_files, out_dir / "node.log")  # main thread: see NodeProcess

        def ready() -> bool:
            subscribed = player.subscriptions(SCAN_TOPIC) > 0
            if setup.camera is not None:
                subscribed = subscribed and player.subscriptions(image_topic(setup.camera)) > 0
            return subscribed and collector.cloud_sub.get_publisher_count() > 0

        t0 = time.monotonic()
        proc.wait_until(ready, opts.startup_timeout, "subscribing to the bag's topics")
        startup_s = time.monotonic() - t0
        scoring.start()
        player.start()
        shown = 0
        while not player.done.wait(0.2):
            bar.update(player.clouds_published - shown)
            shown = player.clouds_published
            if not proc.alive():
                raise RuntimeError(f"segment_node exited with code {proc.proc.returncode} during the replay; "
                                   f"its log ({proc.log_path}):\n{proc.log_tail()}")
        bar.update(player.clouds_published - shown)
        if player.error is not None:
            raise RuntimeError(f"bag player failed: {player.error}") from player.error
        # drain: the last frame or two may still be in the node. A node that skipped frames never
        # catches up with the count, so stop once it has been quiet for 3x the slowest frame so far.
        t_done = time.monotonic()
        while collector.received < player.clouds_published and proc.alive():
            quiet = min(opts.drain_timeout, max(1.0, 3.0 * max(scorer.latencies_s, default=0.0)))
            if time.monotonic() - max(t_done, collector.last_t or 0.0) > quiet:
                break
            time.sleep(0.05)
        t_mark = time.monotonic()  # one more diagnostics report, covering every frame
        period = _diagnostics_period(params_files)
        while proc.alive() and (collector.diagnostics_t or 0.0) <= t_mark:
            if time.monotonic() - t_mark > 3 * period + 2.0:
                break
            time.sleep(0.05)
        diagnostics = collector.diagnostics
    finally:
        bar.close()
        player.stop()
        exit_code = proc.stop() if proc is not None else None
        collector.clouds.put(_END)
        if scoring.is_alive():
            scoring.join()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
        spin.join(timeout=5.0)
    if failure:
        raise failure[0]
    return {
        "node_diagnostics": diagnostics,
        "latency_definition": "labeled cloud received - scan published (rclpy, one monotonic clock)",
        "player": {
            "messages_published": player.published,
            "scans_published": player.clouds_published,
            "scans_received_by_node": _int_or_none((diagnostics or {}).get("frames_in")),
            "camera_lead_ms": opts.camera_lead_ms,
            "max_lag_ms": round(1e3 * player.max_lag_s, 3),
            "not_played": player.not_played,
        },
        "node": {"startup_s": round(startup_s, 3), "exit_code": exit_code, "log": "node.log",
                 "command": " ".join(proc.command) if proc is not None else None},
    }


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _diagnostics_period(params_files: list[Path]) -> float:
    """The node's `diagnostics_period` from the params files (last one wins), default 1 s."""
    period = 1.0
    for p in params_files:
        try:
            tree = yaml.safe_load(Path(p).read_text()) or {}
            value = tree.get(f"/{NODE_NAME}", {}).get("ros__parameters", {}).get("diagnostics_period")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            period = float(value)
    return period


def evaluate(opts: BagEvalOptions) -> dict[str, Any]:
    """Run one evaluation and write everything under `opts.out`; returns the report."""
    from xkd_ros.segment_params import resolve_checkpoint

    t_start = time.monotonic()
    out_dir = Path(opts.out)
    checkpoint = resolve_checkpoint(opts.checkpoint)  # ConfigError naming the parameter if missing
    setup = inspect_bag(opts.bag, opts.camera)
    params_file = Path(opts.params_file) if opts.params_file else default_params_file()
    if not params_file.is_file():
        raise ConfigError(f"--params-file: file not found: {params_file}")
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = node_overrides(opts, setup, offline=not opts.live)
    overrides_file = write_overrides(out_dir / "node_params.yaml", overrides)
    params_files = [params_file, overrides_file]
    scorer = ReplayScorer(frustum=setup.geometry, bev_index=setup.scans // 2)
    writer = None
    if opts.write_bag:
        writer = LabeledBagWriter(opts.write_bag, opts.write_format, opts.output_topic)
    try:
        run = run_live if opts.live else run_offline
        mode_fields = run(opts, setup, params_files, scorer, writer)
    except BaseException:
        if writer is not None:  # no half-written bag left behind
            writer.close()
            shutil.rmtree(writer.path, ignore_errors=True)
        raise
    if writer is not None:
        writer.close()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "mode": "live" if opts.live else "offline",
        "bag": str(Path(opts.bag).resolve()),
        "checkpoint": str(checkpoint),
        "fuse": bool(opts.fuse),
        "camera": setup.camera,
        "rate_scale": opts.rate_scale if opts.live else None,
        "params_files": [str(p) for p in params_files],
        "node_parameters": overrides,
    }
    report.update(scorer.report())
    report.update(mode_fields)
    files = {"report": "report.json", "latency_hist": "latency_hist.png",
             "per_class_iou": "per_class_iou.png", "bev": "bev.png", "node_params": "node_params.yaml"}
    plot_latency_hist(np.asarray(scorer.latencies_s) * 1e3, out_dir / files["latency_hist"],
                      title=f"{report['mode']} replay latency")
    ious = {"full scan": scorer.full.iou()}
    if setup.geometry is not None:
        ious["camera frustum"] = scorer.in_frustum.iou()
    plot_iou_bars(ious, out_dir / files["per_class_iou"], title=f"per-class IoU, {report['mode']} replay")
    plot_bev(scorer.bev, out_dir / files["bev"], title=f"{Path(opts.bag).name},")
    if opts.live:
        files["node_log"] = "node.log"
    if writer is not None:
        files["labeled_bag"] = str(writer.path.resolve())
        report["labeled_bag_messages"] = writer.count
    report["files"] = files
    report["wall_s"] = round(time.monotonic() - t_start, 3)
    (out_dir / files["report"]).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return report


def summary_lines(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """A short human summary of a report (printed by the CLI and the demo)."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} ms"

    f, lat = report["frames"], report["latency_ms"]
    player = report.get("player") or {}
    received, sent = player.get("scans_received_by_node"), player.get("scans_published")
    lost = ""
    if received is not None and sent is not None and received < sent:
        lost = f" ({sent - received} of them never reached the node)"
    return [
        f"mode {report['mode']}: {f['scored']}/{f['with_ground_truth']} scans scored, {f['dropped']} dropped"
        + lost + (f", {f['mismatched']} mismatched" if f["mismatched"] else ""),
        f"mIoU full scan {pct(report['miou']['full'])}, camera frustum {pct(report['miou']['frustum'])}",
        f"latency p50 {ms(lat['p50'])}, p90 {ms(lat['p90'])}, p99 {ms(lat['p99'])}",
        f"report and pictures in {Path(out_dir).resolve()}"
        + (f"; labeled bag {report['files']['labeled_bag']}" if "labeled_bag" in report["files"] else ""),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="xkd-bag-eval", description=__doc__.splitlines()[0])
    p.add_argument("--bag", required=True, help="rosbag2 folder (mcap or sqlite3) written by xkd-kitti2bag")
    p.add_argument("--out", required=True, help="output folder for report.json and the pictures")
    p.add_argument("--checkpoint", default="", help="model .pt (default: the shipped model)")
    p.add_argument("--live", action="store_true",
                   help="play the bag over DDS into segment_node running as a child process")
    p.add_argument("--fuse", action="store_true",
                   help="use the fused 3D+2D head where an image is synchronized")
    p.add_argument("--rate-scale", type=float, default=1.0,
                   help="live: playback speed relative to the recorded rate (0.5 = half speed)")
    p.add_argument("--write-bag", default=None, help="write the node's labeled clouds into this new bag")
    p.add_argument("--write-format", choices=sorted(STORAGES), default="mcap", help="storage of --write-bag")
    p.add_argument("--camera", type=int, default=2, help="KITTI camera the node uses (default 2)")
    p.add_argument("--params-file", default="", help="node parameters (default config/segment.yaml)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="override one node parameter (repeatable), e.g. --param cpu_threads:=2")
    p.add_argument("--output-topic", default=DEFAULT_OUTPUT_TOPIC, help="the node's labeled cloud topic")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="live: seconds for the node to start")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="live: seconds to wait for the last outputs once the bag is played")
    p.add_argument("--camera-lead-ms", type=float, default=20.0,
                   help="live: play camera messages this much ahead of the scan they are stamped with")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def options_from_args(args: argparse.Namespace) -> BagEvalOptions:
    """Validated options from parsed arguments (ConfigError naming the option)."""
    values = {k: v for k, v in vars(args).items() if k != "no_progress"}
    values["progress"] = not args.no_progress
    return from_dict(BagEvalOptions, values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xkd-bag-eval`: 0 on success, 2 on bad input, 1 when the replay fails."""
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        report = evaluate(opts)
    except (ConfigError, BagFormatError, FileNotFoundError) as exc:
        print(f"xkd-bag-eval: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"xkd-bag-eval: failed: {exc}", file=sys.stderr)
        return 1
    for line in summary_lines(report, opts.out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
