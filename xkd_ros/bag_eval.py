"""`xkd-bag-eval`: replay a rosbag2 through the segment node's pipeline and score what it publishes.

    xkd-bag-eval --bag BAG --out DIR [--checkpoint CKPT] [--live] [--fuse] [--rate-scale 1.0]
                 [--cloud-topic TOPIC] [--camera NAME ...] [--gt-topic TOPIC]
                 [--write-bag OUT_BAG] [--params-file config/segment.yaml] [--param NAME:=VALUE ...]

Any bag works, not only xkd's own (`xkd_ros.bag_io.inspect_bag` finds the cloud topic, every camera
by its topic types, the LiDAR -> camera extrinsics through `/tf_static`, and the ground truth). The
node's parameters are the params file's, with what the bag says on top -- the cloud topic,
`cameras.names`, per camera its image topic, transport (raw / compressed), camera_info topic,
`rectified`, and `lidar_to_camera` where `/tf_static` connects the camera to the LiDAR (a camera it
does not connect gets none: the node skips it and reports it, as on a vehicle) -- then
`--checkpoint`, `--fuse` and `--param`. All of it is written to `DIR/node_params.yaml`.

- offline (default): the node's `FramePipeline` (`xkd_ros.pipeline`) is built in this process from
  those parameters (no rclpy), the bag's messages are deserialized with the rosbags typestore and
  handed to it in log-time order, and each frame `on_cloud` returns is processed at once, as fast
  as the model allows. The pipeline's TF lookup is the bag's static transform tree. Latency is
  callback-in to labeled cloud out; a drop is a scan the pipeline produced nothing for (bad input;
  no frame is ever skipped for being late).
- `--live`: `segment_node` runs as a child process; every topic of the bag (each camera raw or
  compressed) is published with rclpy at its recorded rate (times `--rate-scale`), the labeled
  clouds and `/diagnostics` the node publishes are collected over real DDS. Latency is receive
  time minus publish time of the scan (one monotonic clock); drops include frames the node skipped
  because it was still busy.

Outputs are paired with the bag's scans by header stamp and scored against the ground truth on the
full scan and on the camera frustum (union of every camera's view; `xkd_ros.replay_score`). A bag
without ground truth is replayed all the same: latency, rates, drops and the histogram of predicted
labels, no mIoU. Per camera, the report gives the node's own figures (frames the camera was used
in, decode failures, frames without extrinsics) from its diagnostics. `DIR` receives `report.json`
(schema in docs/bag_eval.md), `latency_hist.png`, `label_histogram.png`, `bev.png`,
`per_class_iou.png` (with ground truth), `node_params.yaml` and `node.log`; `--write-bag` stores
every labeled cloud the node published in a new bag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from xkd_core.config import ConfigError, from_dict
from xkd_core.evaluation.plots import plot_iou_bars
from xkd_ros.bag_io import (
    BAG_VERSION,
    GT_TOPIC,
    POINTCLOUD2,
    SENSOR_QOS,
    TYPESTORE,
    BagFormatError,
    BagLayout,
    inspect_bag,
    read_bag_frames,
)
from xkd_ros.bag_replay import (
    CAMERA_STATUS,
    NODE_STATUS,
    BagPlayer,
    OutputCollector,
    bag_messages,
    cloud_stamp_ns,
)
from xkd_ros.node_process import NODE_NAME, NodeProcess, write_overrides
from xkd_ros.paths import default_params_file
from xkd_ros.pipeline import ERROR, OK, FramePipeline, load_segmenter
from xkd_ros.replay_plots import plot_bev, plot_label_histogram, plot_latency_hist
from xkd_ros.replay_score import REPORT_SCHEMA, NodeOutput, ReplayScorer, merge_by_stamp
from xkd_ros.segment_params import (
    SegmentNodeConfig,
    config_from_values,
    params_file_values,
    resolve_checkpoint,
)

DEFAULT_OUTPUT_TOPIC = "/xkd/labeled_cloud"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: The node's fully qualified name: the prefix of its diagnostic status names.
NODE_FQN = f"/{NODE_NAME}"
_LEVEL_NAMES = {OK: "INFO", ERROR: "ERROR"}  # anything else: WARN


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
    cloud_topic: str | None = None  # None: /velodyne_points, or the bag's only other PointCloud2
    camera: list[str] = field(default_factory=list)  # camera names to use; empty: every camera found
    gt_topic: str | None = None  # None: /xkd/ground_truth when the bag has it (no ground truth otherwise)
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


def parse_param(text: str) -> tuple[str, Any]:
    """`NAME:=VALUE` -> (name, value typed as YAML, as `ros2 run ... -p` does)."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise ConfigError(f"--param expects NAME:=VALUE, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--param {name}: cannot parse value {value!r}: {exc}") from exc


