"""Scoring a replay: the node's labeled clouds against a bag's ground truth, streamed frame by frame.

Both replay modes of `xkd-bag-eval` (in-process and live) end up with the same thing: for each scan
of the bag, the serialized `PointCloud2` the node published for it (or nothing) and how long it
took. `merge_by_stamp` pairs those outputs with the bag's ground-truth frames by header stamp (both
arrive in stamp order, so the pairing is a streaming merge that never holds more than one scan),
and `ReplayScorer` accumulates what `report.json` says: confusion matrices on the full scan and on
the camera frustum (IoU maths from `xkd_core.evaluation.metrics`), latencies and drops.

The node's output is decoded with the same `xkd_ros.pointcloud` functions the node encodes with,
and its x, y, z are checked against the input scan: a cloud whose points were reordered, lost or
altered cannot be scored point by point, so it is counted as `mismatched` instead of scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from xkd_core.evaluation.metrics import ConfusionMatrix
from xkd_core.geometry.projection import ViewGeometry, in_any_view
from xkd_ros.bag_io import POINTCLOUD2, TYPESTORE, BagFrame
from xkd_ros.pointcloud import cloud_field, cloud_to_xyzi

#: Version of the `report.json` layout written by `ReplayScorer.report` (docs/bag_eval.md).
REPORT_SCHEMA = "xkd.bag_eval/1"

#: Stamps of dropped frames listed in the report (the count is always complete).
MAX_LISTED_DROPS = 200


@dataclass
class NodeOutput:
    """One labeled cloud as the node published it: CDR bytes plus the latency measured for it."""

    stamp_ns: int
    data: bytes  # serialized sensor_msgs/PointCloud2 (CDR, as on the wire and in a rosbag2)
    latency_s: float


@dataclass
class BevSample:
    """The one scan kept for the bird's-eye picture."""

    stamp_ns: int
    xyz: np.ndarray  # (N, 3) float32
    truth: np.ndarray  # (N,) learning ids
    pred: np.ndarray  # (N,) learning ids


def frustum_mask(xyz: np.ndarray, geometry: ViewGeometry | None) -> np.ndarray | None:
    """Points inside the camera image (the pair-validity rule of `xkd_core.geometry.projection`)."""
    return None if geometry is None else in_any_view(xyz, [geometry])


def merge_by_stamp(
    frames: Iterable[BagFrame], outputs: Iterable[NodeOutput]
) -> Iterator[tuple[BagFrame | None, NodeOutput | None]]:
    """Pair frames and outputs with equal stamps; unpaired items come with None on the other side.

    Both inputs must be in ascending stamp order (a bag read in order; a node that processes frames
    in arrival order). Pulls one item ahead at most, so outputs may come from a live queue.
    """
    f_it, o_it = iter(frames), iter(outputs)
    f, o = next(f_it, None), next(o_it, None)
    while f is not None or o is not None:
        if o is None or (f is not None and f.stamp_ns < o.stamp_ns):
            yield f, None
            f = next(f_it, None)
        elif f is None or o.stamp_ns < f.stamp_ns:
            yield None, o
            o = next(o_it, None)
        else:
            yield f, o
            f, o = next(f_it, None), next(o_it, None)


def decode_output(data: bytes) -> tuple[Any, np.ndarray, np.ndarray]:
    """(message, x y z intensity (N, 4), labels (N,) uint16) of a serialized labeled cloud."""
    msg = TYPESTORE.deserialize_cdr(data, POINTCLOUD2)
    return msg, cloud_to_xyzi(msg), cloud_field(msg, "label", np.uint16)


