"""The cross-modal pair log: what the live node records on the vehicle and training reads back.

A log is a directory of self-contained samples, one `pair_<stamp_ns>_<seq>.npz` per logged scan
(format in `docs/pair_log.md`). Each file is written to `<name>.tmp`, fsynced and renamed, so a
reader never sees a torn file whatever kills the writer; readers ignore `*.tmp`.

- `PairLogWriter` runs in the node: `submit` never blocks inference (a bounded queue, drops are
  counted), a background thread encodes and writes, a disk budget is enforced before each write,
  and I/O errors (disk full, directory removed, permission) are counted and logged, never raised.
- `PairLogDataset` runs in training: a `Frame` dataset of the points the model segmented and the
  logged views, without labels: the node's predictions are never training targets (its own errors
  would be fed back); the camera teaches the LiDAR branch instead (`docs/fleet_loop.md`). A corrupt
  file is skipped with a warning instead of ending a training run.

No ROS imports here: the node hands over numpy arrays.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import logging
import os
import re
import threading
import time
import weakref
import zipfile
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from torch.utils.data import Dataset

from xkd_core import __version__
from xkd_core.classes import NUM_CLASSES
from xkd_core.data.frame import CameraView, Frame
from xkd_core.data.semantickitti import IMAGE_DIRS, DataFormatError
from xkd_core.data.views import ALL_VIEWS, camera_selectors
from xkd_core.geometry.projection import Pairs
from xkd_core.log_throttle import LogThrottle
from xkd_core.units import NS_PER_S

logger = logging.getLogger(__name__)

#: Version written into every file; readers refuse newer versions instead of misreading them.
FORMAT_VERSION = 1
PREFIX = "pair_"
SUFFIX = ".npz"
TMP_SUFFIX = ".tmp"
_NAME_RE = re.compile(r"^pair_(\d+)_(\d+)\.npz$")

Policy = Literal["drop_oldest", "stop"]


# --------------------------------------------------------------------------- one sample


@dataclass
class PairSample:
    """One logged scan: points, the views, predictions and the point-pixel pairs between them."""

    points: np.ndarray  # (N, 4) float32 x, y, z, intensity
    views: list[CameraView]
    pred_labels: np.ndarray  # (N,) uint16 learning ids
    confidence: np.ndarray  # (N,) float32 softmax max
    pairs: Pairs  # every valid (point, view) pair, uv in the logged images
    stamp_ns: int
    frame_id: str = ""  # the cloud's ROS frame
    checkpoint: str = ""  # name of the model that predicted the labels
    format_version: int = FORMAT_VERSION
    xkd_version: str = field(default=__version__)

    def __post_init__(self) -> None:
        """Check shapes, dtypes and index ranges once, so a bad array is named at the source."""
        pts = np.asarray(self.points)
        if pts.ndim != 2 or pts.shape[1] != 4:
            raise ValueError(f"PairSample.points must be (N, 4), got {pts.shape}")
        self.points = np.ascontiguousarray(pts, dtype=np.float32)
        n = len(self.points)
        self.pred_labels = _vector("pred_labels", self.pred_labels, np.uint16, n)
        self.confidence = _vector("confidence", self.confidence, np.float32, n)
        if n and int(self.pred_labels.max()) >= NUM_CLASSES:
            raise ValueError(f"PairSample.pred_labels holds {int(self.pred_labels.max())}, "
                             f"not a learning id (< {NUM_CLASSES})")
        self.views = list(self.views)
        for i, view in enumerate(self.views):
            if not isinstance(view, CameraView):
                raise TypeError(f"PairSample.views[{i}] must be a CameraView, got {type(view).__name__}")
        point = _vector("pairs.point", self.pairs.point, np.int64, None)
        m = len(point)
        view = _vector("pairs.view", self.pairs.view, np.int64, m)
        uv = np.asarray(self.pairs.uv)
        if uv.shape != (m, 2):
            raise ValueError(f"PairSample.pairs.uv must be ({m}, 2), got {uv.shape}")
        if m and (point.min() < 0 or point.max() >= n):
            raise ValueError(f"PairSample.pairs.point indexes outside 0..{n - 1}")
        if m and (view.min() < 0 or view.max() >= len(self.views)):
            raise ValueError(f"PairSample.pairs.view indexes outside the {len(self.views)} view(s)")
        self.pairs = Pairs(point, view, np.ascontiguousarray(uv, dtype=np.float32))
        self.stamp_ns = int(self.stamp_ns)
        if self.stamp_ns < 0:
            raise ValueError(f"PairSample.stamp_ns must be >= 0, got {self.stamp_ns}")


def _vector(name: str, value: object, dtype: type, n: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"PairSample.{name} must be ({'M' if n is None else n},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def pair_file_name(stamp_ns: int, seq: int) -> str:
    """`pair_<stamp_ns>_<seq>.npz`, zero-padded so that name order is stamp order."""
    return f"{PREFIX}{int(stamp_ns):019d}_{int(seq):06d}{SUFFIX}"


def encode_sample(sample: PairSample) -> bytes | memoryview:
    """The bytes of one pair file: an uncompressed npz, images PNG-encoded (lossless, ~3x smaller)."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(sample.format_version, dtype=np.int64),
        "xkd_version": np.array(sample.xkd_version),
        "stamp_ns": np.array(sample.stamp_ns, dtype=np.int64),
        "frame_id": np.array(sample.frame_id),
        "checkpoint": np.array(sample.checkpoint),
        "points": sample.points,
        "pred_labels": sample.pred_labels,
        "confidence": sample.confidence,
        "pair_point": sample.pairs.point,
        "pair_view": sample.pairs.view,
        "pair_uv": sample.pairs.uv,
        "num_views": np.array(len(sample.views), dtype=np.int64),
    }
    for i, view in enumerate(sample.views):
        ok, png = cv2.imencode(".png", cv2.cvtColor(view.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"could not PNG-encode image of view {i} ({view.name!r})")
        arrays[f"view{i}_png"] = png.reshape(-1)
        arrays[f"view{i}_K"] = view.K
        arrays[f"view{i}_T"] = view.T
        arrays[f"view{i}_name"] = np.array(view.name)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getbuffer()


def read_pair_file(path: str | Path) -> PairSample:
    """Load one pair file; a missing, torn or inconsistent file raises `DataFormatError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"missing pair file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version > FORMAT_VERSION:
                raise DataFormatError(f"pair file {path} has format_version {version}; this reader "
                                      f"knows up to {FORMAT_VERSION}: update xkd")
            views = []
            for i in range(int(z["num_views"])):
                bgr = cv2.imdecode(z[f"view{i}_png"], cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"view {i}: image does not decode as PNG")
                views.append(CameraView(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), z[f"view{i}_K"],
                                        z[f"view{i}_T"], str(z[f"view{i}_name"])))
            return PairSample(
                points=z["points"], views=views, pred_labels=z["pred_labels"],
                confidence=z["confidence"],
                pairs=Pairs(z["pair_point"], z["pair_view"], z["pair_uv"]),
                stamp_ns=int(z["stamp_ns"]), frame_id=str(z["frame_id"]),
                checkpoint=str(z["checkpoint"]), format_version=version, xkd_version=str(z["xkd_version"]),
            )
    except DataFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, cv2.error) as exc:
        raise DataFormatError(f"corrupt pair file {path}: {type(exc).__name__}: {exc}") from exc


def list_pair_files(root: str | Path) -> list[Path]:
    """Complete pair files of a log, in (stamp, seq) order; `*.tmp` and foreign files are ignored."""
    root = Path(root)
    found = []
    for entry in os.scandir(root):
        m = _NAME_RE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), int(m.group(2)), entry.name))
    return [root / name for *_, name in sorted(found)]


def clean_stale_tmp(root: str | Path, min_age_s: float = 60.0) -> int:
    """Delete `pair_*.tmp` left by a killed writer, if older than `min_age_s`; returns how many.

    The age guard keeps a reader from deleting the file a live writer is finishing right now.
    """
    removed = 0
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if not (entry.name.startswith(PREFIX) and entry.name.endswith(TMP_SUFFIX)):
                continue
            try:
                if now - entry.stat().st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. a read-only copy of a log: reading still works
                logger.debug("pair log: cannot remove stale %s: %s", entry.path, exc)
    if removed:
        logger.info("pair log: removed %d stale temporary file(s) in %s", removed, root)
    return removed


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write `<path>.tmp`, fsync, rename over `path`: the name appears only with complete content."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- writer


def _close_at_exit(ref: weakref.ref[PairLogWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer.close(timeout=5.0)


class PairLogWriter:
    """Bounded background writer of pair files; the caller's thread never waits for the disk.

    `submit` applies the rate limit (`every_n` submissions, and/or at least `min_interval_s` of
    sample stamp between logged samples; a stamp jumping back resets it), then queues the sample
    unless `max_queue` are already waiting. One daemon thread encodes (PNG) and writes. Before each
    write the disk budget is checked against the exact encoded size: `drop_oldest` deletes the
    oldest files of the log, `stop` refuses the sample (re-reading the directory first, so logging
    resumes once someone offloads files). The writer assumes it is the only writer of its directory.

    The caller and the thread share no lock (the queue is a deque, atomic under the GIL, which the
    thread polls), so `close()` from a signal handler cannot deadlock against an interrupted
    `submit()`. The writer takes ownership of the arrays it is given: do not modify them afterwards.
    """

    STAT_KEYS = ("submitted", "written", "dropped_rate", "dropped_queue_full", "dropped_budget",
                 "dropped_closed", "deleted_for_budget", "errors", "dir_recreated", "bytes_on_disk",
                 "files_on_disk", "queued")
    _POLL_S = 0.02  # idle poll period of the writer thread

    def __init__(
        self,
        root: str | Path,
        max_queue: int = 8,
        disk_budget_bytes: int = 2 << 30,
        policy: Policy = "drop_oldest",
        every_n: int = 1,
        min_interval_s: float = 0.0,
    ) -> None:
        if int(max_queue) < 1:
            raise ValueError(f"PairLogWriter max_queue must be >= 1, got {max_queue!r}")
        if int(disk_budget_bytes) < 1:
            raise ValueError(f"PairLogWriter disk_budget_bytes must be >= 1, got {disk_budget_bytes!r}")
        if policy not in ("drop_oldest", "stop"):
            raise ValueError(f"PairLogWriter policy must be 'drop_oldest' or 'stop', got {policy!r}")
        if int(every_n) < 1:
            raise ValueError(f"PairLogWriter every_n must be >= 1, got {every_n!r}")
        if not min_interval_s >= 0:
            raise ValueError(f"PairLogWriter min_interval_s must be >= 0, got {min_interval_s!r}")
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"pair log directory {self.root} cannot be created: {exc}") from exc
        self.max_queue = int(max_queue)
        self.disk_budget_bytes = int(disk_budget_bytes)
        self.policy: Policy = policy
        self.every_n = int(every_n)
        self.min_interval_ns = int(round(min_interval_s * NS_PER_S))
        clean_stale_tmp(self.root, min_age_s=0.0)  # ours: the previous writer of this log died
        # Caller side (submit) and writer side each have their own lock and counters.
        self._submit_lock = threading.Lock()
        self._submit_counts: Counter[str] = Counter()
        self._last_kept_ns: int | None = None
        self._write_lock = threading.Lock()
        self._write_counts: Counter[str] = Counter()
        self._index: OrderedDict[str, int] = OrderedDict()  # file name -> size, oldest first
        self._seq = 0
        self._rescan()
        self._last_error = ""
        self._throttle = LogThrottle(10.0)
        self._pending: deque[PairSample] = deque()
        self._busy = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"xkd-pairlog:{self.root.name}", daemon=True)
        self._thread.start()
        self._atexit = partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # ---- caller side

    def submit(self, sample: PairSample) -> bool:
        """Queue a sample for writing without ever blocking; False if dropped (and counted)."""
        if not isinstance(sample, PairSample):
            raise TypeError(f"PairLogWriter.submit expects a PairSample, got {type(sample).__name__}")
        with self._submit_lock:
            counts = self._submit_counts
            counts["submitted"] += 1
            if self._closing:
                counts["dropped_closed"] += 1
                return False
            if (counts["submitted"] - 1) % self.every_n:
                counts["dropped_rate"] += 1
                return False
            last = self._last_kept_ns
            since = None if last is None else sample.stamp_ns - last
            if self.min_interval_ns and since is not None and 0 <= since < self.min_interval_ns:
                counts["dropped_rate"] += 1
                return False
            if len(self._pending) >= self.max_queue:
                counts["dropped_queue_full"] += 1
                return False
            self._pending.append(sample)
            self._last_kept_ns = sample.stamp_ns
            return True

    def stats(self) -> dict[str, int]:
        """Snapshot of the counters (thread-safe), for diagnostics."""
        with self._submit_lock:
            out = dict(self._submit_counts)
        with self._write_lock:
            out.update(self._write_counts)
            out["bytes_on_disk"] = sum(self._index.values())
            out["files_on_disk"] = len(self._index)
        out["queued"] = len(self._pending) + int(self._busy)
        return {k: int(out.get(k, 0)) for k in self.STAT_KEYS}

    @property
    def last_error(self) -> str:
        """The message of the latest write error ('' if none)."""
        return self._last_error

    @property
    def closed(self) -> bool:
        return self._closing

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued and stop the thread; True if everything was flushed. Idempotent.

        Safe from a signal handler: it takes no lock that an interrupted `submit` could hold.
        """
        self._closing = True
        atexit.unregister(self._atexit)
        if threading.current_thread() is self._thread:
            return False
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("pair log %s: %d sample(s) not flushed within %s s", self.root,
                           len(self._pending) + int(self._busy), timeout)
            return False
        while self._pending:  # a submit that raced with close: write it here
            self._write(self._pending.popleft())
        return True

    def __enter__(self) -> PairLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writer thread

    def _run(self) -> None:
        while True:
            self._busy = True  # before the pop: `queued` may over-count for an instant, never under
            try:
                sample = self._pending.popleft()
            except IndexError:
                self._busy = False
                if self._closing:
                    return
                time.sleep(self._POLL_S)
                continue
            try:
                self._write(sample)
            except Exception as exc:  # the thread must outlive any one bad sample
                self._error("unexpected", f"pair log {self.root}: {type(exc).__name__}: {exc}")
            finally:
                self._busy = False

    def _count(self, key: str, n: int = 1) -> None:
        with self._write_lock:
            self._write_counts[key] += n

    def _write(self, sample: PairSample) -> None:
        try:
            data = encode_sample(sample)
        except ValueError as exc:
            self._error("encode", f"pair log: sample at {sample.stamp_ns} not encodable: {exc}")
            return
        size = len(data)
        try:
            self._ensure_dir()
            if not self._make_room(size):
                return
            name = pair_file_name(sample.stamp_ns, self._seq)
            self._seq += 1
            try:
                _atomic_write(self.root / name, data)
            except FileNotFoundError:  # the directory vanished between the check and the write
                self._ensure_dir()
                _atomic_write(self.root / name, data)
        except OSError as exc:
            kind = {errno.ENOSPC: "disk full", errno.EDQUOT: "quota exceeded",
                    errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                    errno.EROFS: "read-only file system"}.get(exc.errno or 0, "write error")
            self._error(kind, f"pair log {self.root}: {kind}: {exc}")
            return
        with self._write_lock:
            self._index[name] = size
            self._write_counts["written"] += 1

    def _ensure_dir(self) -> None:
        if self.root.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            self._index.clear()
            self._write_counts["dir_recreated"] += 1
        logger.warning("pair log directory %s was removed; recreated it", self.root)

    def _used(self) -> int:
        with self._write_lock:
            return sum(self._index.values())

    def _make_room(self, size: int) -> bool:
        """Apply the disk budget for a file of `size` bytes; False if the sample must be dropped."""
        budget = self.disk_budget_bytes
        if size > budget:
            self._refuse(f"one sample ({size} B) is larger than the whole disk budget ({budget} B)")
            return False
        used = self._used()
        if used + size <= budget:
            return True
        if self.policy == "stop":
            self._rescan()  # files may have been offloaded since
            used = self._used()
            if used + size <= budget:
                return True
            self._refuse(f"disk budget reached ({used} of {budget} B, policy 'stop')")
            return False
        while used + size > budget:
            with self._write_lock:
                name, old = next(iter(self._index.items()))
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._error("delete", f"pair log: cannot delete {self.root / name} for the budget: {exc}")
                return False
            with self._write_lock:
                self._index.pop(name, None)
                self._write_counts["deleted_for_budget"] += 1
            used -= old
        return True

    def _rescan(self) -> None:
        """Rebuild the file index from the directory (oldest first by mtime) and the next seq."""
        entries = []
        seq = self._seq
        for entry in os.scandir(self.root):
            m = _NAME_RE.match(entry.name)
            if not m:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                entries.append((st.st_mtime_ns, entry.name, st.st_size))
                seq = max(seq, int(m.group(2)) + 1)  # never reuse a name of an earlier run
        entries.sort()
        with self._write_lock:
            self._index = OrderedDict((name, size) for _, name, size in entries)
        self._seq = seq

    def _refuse(self, why: str) -> None:
        self._count("dropped_budget")
        self._log_throttled("budget", logging.WARNING, f"pair log {self.root}: sample dropped: {why}")

    def _error(self, kind: str, message: str) -> None:
        self._count("errors")
        self._last_error = message
        self._log_throttled(kind, logging.ERROR, message)

    def _log_throttled(self, kind: str, level: int, message: str) -> None:
        """Log each kind of problem at most every 10 s: a full disk at 10 Hz must not flood."""
        show, held = self._throttle.ready(kind)
        if show:
            more = f"; {held} more since the last report" if held else ""
            logger.log(level, "%s (counted in diagnostics%s)", message, more)


# --------------------------------------------------------------------------- reader


def segmented_points(sample: PairSample) -> np.ndarray:
    """(N,) bool: the points the node's model segmented. The others (non-finite, ego crop, `min_range`,
    `max_range`) are logged with confidence 0, which a prediction never has (a softmax maximum over the
    classes is at least 1 / C)."""
    return (sample.confidence > 0) & np.isfinite(sample.points).all(axis=1)


def _view_names(cameras: Sequence[int | str]) -> set[str] | None:
    """The view names `data.cameras`-style selectors pick from a log (None: every view)."""
    selectors = camera_selectors(cameras)
    if selectors == [ALL_VIEWS]:
        return None
    return {IMAGE_DIRS[c] if isinstance(c, int) else c for c in selectors}


class PairLogDataset(Dataset):
    """Unlabeled `Frame`s from a pair log: the points the node's model segmented (`segmented_points`)
    and the logged views that `cameras` selects (view names, KITTI indices 2 / 3 for `image_2` /
    `image_3`, or `all`), `labels` None.

    `Frame.sequence` is the log directory's name and `Frame.frame_id` the file stem. A file that
    cannot be read is logged, remembered and skipped (the next readable file is returned instead),
    so one torn or truncated file never ends a training run; `num_corrupt` counts them (per process
    when a DataLoader uses worker processes). Selectors that match no view of the log's first readable
    file are refused at construction: a typo must not silently train without the camera.
    """

    def __init__(self, root: str | Path, cameras: Sequence[int | str] | str = ALL_VIEWS,
                 clean_tmp_older_than_s: float = 60.0):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"pair log directory not found: {self.root}")
        self.names = _view_names(cameras)
        clean_stale_tmp(self.root, clean_tmp_older_than_s)
        self.files = list_pair_files(self.root)
        self._corrupt: set[int] = set()
        if self.names is not None and self.files:
            logged = self._first_view_names()
            if logged is not None and not self.names & logged:
                raise ValueError(f"pair log {self.root}: cameras {sorted(self.names)} match none of the "
                                 f"logged views {sorted(logged)}")

    def _first_view_names(self) -> set[str] | None:
        for path in self.files:
            try:
                return {v.name for v in read_pair_file(path).views}
            except DataFormatError:
                continue
        return None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_corrupt(self) -> int:
        return len(self._corrupt)

    def sample(self, index: int) -> tuple[int, PairSample]:
        """(file index, everything in it) of the readable file at `index` or the next readable one."""
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"PairLogDataset index {index} out of range for {n} file(s) in {self.root}")
        for k in range(n):
            j = (index + k) % n
            if j in self._corrupt:
                continue
            try:
                return j, read_pair_file(self.files[j])
            except DataFormatError as exc:
                self._corrupt.add(j)
                logger.warning("skipping pair file (%d skipped so far): %s", len(self._corrupt), exc)
        raise DataFormatError(f"no readable pair file in {self.root} ({n} file(s), all corrupt)")

    def __getitem__(self, index: int) -> Frame:
        j, sample = self.sample(index)
        keep = segmented_points(sample)
        views = [v for v in sample.views if self.names is None or v.name in self.names]
        return Frame(points=sample.points[keep], labels=None, instance=None, views=views,
                     sequence=self.root.name, frame_id=self.files[j].stem)