def bag_parameters(opts: BagEvalOptions, layout: BagLayout, offline: bool) -> dict[str, Any]:
    """The node parameters this bag and these options imply (flattened ROS names; module docstring)."""
    params: dict[str, Any] = {
        "checkpoint": opts.checkpoint,
        "fuse_camera": bool(opts.fuse),
        "use_camera": bool(layout.cameras),
        "topics.cloud_in": layout.cloud_topic,
        "topics.cloud_out": opts.output_topic,
    }
    if layout.cameras:
        params["cameras.names"] = [c.name for c in layout.cameras]
        for cam in layout.cameras:
            group = f"cameras.{cam.name}."
            params[group + "image_topic"] = cam.base_topic
            params[group + "camera_info_topic"] = cam.info_topic
            params[group + "transport"] = cam.transport
            params[group + "rectified"] = cam.rectified
            if cam.T is not None:
                params[group + "lidar_to_camera"] = [float(v) for v in np.asarray(cam.T).reshape(-1)]
    if offline:
        # in-process replay: nothing goes on the network, no pair log is written
        params["publish_overlay"] = False
        params["log_pairs"] = False
    return params


def node_values(params_file: Path, layout: BagLayout, derived: dict[str, Any],
                overrides: dict[str, Any]) -> dict[str, Any]:
    """Every parameter the node gets: the params file's, the bag's (`derived`) on top, then `--param`.

    When the bag decides the cameras, the params file's camera groups of other cameras are left out
    (they would name cameras the node is not given).
    """
    values = params_file_values([params_file])
    if "cameras.names" in derived:
        names = set(derived["cameras.names"])
        values = {k: v for k, v in values.items()
                  if not k.startswith("cameras.") or k.split(".")[1] in names}
    values.update(derived)
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def _overrides(opts: BagEvalOptions) -> dict[str, Any]:
    return dict(parse_param(text) for text in opts.param)


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


@dataclass
class Replay:
    """What a replay mode needs besides the options: the bag, the node's parameters, where results go."""

    layout: BagLayout
    cfg: SegmentNodeConfig
    values: dict[str, Any]  # every node parameter (written to node_params.yaml)
    params_path: Path
    rename: dict[str, str]  # bag topic -> topic the node subscribes (CompressedImage without /compressed)
    scorer: ReplayScorer
    writer: LabeledBagWriter | None


def _score(replay: Replay, outputs: Iterator[NodeOutput]) -> None:
    """Pair the outputs with the bag's scans by stamp, score them, and write them out."""
    def written() -> Iterator[NodeOutput]:
        for out in outputs:
            if replay.writer is not None:
                replay.writer.write(out)
            yield out

    frames = read_bag_frames(replay.layout.path, layout=dataclasses.replace(replay.layout, cameras=[]))
    replay.scorer.consume(merge_by_stamp(frames, written()))


def _progress(opts: BagEvalOptions, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="scan", disable=not opts.progress, dynamic_ncols=True)


def _status_dict(status: Any) -> dict[str, str]:
    values = dict(status.values)
    values["level"] = str(int(status.level))
    values["message"] = status.message
    return values


def labeled_cloud_bytes(out: Any) -> bytes:
    """A pipeline `FrameOutputs` as the serialized labeled PointCloud2 the node publishes."""
    from xkd_ros.pointcloud import to_rosbags_cloud

    msg = to_rosbags_cloud(out.header, out.labeled, TYPESTORE)
    height, width = out.shape
    if height > 1:  # organised in, organised out (row-major), as the node publishes it
        msg.height, msg.width, msg.row_step = height, width, width * msg.point_step
    return bytes(TYPESTORE.serialize_cdr(msg, POINTCLOUD2))


