"""Benchmark tooling: report rendering from results files, the stage benchmark run tiny, scan resizing.

Nothing here is timed: these check that the tools run and that the doc tables say what the JSON says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench import bench_stages, report  # noqa: E402
from bench.common import resize_cloud  # noqa: E402

DOC = """# Performance

Hand-written text that must survive.

<!-- bench:targets -->
stale
<!-- /bench:targets -->

<!-- bench:stages -->
<!-- /bench:stages -->

<!-- bench:node -->
<!-- /bench:node -->

<!-- bench:pointcloud -->
<!-- /bench:pointcloud -->

<!-- bench:train -->
<!-- /bench:train -->

<!-- bench:run -->
<!-- /bench:run -->

<!-- bench:transport -->
<!-- /bench:transport -->

Closing words.
"""


def _stats(p50: float, p99: float) -> dict:
    return {"p50": p50, "p99": p99, "mean": p50, "max": p99, "n": 200}


def _write_results(root: Path) -> None:
    stages = {k: _stats(1.0, 2.0) for k in report.STAGES}
    stages["forward_3d"] = _stats(200.0, 240.0)
    stages["total"] = _stats(212.0, 260.0)
    stages["inference"] = _stats(205.0, 250.0)
    machine = {"cpu": "Test CPU", "cores": 2, "torch": "2.x", "spconv": "2.3.8"}
    (root / "stages_cpu.json").write_text(json.dumps({
        "command": "python -m bench.bench_stages", "device": "cpu", "machine": machine, "torch_threads": 2,
        "load_avg_start": [0.5, 0.4, 0.3], "load_avg_end": [1.5, 1.0, 0.5], "scans": 200,
        "rows": [{"points": 120000, "voxels": 49000, "backend": "spconv", "precision": "fp32",
                  "stages_ms": stages}],
        "skipped": [{"backend": "auto", "precision": "fp16", "reason": "fp16 autocast is CUDA-only"}]}))
    (root / "stages_cuda.json").write_text(json.dumps({
        "device": "cuda", "machine": machine, "rows": [],
        "skipped": [{"backend": "spconv", "precision": "fp32", "reason": "no CUDA device on this machine"}]}))
    node_row = {"rate_hz": 10.0, "points_per_scan": 30000, "frames_published": 300, "frames_out": 300,
                "drops": 0, "drop_fraction": 0.0, "output_rate_hz": 10.0,
                "latency_publish_to_receive_ms": {"p50": 40.0, "p99": 45.5, "max": 47.0},
                "node_diagnostics": {"latency_p50_ms": "38.00", "latency_p99_ms": "44.00"}}
    slow_row = dict(node_row, points_per_scan=128000, frames_out=111, drops=189, drop_fraction=0.63,
                    latency_publish_to_receive_ms={"p50": 350.0, "p99": 432.0, "max": 446.0})
    (root / "node_cpu.json").write_text(json.dumps({
        "machine": machine, "node_threads": 2, "seconds": 30.0, "warmup_s": 3.0, "input_qos": "reliable",
        "checkpoint": "shipped", "rows": [node_row, slow_row, dict(node_row, rate_hz=20.0)]}))
    (root / "pointcloud.json").write_text(json.dumps({
        "points": 120000, "machine": {"processor": "x86_64", "cpu_count": 2, "numpy": "2"}, "target_ms": 2.0,
        "results": {"decode_rclpy_kitti16": {"p50_ms": 0.15, "p99_ms": 0.26, "reps": 300},
                    "encode_rclpy_total": {"p50_ms": 1.9, "p99_ms": 2.4, "reps": 300}}}))
    (root / "transport.json").write_text(json.dumps({
        "machine": machine, "rounds": 2, "messages_per_round": 100, "rate_hz": 10.0, "rmw": "rmw_fastrtps",
        "rows": [{"points": 127000, "bytes": 127000 * 16, "reliability": "best_effort", "profile": p,
                  "sent": 200, "received": n, "latency_ms": _stats(p50, p50 * 2)}
                 for p, p50, n in (("none", 40.0, 31), ("shipped", 14.0, 200))]}))
    (root / "run_all.json").write_text(json.dumps({
        "mode": "quick", "started": "2026-11-25 09:00 UTC", "wall_s": 180.0, "cores": 2,
        "load_avg_start": [3.9, 3.0, 2.0], "load_avg_end": [4.1, 3.2, 2.1],
        "steps": [{"name": "stages", "status": "ok", "command": "python -m bench.bench_stages",
                   "wall_s": 60.0}]}))


def test_report_renders_every_section_from_the_results_files(tmp_path):
    _write_results(tmp_path)
    doc = tmp_path / "performance.md"
    doc.write_text(DOC)
    assert report.main(["--results", str(tmp_path), "--doc", str(doc), "--check"]) == 1  # stale before
    assert report.main(["--results", str(tmp_path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "Hand-written text that must survive." in text and text.rstrip().endswith("Closing words.")
    assert "stale" not in text
    # stage table: p50 / p99 per stage, the 3D share, the skipped GPU rows with their reason
    assert "| spconv | fp32 | 120k | 49000 | 1.00 / 2.00 |" in text
    assert "**212 / 260**" in text and "| 94% |" in text
    assert "no CUDA device on this machine" in text and "fp16 autocast is CUDA-only" in text
    # targets: verdicts follow the numbers (encode is judged at p99: 2.4 ms is over 2 ms)
    targets = text.split("<!-- bench:targets -->")[1].split("<!-- /bench:targets -->")[0]
    assert "unmeasured: no GPU in this run" in targets and "CPU: 205 ms" in targets
    assert "PointCloud2 -> numpy <= 2 ms, 120k points, CPU | p50 0.15 / p99 0.26 ms | **met**" in targets
    assert "numpy -> PointCloud2 <= 2 ms, 120k points, CPU | p50 1.90 / p99 2.40 ms | **not met**" in targets
    assert "(CPU, 30k points) | p99 45.5 ms, 0 drops | **met**" in targets
    assert "(CPU, 128k points) | p99 432 ms, 189 drops | **not met**" in targets
    assert targets.count("at 10 Hz") == 2  # the 20 Hz row is not a target row
    # node and train sections; a missing results file says how to produce it
    assert "| 128k | 10.0 Hz | 300 | 111 | 189 (63%) |" in text
    assert "**CPU**: not run (`python -m bench.bench_train --device cpu`)." in text
    assert "A quick validation run" in text
    assert "Fast DDS profile none." in text  # a node results file from before the profile option
    assert "| 127k | 1.94 MiB | best effort | none | 31/200 | 40.0 | 80.0 |" in text
    assert "| 127k | 1.94 MiB | best effort | shipped | 200/200 | 14.0 | 28.0 |" in text
    assert report.main(["--results", str(tmp_path), "--doc", str(doc), "--check"]) == 0  # up to date now


def test_report_refuses_an_unknown_marker(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("<!-- bench:nonsense -->\n<!-- /bench:nonsense -->\n")
    with pytest.raises(ValueError, match="bench:nonsense"):
        report.main(["--results", str(tmp_path), "--doc", str(doc)])


def test_bench_stages_runs_end_to_end_on_tiny_scans(tmp_path):
    out, png = tmp_path / "stages.json", tmp_path / "stages.png"
    bench_stages.main(["--sizes", "5000", "--scans", "2", "--warmup", "1", "--checkpoint", "random",
                       "--pool", "2", "--threads", "1", "--out", str(out), "--plot", str(png)])
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["scans"] == 2 and "p99 is not meaningful" in data["note"]
    assert data["checkpoint"] == "random-init synth_small preset" and data["torch_threads"] == 1
    assert [s["precision"] for s in data["skipped"]] == ["fp16"]  # CUDA-only, with the reason
    (row,) = data["rows"]
    assert row["points"] == 5000 and row["precision"] == "fp32" and row["backend"] == "spconv"
    assert 0 < row["voxels"] <= 5000
    st = row["stages_ms"]
    assert set(st) == {*bench_stages.STAGES, "total", "inference"}
    assert all(st[k]["n"] == 2 and st[k]["p50"] >= 0 for k in st)
    # per scan, total = decode -> overlay, which holds every stage (means add up; gaps are >= 0)
    assert st["total"]["mean"] >= sum(st[k]["mean"] for k in bench_stages.STAGES) - 0.01
    parts = ("preprocess", "voxelize", "forward_3d", "gather")
    assert st["inference"]["mean"] == pytest.approx(sum(st[k]["mean"] for k in parts), abs=0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resize_cloud_subsets_in_order_and_appends_scans_when_short():
    rng = np.random.default_rng(0)
    # point i of pool scan k is (i, k, 0, 0): where every output point came from is readable
    pool = [np.stack([np.arange(100), np.full(100, k), np.zeros(100), np.zeros(100)], 1).astype(np.float32)
            for k in range(3)]
    small = resize_cloud(pool, 1, 40, rng)
    assert small.shape == (40, 4) and (small[:, 1] == 1).all()
    assert (np.diff(small[:, 0]) > 0).all()  # a subset, in scan order, without repeats
    big = resize_cloud(pool, 2, 250, rng)  # scan 2, then 0 and 1 (the pool wraps around), 250 of 300
    assert big.shape == (250, 4) and big.flags.c_contiguous
    assert set(np.unique(big[:, 1])) == {0.0, 1.0, 2.0}
    assert len(np.unique(big[:, :2], axis=0)) == 250  # no point drawn twice
    with pytest.raises(ValueError, match="fewer than 400 points"):
        resize_cloud(pool, 0, 400, rng)
