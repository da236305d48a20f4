"""Tests of xkd_core.data.pairlog: format round trip, non-blocking submit, atomic files, disk budget,
I/O errors survived, flush on close / SIGTERM / exit, and the (label-free) training dataset."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xkd_core.data import pairlog
from xkd_core.data.frame import CameraView, Frame
from xkd_core.data.pairlog import (
    FORMAT_VERSION,
    PairLogDataset,
    PairLogWriter,
    PairSample,
    encode_sample,
    list_pair_files,
    pair_file_name,
    read_pair_file,
)
from xkd_core.data.semantickitti import DataFormatError
from xkd_core.geometry.projection import point_pixel_pairs

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000
#: LiDAR (x forward, y left, z up) -> camera (z forward, x right, y down).
T_LIDAR_CAM = np.array([[0, -1, 0, 0], [0, 0, -1, 0.1], [1, 0, 0, -0.2], [0, 0, 0, 1]], dtype=np.float64)


def make_sample(stamp_ns: int, n: int = 400, n_views: int = 1, seed: int = 0) -> PairSample:
    """A small but real sample: points in front of the camera(s), pairs from the projection."""
    rng = np.random.default_rng(seed)
    pts = np.stack([rng.uniform(2, 20, n), rng.uniform(-6, 6, n), rng.uniform(-1.5, 2, n),
                    rng.uniform(0, 1, n)], axis=1).astype(np.float32)
    K = np.array([[40.0, 0, 31.5], [0, 40.0, 19.5], [0, 0, 1]])
    views = []
    for v in range(n_views):
        T = T_LIDAR_CAM.copy()
        T[0, 3] = 0.5 * v
        views.append(CameraView(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8), K, T, f"cam{v}"))
    pairs = point_pixel_pairs(pts[:, :3], [(v.K, v.T, v.hw) for v in views])
    return PairSample(points=pts, views=views, pred_labels=rng.integers(0, 20, n).astype(np.uint16),
                      confidence=rng.uniform(0, 1, n).astype(np.float32), pairs=pairs, stamp_ns=stamp_ns,
                      frame_id="velodyne", checkpoint="xkd_synth_small.pt")


def wait_for(cond, what: str, limit_s: float = 30.0) -> None:
    """Poll until `cond()` holds (a generous deadline only guards against a hang; nothing is timed)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def npz_sizes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("pair_*.npz"))


# --------------------------------------------------------------------------- format


def test_round_trip_through_writer_and_dataset(tmp_path: Path) -> None:
    samples = [make_sample((100 + k) * S, n_views=k % 3, seed=k) for k in range(4)]
    with PairLogWriter(tmp_path, max_queue=8) as writer:
        for s in reversed(samples):  # submission order must not matter: files sort by stamp
            assert writer.submit(s)
    assert writer.stats()["written"] == 4
    ds = PairLogDataset(tmp_path)
    assert len(ds) == 4
    for k, s in enumerate(samples):
        frame = ds[k]
        assert isinstance(frame, Frame)
        np.testing.assert_array_equal(frame.points, s.points)
        assert frame.labels is None  # the node's predictions are never training targets
        assert len(frame.views) == len(s.views)
        for got, want in zip(frame.views, s.views):
            np.testing.assert_array_equal(got.image, want.image)  # PNG is lossless
            np.testing.assert_array_equal(got.K, want.K)
            np.testing.assert_array_equal(got.T, want.T)
            assert got.name == want.name
        full = read_pair_file(ds.files[k])
        assert full.stamp_ns == s.stamp_ns and full.frame_id == "velodyne"
        assert full.checkpoint == "xkd_synth_small.pt" and full.format_version == FORMAT_VERSION
        np.testing.assert_array_equal(full.pred_labels, s.pred_labels)
        np.testing.assert_array_equal(full.confidence, s.confidence)
        np.testing.assert_array_equal(full.pairs.point, s.pairs.point)
        np.testing.assert_array_equal(full.pairs.view, s.pairs.view)
        np.testing.assert_array_equal(full.pairs.uv, s.pairs.uv)
    assert ds.num_corrupt == 0