class OfflineReplay:
    """The node's `FramePipeline` in this process, fed the bag's messages one by one (module docstring)."""

    def __init__(self, replay: Replay, log: Callable[[int, str], None]) -> None:
        from xkd_core.device import resolve_device

        cfg = replay.cfg
        self.log = log
        self.device = resolve_device(cfg.device).type
        segmenter, checkpoint_name = load_segmenter(cfg, self.device, log)
        self.pipeline = FramePipeline(cfg, segmenter, log, lookup=replay.layout.tf,
                                      input_convention=getattr(segmenter, "input_convention", None),
                                      checkpoint_name=checkpoint_name)
        for line in self.pipeline.start_lines():
            log(OK, line)
        self.cloud_topic = cfg.topics.cloud_in
        self.rename = replay.rename
        self.routes: dict[str, tuple[str, Callable[[Any], None]]] = {}
        for name, cam in self.pipeline.cameras.items():
            self.routes[cam.cfg.subscribed_topic] = (
                "callback_error.image", lambda msg, n=name: self.pipeline.on_image(n, msg))
            self.routes[cam.cfg.camera_info_topic] = (
                "callback_error.camera_info", lambda msg, n=name: self.pipeline.on_camera_info(n, msg))
        self.errors = 0

    def bag_topics(self) -> list[str]:
        """The bag topics this replay reads."""
        wanted = {self.cloud_topic, *self.routes}
        back = {v: k for k, v in self.rename.items()}
        return sorted(back.get(t, t) for t in wanted)

    def feed(self, topic: str, msgtype: str, data: bytes) -> NodeOutput | None:
        """Hand one bag message to the pipeline; the labeled cloud it completes, if any."""
        topic = self.rename.get(topic, topic)
        msg = TYPESTORE.deserialize_cdr(data, msgtype)
        if topic != self.cloud_topic:
            key, handler = self.routes[topic]
            try:
                handler(msg)
            except Exception as exc:  # noqa: BLE001 - as the node's callbacks: one bad message is dropped
                self.pipeline.report(key, f"unexpected {type(exc).__name__} on {topic}: {exc}", level=ERROR)
            return None
        received = time.monotonic()
        try:
            frame = self.pipeline.on_cloud(msg, None, received)
            out = None if frame is None else self.pipeline.process(frame)
        except Exception as exc:  # noqa: BLE001 - as the node's worker: one bad frame is skipped
            self.errors += 1
            self.pipeline.report("skipped.inference_error", f"frame failed: {type(exc).__name__}: {exc}",
                                 level=ERROR)
            return None
        if out is None:
            return None
        data = labeled_cloud_bytes(out)
        latency = self.pipeline.frame_done(out)
        return NodeOutput(frame.stamp_ns, data, latency, time.monotonic())

    def statuses(self) -> dict[str, dict[str, str]]:
        """The node's diagnostics report now, by status name after the node's prefix."""
        prefix = f"{NODE_FQN}: "
        return {s.name.removeprefix(prefix): _status_dict(s)
                for s in self.pipeline.diagnostics(NODE_FQN, self.device)}

    def close(self) -> None:
        self.pipeline.close()


def run_offline(opts: BagEvalOptions, replay: Replay) -> dict[str, Any]:
    """The in-process replay (module docstring); fills the scorer, returns the mode's report fields."""
    log_path = Path(opts.out) / "node.log"
    with open(log_path, "w") as log_file:
        def log(level: int, line: str) -> None:
            log_file.write(f"[{_LEVEL_NAMES.get(level, 'WARN')}] {line}\n")

        node = OfflineReplay(replay, log)
        try:
            bar = _progress(opts, replay.layout.scans, "bag-eval offline")

            def outputs() -> Iterator[NodeOutput]:
                for message in bag_messages(opts.bag, node.bag_topics()):
                    if message.topic == node.cloud_topic:
                        bar.update(1)
                    out = node.feed(message.topic, message.msgtype, message.data)
                    if out is not None:
                        yield out

            try:
                _score(replay, outputs())
            finally:
                bar.close()
            statuses = node.statuses()
        finally:
            node.close()
    return {"statuses": statuses, "inference_errors": node.errors,
            "latency_definition": "cloud handed to the pipeline -> labeled cloud serialized (in process)"}


_END = object()


