"""Scoring a replay: the node's labeled clouds against a bag's ground truth, streamed frame by frame.

Both replay modes of `xkd-bag-eval` (offline and live) end up with the same thing: for each scan of
the bag, the serialized `PointCloud2` the node published for it (or nothing) and how long it took.
`merge_by_stamp` pairs those outputs with the bag's frames by header stamp (both arrive in stamp
order, so the pairing is a streaming merge that never holds more than one scan), and
`ReplayScorer` accumulates what `report.json` says: confusion matrices on the full scan and on the
camera frustum (the union of every camera's view; IoU maths from `xkd_core.evaluation.metrics`),
latencies, output times, drops and the histogram of predicted labels. A bag without ground truth is
not refused: its scans are checked and counted the same way, only no IoU is computed.

The node's output is decoded with the same `xkd_ros.pointcloud` functions the node encodes with,
and its x, y, z are checked against the input scan: a cloud whose points were reordered, lost or
altered cannot be scored point by point, so it is counted as `mismatched` instead of scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from xkd_core.evaluation.metrics import ConfusionMatrix
from xkd_core.geometry.projection import ViewGeometry, in_any_view
from xkd_ros.bag_io import POINTCLOUD2, TYPESTORE, BagFrame
from xkd_ros.pointcloud import cloud_field, cloud_to_xyzi

#: Version of the `report.json` layout written by `ReplayScorer.report` (docs/bag_eval.md).
REPORT_SCHEMA = "xkd.bag_eval/2"

#: Stamps of dropped frames listed in the report (the count is always complete).
MAX_LISTED_DROPS = 200


@dataclass
class NodeOutput:
    """One labeled cloud as the node published it: CDR bytes plus the latency measured for it."""

    stamp_ns: int
    data: bytes  # serialized sensor_msgs/PointCloud2 (CDR, as on the wire and in a rosbag2)
    latency_s: float
    t: float = float("nan")  # monotonic time the output was published (offline) or received (live)


@dataclass
class BevSample:
    """The one scan kept for the bird's-eye picture."""

    stamp_ns: int
    xyz: np.ndarray  # (N, 3) float32
    truth: np.ndarray  # (N,) learning ids
    pred: np.ndarray  # (N,) learning ids


def frustum_mask(xyz: np.ndarray, geometries: Sequence[ViewGeometry] | None) -> np.ndarray | None:
    """Points inside at least one camera image (the pair-validity rule of `xkd_core.geometry.projection`);
    None when there is no camera."""
    return None if not geometries else in_any_view(xyz, list(geometries))


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