def test_file_names_sort_by_stamp_and_images_are_png() -> None:
    assert pair_file_name(5, 2) == "pair_0000000000000000005_000002.npz"
    assert sorted([pair_file_name(10 * S, 1), pair_file_name(9 * S, 2)])[0] == pair_file_name(9 * S, 2)
    s = make_sample(1, n_views=1)
    with np.load(io.BytesIO(bytes(encode_sample(s)))) as z:
        png = z["view0_png"]
        assert png.dtype == np.uint8 and png.ndim == 1
        assert bytes(png[:8]) == b"\x89PNG\r\n\x1a\n"


def test_newer_format_version_refused(tmp_path: Path) -> None:
    s = make_sample(1)
    s.format_version = FORMAT_VERSION + 1
    path = tmp_path / pair_file_name(1, 0)
    path.write_bytes(bytes(encode_sample(s)))
    with pytest.raises(DataFormatError, match="format_version"):
        read_pair_file(path)


@pytest.mark.parametrize(
    ("change", "name"),
    [({"points": np.zeros((5, 3), np.float32)}, "points"),
     ({"pred_labels": np.zeros(3, np.uint16)}, "pred_labels"),
     ({"confidence": np.zeros((400, 2), np.float32)}, "confidence"),
     ({"pred_labels": np.full(400, 25, np.uint16)}, "pred_labels"),
     ({"stamp_ns": -1}, "stamp_ns")],
)
def test_bad_sample_named(change: dict, name: str) -> None:
    s = make_sample(1)
    fields = {k: getattr(s, k) for k in ("points", "views", "pred_labels", "confidence", "pairs", "stamp_ns")}
    with pytest.raises(ValueError, match=name):
        PairSample(**(fields | change))