def run_live(opts: BagEvalOptions, replay: Replay) -> dict[str, Any]:
    """The live replay over DDS with `segment_node` as a child process (module docstring)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    layout, scorer, cfg = replay.layout, replay.scorer, replay.cfg
    out_dir = Path(opts.out)
    context = rclpy.Context()
    rclpy.init(args=["xkd-bag-eval"], context=context)
    node = rclpy.create_node(f"xkd_bag_eval_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, name="xkd-bag-eval-spin", daemon=True)
    published: dict[int, float] = {}
    collector = OutputCollector(node, opts.output_topic, NODE_NAME)
    skip = [layout.gt_topic] if layout.gt_topic else []
    player = BagPlayer(node, opts.bag, layout.topics, layout.cloud_topic, opts.rate_scale, skip=skip,
                       on_cloud=published.__setitem__, camera_lead_s=opts.camera_lead_ms * 1e-3,
                       rename=replay.rename)
    back = {v: k for k, v in replay.rename.items()}
    camera_topics = [back.get(c.subscribed_topic, c.subscribed_topic)
                     for c in cfg.cameras.values()] if cfg.use_camera else []
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
            yield NodeOutput(stamp, item.data, float("nan") if t_pub is None else item.t - t_pub, item.t)

    def score() -> None:
        try:
            _score(replay, outputs())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)

    scoring = threading.Thread(target=score, name="xkd-bag-eval-score", daemon=True)
    proc: NodeProcess | None = None
    bar = _progress(opts, layout.scans, "bag-eval live")
    try:
        spin.start()
        proc = NodeProcess([replay.params_path], out_dir / "node.log")  # main thread: see NodeProcess

        def ready() -> bool:
            # Node.count_publishers: Humble's rclpy has it (Subscription.get_publisher_count came later)
            return (player.subscriptions(layout.cloud_topic) > 0
                    and all(player.subscriptions(t) > 0 for t in camera_topics if t in player.publishers)
                    and node.count_publishers(opts.output_topic) > 0)

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
        period = float(replay.values.get("diagnostics.period", 1.0))
        while proc.alive() and (collector.diagnostics_t or 0.0) <= t_mark:
            if time.monotonic() - t_mark > 3 * period + 2.0:
                break
            time.sleep(0.05)
        statuses = dict(collector.statuses)
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
    diagnostics = statuses.get(NODE_STATUS)
    return {
        "statuses": statuses,
        "latency_definition": "labeled cloud received - scan published (rclpy, one monotonic clock)",
        "player": {
            "messages_published": player.published,
            "scans_published": player.clouds_published,
            "scans_received_by_node": _int_or_none((diagnostics or {}).get("frames_in")),
            "camera_lead_ms": opts.camera_lead_ms,
            "max_lag_ms": round(1e3 * player.max_lag_s, 3),
            "not_played": player.not_played,
            "renamed": dict(replay.rename),
        },
        "node": {"startup_s": round(startup_s, 3), "exit_code": exit_code,
                 "command": " ".join(proc.command) if proc is not None else None},
    }


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def camera_figures(replay: Replay, statuses: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per camera of the bag: what the bag holds and the node's own figures (its diagnostics status).

    `frames_used`: frames segmented with the camera's image; `decode_failures`: its images the node
    could not decode (`image_format.*`); `tf_missing`: frames it was left out of for want of
    extrinsics (`tf_missing`: TF had no transform; `no_extrinsics`: neither the parameter nor TF);
    `camera_info_problems`: `camera_info.*`. None where the node reported no status for it.
    """
    out: dict[str, dict[str, Any]] = {}
    for cam in replay.layout.cameras:
        values = statuses.get(f"{CAMERA_STATUS}{cam.name}")

        def total(prefix: str, v: dict[str, str] | None = values) -> int | None:
            if v is None:
                return None
            return sum(int(x) for k, x in v.items() if k.startswith(prefix) and x.lstrip("-").isdigit())

        tf_missing = None if values is None else (total("tf_missing") or 0) + (total("no_extrinsics") or 0)
        out[cam.name] = {
            "image_topic": cam.image_topic,
            "transport": cam.transport,
            "rectified": cam.rectified,
            "frame_id": cam.frame_id,
            "images_in_bag": replay.layout.topics.counts.get(cam.image_topic, 0),
            "bag_extrinsics": cam.extrinsics,
            "bag_extrinsics_note": cam.extrinsics_note or None,
            "in_frustum": cam.geometry is not None,
            "node_extrinsics": None if values is None else values.get("extrinsics"),
            "frames_used": None if values is None else int(values.get("used", 0)),
            "decode_failures": total("image_format."),
            "tf_missing": tf_missing,
            "camera_info_problems": total("camera_info."),
            "level": None if values is None else int(values.get("level", 0)),
            "message": None if values is None else values.get("message"),
            "counters": values,
        }
    return out