def _summary(cm: ConfusionMatrix) -> dict[str, Any]:
    """mIoU and per-class IoU in percent (None where the class is absent from the truth)."""
    s = cm.summary(percent=True)
    return {"miou": s["miou"], "per_class_iou": s["per_class_iou"], "points": s["num_points"],
            "confusion_matrix": s["confusion_matrix"]}


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | int | None]:
    """p50 / p90 / p99 / mean / max in milliseconds (None when there is no sample)."""
    lat = np.asarray(list(latencies_s), dtype=np.float64) * 1e3
    if lat.size == 0:
        return {"samples": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    vals = {"p50": p50, "p90": p90, "p99": p99, "mean": lat.mean(), "max": lat.max()}
    return {"samples": int(lat.size), **{k: round(float(v), 3) for k, v in vals.items()}}


def rate_hz(times: Iterable[float]) -> float | None:
    """Events per second between the first and the last of `times` (None for fewer than two)."""
    t = np.asarray([v for v in times if np.isfinite(v)], dtype=np.float64)
    if t.size < 2 or t.max() <= t.min():
        return None
    return round(float((t.size - 1) / (t.max() - t.min())), 3)


@dataclass
class ReplayScorer:
    """Accumulates the evaluation of one replay (see the module docstring).

    `frustum` holds the camera geometries (K, T, (H, W)) whose union is the frustum subset; empty or
    None for a bag without a usable camera. `bev_index` picks which scan (counting every scan of
    the bag) the bird's-eye picture shows; the first checked one is kept until that scan is reached.
    """

    frustum: Sequence[ViewGeometry] | None = None
    bev_index: int = 0
    full: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    in_frustum: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    latencies_s: list[float] = field(default_factory=list)
    output_times: list[float] = field(default_factory=list)
    scan_stamps: list[int] = field(default_factory=list)
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))
    counts: Counter = field(default_factory=Counter)
    dropped_stamps: list[int] = field(default_factory=list)
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    bev: BevSample | None = None
    mismatch_reason: str | None = None  # the first one, for the report

    def add(self, frame: BagFrame | None, output: NodeOutput | None) -> None:
        """Check one scan (`frame`) against what the node published for it (`output`, None = dropped)."""
        if frame is None:
            self.counts["unexpected_outputs"] += 1  # an output whose stamp is no scan of the bag
            return
        index = self.counts["scans"]
        self.counts["scans"] += 1
        self.scan_stamps.append(int(frame.stamp_ns))
        has_gt = frame.labels is not None
        self.counts["with_ground_truth" if has_gt else "without_ground_truth"] += 1
        if frame.error is not None:
            self.counts["unreadable_scans"] += 1
        if output is None:
            self.counts["dropped"] += 1
            if len(self.dropped_stamps) < MAX_LISTED_DROPS:
                self.dropped_stamps.append(int(frame.stamp_ns))
            return
        self.counts["outputs"] += 1
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
        self.counts["checked"] += 1
        pred64 = pred.astype(np.int64)
        self.label_counts += np.bincount(pred64, minlength=NUM_CLASSES)
        self.latencies_s.append(float(output.latency_s))
        self.output_times.append(float(output.t))
        row: dict[str, Any] = {"stamp_ns": int(frame.stamp_ns), "points": int(len(pred64)),
                               "latency_ms": round(1e3 * float(output.latency_s), 3)}
        truth = None
        if has_gt:
            truth = frame.labels.astype(np.int64)
            self.full.update(pred64, truth)
            mask = frustum_mask(frame.points, self.frustum)
            if mask is not None:
                self.in_frustum.update(pred64[mask], truth[mask])
            self.counts["scored"] += 1
            labelled = truth != IGNORE_INDEX
            n_lab = int(labelled.sum())
            row["labelled_points"] = n_lab
            row["accuracy"] = (None if n_lab == 0
                               else round(float((pred64[labelled] == truth[labelled]).mean()), 5))
        self.per_frame.append(row)
        if self.bev is None or index <= self.bev_index:
            shown = truth if truth is not None else np.full(len(pred64), IGNORE_INDEX, dtype=np.int64)
            self.bev = BevSample(int(frame.stamp_ns), frame.points[:, :3].copy(), shown, pred64)

    def _mismatch(self, frame: BagFrame, reason: str) -> None:
        self.counts["mismatched"] += 1
        if self.mismatch_reason is None:
            self.mismatch_reason = f"stamp {frame.stamp_ns}: {reason}"

    def consume(self, pairs: Iterable[tuple[BagFrame | None, NodeOutput | None]]) -> None:
        """`add` every (frame, output) pair, e.g. from `merge_by_stamp`."""
        for frame, output in pairs:
            self.add(frame, output)

    @property
    def has_ground_truth(self) -> bool:
        return self.counts["with_ground_truth"] > 0

    def label_histogram(self) -> dict[str, int]:
        """Predicted points per class name over every checked output ("unlabeled": not segmented)."""
        return {CLASS_NAMES[c]: int(n) for c, n in enumerate(self.label_counts)}

    def report(self) -> dict[str, Any]:
        """The scoring part of `report.json` (documented in docs/bag_eval.md)."""
        c = self.counts
        scans = c["scans"]
        gt = self.has_ground_truth
        full = _summary(self.full) if gt else None
        frustum = _summary(self.in_frustum) if gt and self.frustum else None

        def part(summary: dict[str, Any] | None, key: str) -> Any:
            return None if summary is None else summary[key]

        stamps_s = np.asarray(self.scan_stamps, dtype=np.float64) * 1e-9
        return {
            "ground_truth": gt,
            "frames": {
                "scans": scans,
                "checked": c["checked"],
                "dropped": c["dropped"],
                "mismatched": c["mismatched"],
                "with_ground_truth": c["with_ground_truth"],
                "scored": c["scored"],
                "without_ground_truth": c["without_ground_truth"],
                "unreadable_scans": c["unreadable_scans"],
                "unexpected_outputs": c["unexpected_outputs"],
                "undecodable_outputs": c["undecodable_outputs"],
                "drop_rate": None if scans == 0 else round(c["dropped"] / scans, 5),
            },
            "miou": {"full": part(full, "miou"), "frustum": part(frustum, "miou")},
            "per_class_iou": {"full": part(full, "per_class_iou"), "frustum": part(frustum, "per_class_iou")},
            "points_scored": {"full": part(full, "points"), "frustum": part(frustum, "points")},
            "latency_ms": latency_summary(self.latencies_s),
            "rates_hz": {"bag_scans": rate_hz(stamps_s), "outputs": rate_hz(self.output_times)},
            "label_histogram": self.label_histogram(),
            "dropped_stamps_ns": list(self.dropped_stamps),
            "mismatch_reason": self.mismatch_reason,
            "confusion_matrix": {"full": part(full, "confusion_matrix"),
                                 "frustum": part(frustum, "confusion_matrix")},
            "per_frame": list(self.per_frame),
        }
