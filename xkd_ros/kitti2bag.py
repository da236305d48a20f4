"""`xkd-kitti2bag`: a SemanticKITTI-format sequence -> rosbag2 (mcap or sqlite3), without ROS.

    xkd-kitti2bag --data DIR --sequence 08 --out BAG [--format mcap|sqlite3] [--rate 10]
                  [--cameras all | NAME|INDEX ...] [--compressed jpeg|png] [--max-frames N] [--t0 SECONDS]

Every camera view of the sequence is written by default (`--cameras all`): KITTI's `image_2` /
`image_3` (from `calib.txt`) and the named views of `views.yaml` (e.g. the six cameras of
`xkd-synth --rig surround`), see `xkd_core.data.views`. `--cameras` takes view names, KITTI indices
2 / 3, or nothing (LiDAR only). Images go in as raw rgb8 Images, or with `--compressed` as JPEG /
PNG CompressedImages on image_transport's `<topic>/compressed`.

Frame i is stamped `t0 + i / rate` (header stamp and bag time alike). The topics, frames, QoS and
the pinned message definitions are described in `xkd_ros.bag_io`, which also reads such bags back.
Every input file is read with the `xkd_core.data.semantickitti` readers, so a missing or corrupt
file stops the conversion with a `DataFormatError` naming it; a failed conversion removes the
half-written bag.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from xkd_core.classes import to_learning
from xkd_core.data.semantickitti import (
    DataFormatError,
    frame_ids,
    label_path,
    read_image,
    read_labels,
    read_points,
    scan_path,
    sequence_dir,
)
from xkd_core.data.views import ALL_VIEWS, ViewCalib, camera_selectors, select_views, sequence_views
from xkd_ros.bag_io import (
    BAG_VERSION,
    CAMERA_INFO,
    CAMERA_NAME,
    COMPRESSED_IMAGE,
    GT_TOPIC,
    IMAGE,
    LATCHED_QOS,
    LIDAR_FRAME,
    POINTCLOUD2,
    SCAN_TOPIC,
    SENSOR_QOS,
    TF_MESSAGE,
    TF_STATIC_TOPIC,
    TYPESTORE,
    camera_topics,
    extrinsics_key,
    format_matrix,
)
from xkd_ros.image import to_rosbags_camera_info, to_rosbags_compressed_image, to_rosbags_image
from xkd_ros.pointcloud import to_rosbags_cloud, xyzi_array, xyzl_array
from xkd_ros.stamp import NS_PER_S, rosbags_header
from xkd_ros.tf_tree import rigid_inverse
from xkd_ros.transform import to_rosbags_transform_stamped

#: Default first stamp (2023-11-14T22:13:20Z): a fixed, realistic epoch so converted bags are
#: reproducible byte for byte and no stamp is 0 (which tf2 reads as "latest").
DEFAULT_T0_S = 1_700_000_000.0

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: `--compressed` codecs; the JPEG quality is image_transport's default.
CODECS = ("jpeg", "png")
JPEG_QUALITY = 95


@dataclass
class ConversionSummary:
    """What one conversion wrote."""

    bag: Path
    frames: int
    messages: int
    topics: list[str]
    cameras: list[str]


def _views(seq_dir: Path, cameras: str | int | Sequence[str | int]) -> list[ViewCalib]:
    """The views `cameras` selects; `all` on a sequence without any camera is LiDAR only."""
    try:
        selectors = camera_selectors(cameras)
    except ValueError as exc:
        raise ValueError(f"--cameras: {exc}") from None
    views = sequence_views(seq_dir) if selectors == [ALL_VIEWS] else select_views(seq_dir, selectors)
    bad = [v.name for v in views if not CAMERA_NAME.match(v.name)]
    if bad:
        raise ValueError(f"--cameras: view name(s) {bad} cannot name ROS topics and frames (a letter, then "
                         "letters, digits, _); leave them out with --cameras")
    return views


def convert_sequence(
    data: str | Path,
    sequence: str | int,
    out: str | Path,
    storage: str = "mcap",
    rate: float = 10.0,
    cameras: str | int | Sequence[str | int] = ALL_VIEWS,
    compressed: str | None = None,
    max_frames: int | None = None,
    t0_s: float = DEFAULT_T0_S,
    progress: bool = True,
) -> ConversionSummary:
    """Write sequence `sequence` of the SemanticKITTI root `data` as the rosbag2 `out`.

    `cameras`: `all` (every view of the sequence; none is fine), view names or KITTI indices, or
    `()` for none. `compressed`: None (raw rgb8 Images), `jpeg` or `png`. The ground-truth topic is
    written when the sequence has a `labels/` folder (test sequences do not); labels are learning
    ids. Raises `DataFormatError` for missing/corrupt input and `ValueError` for bad arguments or
    an existing `out`.
    """
    if storage not in STORAGES:
        raise ValueError(f"--format must be one of {sorted(STORAGES)}, got {storage!r}")
    if not rate > 0:
        raise ValueError(f"--rate must be > 0 Hz, got {rate}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    if t0_s < 0:
        raise ValueError(f"--t0 must be >= 0 s, got {t0_s}")
    if compressed is not None and compressed not in CODECS:
        raise ValueError(f"--compressed must be one of {list(CODECS)}, got {compressed!r}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"output bag {out} exists already; choose a new path")

    seq_dir = sequence_dir(data, sequence)
    if not seq_dir.is_dir():
        raise DataFormatError(f"missing sequence folder: {seq_dir}")
    views = _views(seq_dir, cameras)
    fids = frame_ids(seq_dir)
    if not fids:
        raise DataFormatError(f"no scans in {seq_dir / 'velodyne'}")
    if max_frames is not None:
        fids = fids[:max_frames]
    with_labels = (seq_dir / "labels").is_dir()

    t0_ns = round(t0_s * NS_PER_S)
    stamps = [t0_ns + round(i * NS_PER_S / rate) for i in range(len(fids))]
    try:
        with Writer(out, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
            messages = _write(writer, seq_dir, fids, stamps, views, with_labels, compressed, progress)
            topics = [c.topic for c in writer.connections]
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return ConversionSummary(bag=out, frames=len(fids), messages=messages, topics=topics,
                             cameras=[v.name for v in views])


def _write(writer: Writer, seq_dir: Path, fids: list[str], stamps: list[int], views: list[ViewCalib],
           with_labels: bool, compressed: str | None, progress: bool) -> int:
    def connect(topic: str, msgtype: str, qos=SENSOR_QOS):
        return writer.add_connection(topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=[qos])

    def put(conn, stamp: int, msg) -> None:
        writer.write(conn, stamp, TYPESTORE.serialize_cdr(msg, conn.msgtype))

    scan_conn = connect(SCAN_TOPIC, POINTCLOUD2)
    gt_conn = connect(GT_TOPIC, POINTCLOUD2) if with_labels else None
    cam_conns = {}
    for view in views:
        image_topic, info_topic = camera_topics(view.name, compressed is not None)
        cam_conns[view.name] = (connect(image_topic, COMPRESSED_IMAGE if compressed else IMAGE),
                                connect(info_topic, CAMERA_INFO))
    count = 0
    if views:
        tf_conn = connect(TF_STATIC_TOPIC, TF_MESSAGE, LATCHED_QOS)
        header = rosbags_header(stamps[0], LIDAR_FRAME, TYPESTORE)
        transforms = [to_rosbags_transform_stamped(header, view.name, rigid_inverse(view.T), TYPESTORE)
                      for view in views]
        put(tf_conn, stamps[0], TYPESTORE.types[TF_MESSAGE](transforms=transforms))
        count += 1
        for view in views:
            writer.set_custom_data(extrinsics_key(view.name), format_matrix(view.T))

    for fid, stamp in tqdm(list(zip(fids, stamps)), desc=f"kitti2bag {seq_dir.name}", unit="frame",
                           disable=not progress):
        points = read_points(scan_path(seq_dir, fid))
        scan_header = rosbags_header(stamp, LIDAR_FRAME, TYPESTORE)
        dense = bool(np.isfinite(points[:, :3]).all())
        put(scan_conn, stamp, to_rosbags_cloud(scan_header, xyzi_array(points), TYPESTORE, is_dense=dense))
        count += 1
        if gt_conn is not None:
            semantic, _ = read_labels(label_path(seq_dir, fid), num_points=len(points))
            gt = xyzl_array(points, to_learning(semantic))
            put(gt_conn, stamp, to_rosbags_cloud(scan_header, gt, TYPESTORE, is_dense=dense))
            count += 1
        for view in views:
            path = view.image_path(seq_dir, fid)
            rgb = read_image(path)
            if view.hw is not None and rgb.shape[:2] != view.hw:
                raise DataFormatError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, view {view.name} "
                                      f"says {view.hw[1]}x{view.hw[0]}")
            header = rosbags_header(stamp, view.name, TYPESTORE)
            image_conn, info_conn = cam_conns[view.name]
            if compressed:
                image = to_rosbags_compressed_image(header, rgb, TYPESTORE, compressed, quality=JPEG_QUALITY)
            else:
                image = to_rosbags_image(header, rgb, TYPESTORE)
            put(image_conn, stamp, image)
            put(info_conn, stamp, to_rosbags_camera_info(header, view.K, rgb.shape[:2], TYPESTORE))
            count += 2
    return count


def _selector(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by the docs)."""
    p = argparse.ArgumentParser(prog="xkd-kitti2bag", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True,
                   help="SemanticKITTI root (holding sequences/) or its sequences/ folder")
    p.add_argument("--sequence", required=True, help="sequence id, e.g. 08")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--format", choices=sorted(STORAGES), default="mcap",
                   help="rosbag2 storage (default mcap)")
    p.add_argument("--rate", type=float, default=10.0, help="scan rate in Hz for the stamps (default 10)")
    p.add_argument("--cameras", type=_selector, nargs="*", default=[ALL_VIEWS],
                   help="camera views to include: 'all' (default: every view of the sequence), view names "
                        "(e.g. CAM_FRONT image_2) or KITTI indices 2 3; none: LiDAR only")
    p.add_argument("--compressed", choices=CODECS, default=None,
                   help="write images as CompressedImage on <topic>/compressed (jpeg quality "
                        f"{JPEG_QUALITY}, or png); default: raw rgb8 Image")
    p.add_argument("--max-frames", type=int, default=None, help="convert only the first N frames")
    p.add_argument("--t0", type=float, default=DEFAULT_T0_S, help="stamp of the first frame, in seconds")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `xkd-kitti2bag`; prints a one-line summary, exits 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        summary = convert_sequence(args.data, args.sequence, args.out, storage=args.format, rate=args.rate,
                                   cameras=args.cameras, compressed=args.compressed,
                                   max_frames=args.max_frames, t0_s=args.t0, progress=not args.no_progress)
    except (DataFormatError, ValueError) as exc:
        print(f"xkd-kitti2bag: error: {exc}", file=sys.stderr)
        return 2
    cams = ", ".join(summary.cameras) if summary.cameras else "none"
    print(f"wrote {summary.bag} ({args.format}): {summary.frames} frames, {summary.messages} messages; "
          f"cameras: {cams} ({args.compressed or 'raw'}); topics: {', '.join(summary.topics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