def _same_points(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal x, y, z (NaN equal to NaN): the node must hand every input point back unchanged."""
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _percent(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4)


def _summary(cm: ConfusionMatrix) -> dict[str, Any]:
    """mIoU and per-class IoU in percent (None where the class is absent from the truth)."""
    iou = cm.iou()
    return {
        "miou": _percent(cm.miou()),
        "per_class_iou": {CLASS_NAMES[c]: _percent(iou[c]) for c in range(NUM_CLASSES) if c != IGNORE_INDEX},
        "points": int(cm.matrix.sum()),
        "confusion_matrix": cm.matrix.cpu().tolist(),
    }


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | int | None]:
    """p50 / p90 / p99 / mean / max in milliseconds (None when there is no sample)."""
    lat = np.asarray(list(latencies_s), dtype=np.float64) * 1e3
    if lat.size == 0:
        return {"samples": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    vals = {"p50": p50, "p90": p90, "p99": p99, "mean": lat.mean(), "max": lat.max()}
    return {"samples": int(lat.size), **{k: round(float(v), 3) for k, v in vals.items()}}


@dataclass
class ReplayScorer:
    """Accumulates the evaluation of one replay (see the module docstring).

    `frustum` is the camera geometry (K, T, (H, W)) defining the frustum subset, None for a bag
    without a camera. `bev_index` picks which scan (counting every scan of the bag) the bird's-eye
    picture shows; the first scored one is kept until that scan is reached.
    """

    frustum: ViewGeometry | None = None
    bev_index: int = 0
    full: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    in_frustum: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    latencies_s: list[float] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    dropped_stamps: list[int] = field(default_factory=list)
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    bev: BevSample | None = None
    mismatch_reason: str | None = None  # the first one, for the report

    def add(self, frame: BagFrame | None, output: NodeOutput | None) -> None:
        """Score one scan (`frame`) with what the node published for it (`output`, None = dropped)."""
        if frame is None:
            self.counts["unexpected_outputs"] += 1  # an output whose stamp is no scan of the bag
            return
        index = self.counts["scans"]
        self.counts["scans"] += 1
        if output is not None:
            self.counts["outputs"] += 1
        if frame.labels is None:
            self.counts["without_ground_truth"] += 1
            return
        self.counts["with_ground_truth"] += 1
        if output is None:
            self.counts["dropped"] += 1
            if len(self.dropped_stamps) < MAX_LISTED_DROPS:
                self.dropped_stamps.append(int(frame.stamp_ns))
            return
        try:
            _, xyzi, pred = decode_output(output.data)
        except Exception as exc:  # noqa: BLE001 - any undecodable message is one refused scan
            self._mismatch(frame, f"undecodable output: {exc}")
            return
        if not _same_points(xyzi[:, :3], frame.points[:, :3]):
            self._mismatch(frame, f"output has {len(xyzi)} points that differ from the {len(frame.points)} "
                                  "input points (order or values)")
            return
        if pred.size and int(pred.max()) >= NUM_CLASSES:
            self._mismatch(frame, f"output label {int(pred.max())} is not a learning id")
            return
        truth = frame.labels.astype(np.int64)
        pred64 = pred.astype(np.int64)
        self.full.update(pred64, truth)
        mask = frustum_mask(frame.points, self.frustum)
        if mask is not None:
            self.in_frustum.update(pred64[mask], truth[mask])
        self.latencies_s.append(float(output.latency_s))
        self.counts["scored"] += 1
        labelled = truth != IGNORE_INDEX
        n_lab = int(labelled.sum())
        self.per_frame.append({
            "stamp_ns": int(frame.stamp_ns),
            "points": int(len(truth)),
            "labelled_points": n_lab,
            "accuracy": None if n_lab == 0 else round(float((pred64[labelled] == truth[labelled]).mean()), 5),
            "latency_ms": round(1e3 * float(output.latency_s), 3),
        })
        if self.bev is None or index <= self.bev_index:
            self.bev = BevSample(int(frame.stamp_ns), frame.points[:, :3].copy(), truth, pred64)

    def _mismatch(self, frame: BagFrame, reason: str) -> None:
        self.counts["mismatched"] += 1
        if self.mismatch_reason is None:
            self.mismatch_reason = f"stamp {frame.stamp_ns}: {reason}"

    def consume(self, pairs: Iterable[tuple[BagFrame | None, NodeOutput | None]]) -> None:
        """`add` every (frame, output) pair, e.g. from `merge_by_stamp`."""
        for frame, output in pairs:
            self.add(frame, output)

    def report(self) -> dict[str, Any]:
        """The scoring part of `report.json` (documented in docs/bag_eval.md)."""
        c = self.counts
        with_gt = c["with_ground_truth"]
        full = _summary(self.full)
        frustum = _summary(self.in_frustum) if self.frustum is not None else None
        return {
            "frames": {
                "scans": c["scans"],
                "with_ground_truth": with_gt,
                "scored": c["scored"],
                "dropped": c["dropped"],
                "mismatched": c["mismatched"],
                "without_ground_truth": c["without_ground_truth"],
                "unexpected_outputs": c["unexpected_outputs"],
                "undecodable_outputs": c["undecodable_outputs"],
                "drop_rate": None if with_gt == 0 else round(c["dropped"] / with_gt, 5),
            },
            "miou": {"full": full["miou"], "frustum": None if frustum is None else frustum["miou"]},
            "per_class_iou": {"full": full["per_class_iou"],
                              "frustum": None if frustum is None else frustum["per_class_iou"]},
            "points_scored": {"full": full["points"],
                              "frustum": None if frustum is None else frustum["points"]},
            "latency_ms": latency_summary(self.latencies_s),
            "dropped_stamps_ns": list(self.dropped_stamps),
            "mismatch_reason": self.mismatch_reason,
            "confusion_matrix": {"full": full["confusion_matrix"],
                                 "frustum": None if frustum is None else frustum["confusion_matrix"]},
            "per_frame": list(self.per_frame),
        }