def test_pairs_out_of_range_refused() -> None:
    s = make_sample(1)
    s.pairs.view[:] = 3
    with pytest.raises(ValueError, match="pairs.view"):
        PairSample(s.points, s.views, s.pred_labels, s.confidence, s.pairs, 1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"max_queue": 0}, "max_queue"), ({"disk_budget_bytes": 0}, "disk_budget_bytes"),
     ({"policy": "newest"}, "policy"), ({"every_n": 0}, "every_n"),
     ({"min_interval_s": -1.0}, "min_interval_s")],
)
def test_writer_bad_parameters_named(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PairLogWriter(tmp_path, **kwargs)


# --------------------------------------------------------------------------- never blocks, flush


class GatedWrite:
    """Replaces `_atomic_write`: signals when the writer thread enters, waits for the gate to open."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.real = pairlog._atomic_write

    def __call__(self, path: Path, data: bytes) -> None:
        self.entered.set()
        if not self.gate.wait(60):
            raise AssertionError("gate never opened")
        self.real(path, data)


def test_submit_never_blocks_and_counts_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gated = GatedWrite()
    monkeypatch.setattr(pairlog, "_atomic_write", gated)
    writer = PairLogWriter(tmp_path, max_queue=3)
    try:
        assert writer.submit(make_sample(0))
        assert gated.entered.wait(30)  # the writer thread is now stuck on the disk
        accepted = [writer.submit(make_sample(k * S)) for k in range(1, 11)]
        assert accepted == [True] * 3 + [False] * 7
        st = writer.stats()
        assert st["dropped_queue_full"] == 7 and st["queued"] == 4 and st["written"] == 0
    finally:
        gated.gate.set()
        assert writer.close()
    st = writer.stats()
    assert st["written"] == 4 and st["queued"] == 0 and st["submitted"] == 11
    assert len(list_pair_files(tmp_path)) == 4


def test_close_flushes_everything_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gated = GatedWrite()
    monkeypatch.setattr(pairlog, "_atomic_write", gated)
    writer = PairLogWriter(tmp_path, max_queue=8)
    assert writer.submit(make_sample(0))
    assert gated.entered.wait(30)
    assert all(writer.submit(make_sample(k * S)) for k in range(1, 9))
    closer = threading.Thread(target=writer.close, kwargs={"timeout": 60})
    closer.start()  # close() while 8 samples wait and the disk is stuck
    gated.gate.set()
    closer.join(60)
    assert not closer.is_alive()
    assert writer.stats()["written"] == 9
    assert len(list_pair_files(tmp_path)) == 9
    assert writer.close() is True  # idempotent
    assert writer.submit(make_sample(99 * S)) is False
    assert writer.stats()["dropped_closed"] == 1


def test_rate_limits(tmp_path: Path) -> None:
    with PairLogWriter(tmp_path, every_n=3, max_queue=16) as writer:
        kept = [writer.submit(make_sample(k * S)) for k in range(9)]
    assert kept == [True, False, False] * 3
    assert writer.stats()["dropped_rate"] == 6
    with PairLogWriter(tmp_path / "b", min_interval_s=1.0, max_queue=16) as writer:
        stamps = [k * S // 4 for k in range(9)] + [0]  # 4 Hz, then the bag loops
        kept = [writer.submit(make_sample(t)) for t in stamps]
    assert kept == [True, False, False, False] * 2 + [True, True]
    assert writer.stats()["written"] == 4


# --------------------------------------------------------------------------- disk budget


def _sample_size() -> int:
    return len(encode_sample(make_sample(0)))


def test_budget_drop_oldest(tmp_path: Path) -> None:
    size = _sample_size()
    budget = int(3.5 * size)
    with PairLogWriter(tmp_path, max_queue=16, disk_budget_bytes=budget, policy="drop_oldest") as writer:
        for k in range(7):
            writer.submit(make_sample(k * S))
    st = writer.stats()
    assert st["written"] == 7 and st["deleted_for_budget"] == 4 and st["dropped_budget"] == 0
    files = list_pair_files(tmp_path)
    assert [read_pair_file(f).stamp_ns for f in files] == [4 * S, 5 * S, 6 * S]
    assert st["bytes_on_disk"] == npz_sizes(tmp_path) <= budget
    assert st["files_on_disk"] == 3


def test_budget_stop_refuses_then_resumes_after_offload(tmp_path: Path) -> None:
    size = _sample_size()
    writer = PairLogWriter(tmp_path, max_queue=16, disk_budget_bytes=int(3.5 * size), policy="stop")
    try:
        for k in range(7):
            writer.submit(make_sample(k * S))
        wait_for(lambda: writer.stats()["queued"] == 0, "the queue to drain")
        st = writer.stats()
        assert st["written"] == 3 and st["dropped_budget"] == 4 and st["deleted_for_budget"] == 0
        files = list_pair_files(tmp_path)
        assert [read_pair_file(f).stamp_ns for f in files] == [0, S, 2 * S]  # the oldest are kept
        files[0].unlink()  # an operator offloads one file
        writer.submit(make_sample(10 * S))
    finally:
        writer.close()
    assert writer.stats()["written"] == 4
    assert [read_pair_file(f).stamp_ns for f in list_pair_files(tmp_path)] == [S, 2 * S, 10 * S]


def test_sample_larger_than_budget_dropped(tmp_path: Path) -> None:
    with PairLogWriter(tmp_path, disk_budget_bytes=_sample_size() // 2) as writer:
        writer.submit(make_sample(0))
    assert writer.stats()["dropped_budget"] == 1 and list_pair_files(tmp_path) == []


def test_budget_counts_files_of_an_earlier_run(tmp_path: Path) -> None:
    size = _sample_size()
    with PairLogWriter(tmp_path, max_queue=16) as first:
        for k in range(3):
            first.submit(make_sample(k * S))
    with PairLogWriter(tmp_path, disk_budget_bytes=int(3.5 * size)) as second:
        assert second.stats()["files_on_disk"] == 3
        second.submit(make_sample(0))  # same stamp as a file of the first run: a new name, no overwrite
    assert second.stats()["deleted_for_budget"] == 1
    assert len(list_pair_files(tmp_path)) == 3


# --------------------------------------------------------------------------- I/O errors survived


def test_disk_full_counted_and_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    real_fsync = os.fsync
    full = {"on": True}

    def fsync(fd: int) -> None:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(pairlog.os, "fsync", fsync)
    caplog.set_level(logging.ERROR, logger="xkd_core.data.pairlog")
    writer = PairLogWriter(tmp_path, max_queue=8)
    try:
        assert writer.submit(make_sample(0)) and writer.submit(make_sample(S))
        wait_for(lambda: writer.stats()["errors"] == 2, "two write errors")
        assert "disk full" in writer.last_error
        assert list(tmp_path.iterdir()) == []  # no .tmp left behind, no torn file
        full["on"] = False  # space freed: the writer just goes on
        assert writer.submit(make_sample(2 * S))
    finally:
        writer.close()
    st = writer.stats()
    assert st["written"] == 1 and st["errors"] == 2 and st["bytes_on_disk"] == npz_sizes(tmp_path)
    assert any("disk full" in r.getMessage() for r in caplog.records)
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1  # throttled, not flooded


def test_permission_error_counted_and_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src: str | Path, dst: str | Path) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(pairlog.os, "replace", replace)
    with PairLogWriter(tmp_path) as writer:
        writer.submit(make_sample(0))
        writer.submit(make_sample(S))
    st = writer.stats()
    assert st["errors"] == 1 and st["written"] == 1
    assert "permission denied" in writer.last_error
    assert [p.name for p in tmp_path.iterdir()] == [list_pair_files(tmp_path)[0].name]


def test_directory_removed_mid_run_is_recreated(tmp_path: Path) -> None:
    root = tmp_path / "log"
    writer = PairLogWriter(root)
    try:
        writer.submit(make_sample(0))
        wait_for(lambda: writer.stats()["written"] == 1, "the first file")
        shutil.rmtree(root)
        writer.submit(make_sample(S))
        wait_for(lambda: writer.stats()["written"] == 2, "the second file")
    finally:
        writer.close()
    st = writer.stats()
    assert st["dir_recreated"] == 1 and st["errors"] == 0
    assert [read_pair_file(f).stamp_ns for f in list_pair_files(root)] == [S]
    assert st["bytes_on_disk"] == npz_sizes(root) and st["files_on_disk"] == 1


def test_unexpected_error_does_not_kill_the_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pairlog.encode_sample
    calls = {"n": 0}

    def encode(sample: PairSample) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(sample)

    monkeypatch.setattr(pairlog, "encode_sample", encode)
    with PairLogWriter(tmp_path) as writer:
        writer.submit(make_sample(0))
        writer.submit(make_sample(S))
    assert writer.stats()["errors"] == 1 and writer.stats()["written"] == 1


# --------------------------------------------------------------------------- processes: kill, term, exit


def _run_child(code: str, root: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    script = textwrap.dedent(
        """
        import json, os, signal, sys, time
        import numpy as np
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, {test_dir!r})
        from test_pairlog import make_sample
        from xkd_core.data import pairlog
        root = {root!r}
        """
    ).format(test_dir=str(Path(__file__).parent), root=str(root)) + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_write_leaves_no_torn_file(tmp_path: Path) -> None:
    child = _run_child(
        """
        writer = pairlog.PairLogWriter(root)
        writer.submit(make_sample(0)); writer.submit(make_sample(10**9))
        while writer.stats()["written"] < 2:
            time.sleep(0.01)

        class HalfFile:
            # The disk stalls after half of the bytes: the parent kills us right there.
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *a):
                self.f.close()
            def write(self, data):
                self.f.write(bytes(data)[: len(data) // 2]); self.f.flush()
                print("HALF", flush=True)
                time.sleep(600)
            def flush(self):
                self.f.flush()
            def fileno(self):
                return self.f.fileno()

        pairlog.open = lambda path, mode: HalfFile(open(path, mode))
        writer.submit(make_sample(2 * 10**9))
        time.sleep(600)
        """,
        tmp_path,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "HALF", child.stderr.read() if child.poll() is not None else line
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    tmps = list(tmp_path.glob("*.tmp"))
    assert len(tmps) == 1 and tmps[0].stat().st_size > 0  # the torn bytes exist only under .tmp
    ds = PairLogDataset(tmp_path)  # a fresh .tmp is ignored, not deleted (a writer may own it)
    assert len(ds) == 2 and tmps[0].exists()
    assert [f.points.shape for f in (ds[0], ds[1])] == [(400, 4), (400, 4)] and ds.num_corrupt == 0
    ds = PairLogDataset(tmp_path, clean_tmp_older_than_s=0.0)
    assert len(ds) == 2 and not tmps[0].exists()
    # A new writer on the same log also cleans up and continues after the old names.
    tmps[0].write_bytes(b"torn")
    with PairLogWriter(tmp_path) as writer:
        assert not tmps[0].exists()
        writer.submit(make_sample(0))
    assert len(list_pair_files(tmp_path)) == 3


def test_sigterm_handler_close_flushes_queue(tmp_path: Path) -> None:
    child = _run_child(
        """
        real = pairlog._atomic_write
        def slow(path, data):
            time.sleep(0.2)  # a slow disk: the queue is still full when SIGTERM arrives
            real(path, data)
        pairlog._atomic_write = slow
        writer = pairlog.PairLogWriter(root, max_queue=8)

        def on_term(signum, frame):
            flushed = writer.close(timeout=60)
            print(json.dumps({"flushed": flushed, **writer.stats()}), flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        for k in range(6):
            assert writer.submit(make_sample(k * 10**9))
        print("READY", json.dumps(writer.stats()), flush=True)
        time.sleep(600)
        """,
        tmp_path,
    )
    try:
        ready = child.stdout.readline()
        assert ready.startswith("READY"), child.stderr.read() if child.poll() is not None else ready
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    before = json.loads(ready.split(" ", 1)[1])
    assert before["written"] < 6  # there was something left to flush
    after = json.loads(out.strip().splitlines()[-1])
    assert after["flushed"] is True and after["written"] == 6 and after["queued"] == 0
    assert len(PairLogDataset(tmp_path)) == 6


def test_atexit_flushes_without_close(tmp_path: Path) -> None:
    child = _run_child(
        """
        writer = pairlog.PairLogWriter(root, max_queue=8)
        for k in range(5):
            writer.submit(make_sample(k * 10**9))
        # no close(): the interpreter exits and the atexit fallback flushes
        """,
        tmp_path,
    )
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert len(list_pair_files(tmp_path)) == 5
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- dataset robustness


def test_corrupt_files_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with PairLogWriter(tmp_path, max_queue=8) as writer:
        for k in range(4):
            writer.submit(make_sample(k * S, seed=k))
    files = list_pair_files(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # torn (what a non-atomic writer would leave)
    files[2].write_bytes(b"not a zip at all")
    (tmp_path / "notes.txt").write_text("ignored")
    caplog.set_level(logging.WARNING, logger="xkd_core.data.pairlog")
    ds = PairLogDataset(tmp_path)
    assert len(ds) == 4
    frames = [ds[i] for i in range(len(ds))]
    good = [read_pair_file(files[0]).points, read_pair_file(files[3]).points]
    for f in frames:
        assert any(np.array_equal(f.points, g) for g in good)
    np.testing.assert_array_equal(frames[1].points, good[1])  # the next readable file stands in
    assert ds.num_corrupt == 2
    assert sum("skipping pair file" in r.getMessage() for r in caplog.records) == 2
    for f in (files[0], files[3]):
        f.write_bytes(b"")
    ds = PairLogDataset(tmp_path)
    with pytest.raises(DataFormatError, match="no readable pair file"):
        ds[0]


def test_dataset_missing_root_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PairLogDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="camera"):
        PairLogDataset(tmp_path, cameras=["not a name"])
    assert len(PairLogDataset(tmp_path)) == 0


def test_dataset_keeps_the_segmented_points_and_the_selected_views(tmp_path: Path) -> None:
    """Points the node kept from its model (non-finite, ego crop, range gates: logged with confidence 0)
    are not training points; `cameras` picks logged views by name (2 = `image_2`), `all` keeps each."""
    s = make_sample(S, n=300, n_views=3, seed=5)
    s.points[:7, :3] = np.nan  # a driver's missed returns: confidence 0 as the node logs them
    s.confidence[:20] = 0.0  # plus ego-crop / range-gated points
    s.confidence[20:] = np.maximum(s.confidence[20:], 1.0 / 19)  # a softmax maximum is at least 1 / C
    s.views[2].name = "image_2"
    with PairLogWriter(tmp_path) as writer:
        writer.submit(s)
    frame = PairLogDataset(tmp_path)[0]
    np.testing.assert_array_equal(frame.points, s.points[20:])
    assert [v.name for v in frame.views] == ["cam0", "cam1", "image_2"]
    assert [v.name for v in PairLogDataset(tmp_path, cameras=["cam1", 2])[0].views] == ["cam1", "image_2"]
    with pytest.raises(ValueError, match=r"CAM_FRONT.*match none of the logged views"):
        PairLogDataset(tmp_path, cameras=["CAM_FRONT"])