def prepare(opts: BagEvalOptions) -> Replay:
    """Read the bag, derive and validate the node's parameters, write them; refuse bad input early."""
    resolve_checkpoint(opts.checkpoint)  # ConfigError naming the parameter if missing
    layout = inspect_bag(opts.bag, opts.cloud_topic, opts.camera or None, opts.gt_topic or GT_TOPIC,
                         require_gt=opts.gt_topic is not None)
    params_file = Path(opts.params_file) if opts.params_file else default_params_file()
    if not params_file.is_file():
        raise ConfigError(f"--params-file: file not found: {params_file}")
    derived = bag_parameters(opts, layout, offline=not opts.live)
    values = node_values(params_file, layout, derived, _overrides(opts))
    cfg = config_from_values(values)  # ConfigError naming the parameter
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path = write_overrides(out_dir / "node_params.yaml", values)
    rename = {c.image_topic: c.subscribed_topic for c in layout.cameras
              if c.image_topic != c.subscribed_topic}
    used = set(cfg.cameras) if cfg.use_camera else set()
    frustum = [c.geometry for c in layout.cameras if c.geometry is not None and c.name in used]
    scorer = ReplayScorer(frustum=frustum, bev_index=layout.scans // 2)
    writer = None
    if opts.write_bag:
        writer = LabeledBagWriter(opts.write_bag, opts.write_format, opts.output_topic)
    return Replay(layout, cfg, values, params_path, rename, scorer, writer)


def replay_and_score(opts: BagEvalOptions) -> dict[str, Any]:
    """Run one evaluation and write everything under `opts.out`; returns the report."""
    t_start = time.monotonic()
    replay = prepare(opts)
    layout, scorer, writer = replay.layout, replay.scorer, replay.writer
    out_dir = Path(opts.out)
    try:
        run = run_live if opts.live else run_offline
        mode_fields = run(opts, replay)
    except BaseException:
        if writer is not None:  # no half-written bag left behind
            writer.close()
            shutil.rmtree(writer.path, ignore_errors=True)
        raise
    if writer is not None:
        writer.close()
    statuses = mode_fields.pop("statuses")
    mode = "live" if opts.live else "offline"
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "mode": mode,
        "bag": str(layout.path.resolve()),
        "checkpoint": str(resolve_checkpoint(replay.cfg.checkpoint)),
        "fuse": bool(replay.cfg.fuse_camera),
        "rate_scale": opts.rate_scale if opts.live else None,
        "cloud_topic": layout.cloud_topic,
        "lidar_frame": layout.lidar_frame,
        "gt_topic": layout.gt_topic,
        "cameras_found": list(layout.found),
        "bag_notes": list(layout.notes),
        "params_file": str(Path(opts.params_file) if opts.params_file else default_params_file()),
        "node_parameters": {**bag_parameters(opts, layout, offline=not opts.live), **_overrides(opts)},
    }
    report.update(scorer.report())
    report["cameras"] = camera_figures(replay, statuses)
    report["node_diagnostics"] = statuses.get(NODE_STATUS)
    report.update(mode_fields)
    files = {"report": "report.json", "latency_hist": "latency_hist.png",
             "label_histogram": "label_histogram.png", "bev": "bev.png", "node_params": "node_params.yaml",
             "node_log": "node.log"}
    plot_latency_hist(np.asarray(scorer.latencies_s) * 1e3, out_dir / files["latency_hist"],
                      title=f"{mode} replay latency")
    plot_label_histogram(scorer.label_histogram(), out_dir / files["label_histogram"],
                         title=f"predicted labels, {mode} replay")
    if scorer.has_ground_truth:
        files["per_class_iou"] = "per_class_iou.png"
        ious = {"full scan": scorer.full.iou()}
        if scorer.frustum:
            ious["camera frustum"] = scorer.in_frustum.iou()
        plot_iou_bars(ious, out_dir / files["per_class_iou"], title=f"per-class IoU, {mode} replay")
    plot_bev(scorer.bev, out_dir / files["bev"], title=f"{Path(opts.bag).name},")
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
        return "n/a" if v is None else f"{v:.2f} %"

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} ms"

    def hz(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} Hz"

    f, lat, rates = report["frames"], report["latency_ms"], report["rates_hz"]
    player = report.get("player") or {}
    received, sent = player.get("scans_received_by_node"), player.get("scans_published")
    lost = ""
    if received is not None and sent is not None and received < sent:
        lost = f" ({sent - received} of them never reached the node)"
    lines = [
        f"mode {report['mode']}: {f['scans']} scans, {f['checked']} segmented, {f['dropped']} dropped" + lost
        + (f", {f['mismatched']} mismatched" if f["mismatched"] else "")
        + (f"; {f['scored']} scored against {report['gt_topic']}" if report["ground_truth"] else ""),
    ]
    if report["ground_truth"]:
        lines.append(f"mIoU full scan {pct(report['miou']['full'])}, camera frustum "
                     f"{pct(report['miou']['frustum'])}")
    else:
        hist = report["label_histogram"]
        n = sum(hist.values())
        top = sorted(((v, k) for k, v in hist.items() if v), reverse=True)[:5]
        shares = ", ".join(f"{k} {100.0 * v / n:.1f} %" for v, k in top) if n else "none"
        lines.append(f"no ground truth in the bag (no mIoU); predicted labels: {shares}")
    lines.append(f"latency p50 {ms(lat['p50'])}, p90 {ms(lat['p90'])}, p99 {ms(lat['p99'])}; rates: bag "
                 f"scans {hz(rates['bag_scans'])}, outputs {hz(rates['outputs'])}")
    for name, cam in report["cameras"].items():
        if cam["frames_used"] is None:
            lines.append(f"camera {name}: not reported by the node")
            continue
        lines.append(f"camera {name} ({cam['transport']}, extrinsics {cam['bag_extrinsics']}): used in "
                     f"{cam['frames_used']} of {f['scans']} scans, {cam['decode_failures']} decode failures, "
                     f"{cam['tf_missing']} without extrinsics")
    lines.extend(f"note: {note}" for note in report["bag_notes"])
    labeled = report["files"].get("labeled_bag")
    lines.append(f"report and pictures in {Path(out_dir).resolve()}"
                 + (f"; labeled bag {labeled}" if labeled else ""))
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="xkd-bag-eval", description=__doc__.splitlines()[0])
    p.add_argument("--bag", required=True,
                   help="rosbag2 folder (mcap or sqlite3), written by xkd-kitti2bag or recorded")
    p.add_argument("--out", required=True, help="output folder for report.json and the pictures")
    p.add_argument("--checkpoint", default="", help="model .pt (default: the shipped model)")
    p.add_argument("--live", action="store_true",
                   help="play the bag over DDS into segment_node running as a child process")
    p.add_argument("--fuse", action="store_true",
                   help="use the fused 3D+2D head where an image is synchronized")
    p.add_argument("--rate-scale", type=float, default=1.0,
                   help="live: playback speed relative to the recorded rate (0.5 = half speed)")
    p.add_argument("--cloud-topic", default=None,
                   help="the LiDAR's PointCloud2 topic (default /velodyne_points, or the only other one)")
    p.add_argument("--camera", action="append", default=[], metavar="NAME",
                   help="a camera the node gets (repeatable; default: every camera found in the bag; "
                        "2 / 3 stand for image_2 / image_3)")
    p.add_argument("--gt-topic", default=None,
                   help=f"ground-truth PointCloud2 with a label field (default {GT_TOPIC} when the bag "
                        "has it; without one: latency, rates, drops and label histogram only)")
    p.add_argument("--write-bag", default=None, help="write the node's labeled clouds into this new bag")
    p.add_argument("--write-format", choices=sorted(STORAGES), default="mcap", help="storage of --write-bag")
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
        report = replay_and_score(opts)
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
