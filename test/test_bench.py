"""Benchmark tooling: report rendering from results files, the stage benchmark run tiny, scan resizing.

Nothing here is timed: these check that the tools run and that the doc tables say what the JSON says.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench import bench_stages, record_demo, report  # noqa: E402
from bench.common import resize_cloud  # noqa: E402
from experiments import xmodel_kd_stages  # noqa: E402

DOC = """# Performance

Hand-written text that must survive.

<!-- figures:targets -->
stale
<!-- /figures:targets -->

<!-- figures:stages -->
<!-- /figures:stages -->

<!-- figures:node -->
<!-- /figures:node -->

<!-- figures:pointcloud -->
<!-- /figures:pointcloud -->

<!-- figures:train -->
<!-- /figures:train -->

<!-- figures:run -->
<!-- /figures:run -->

<!-- figures:transport -->
<!-- /figures:transport -->

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
    targets = text.split("<!-- figures:targets -->")[1].split("<!-- /figures:targets -->")[0]
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
    doc.write_text("<!-- figures:nonsense -->\n<!-- /figures:nonsense -->\n")
    with pytest.raises(ValueError, match="figures:nonsense"):
        report.main(["--results", str(tmp_path), "--doc", str(doc)])


def _stage_table(base: list[float], kd: list[float]) -> dict:
    """One val world of an `experiments/xmodel_kd_stages.py` results file, paired by its own `versus`."""
    rows = {m: {"seeds": [0, 1, 2], "full": v, "frustum": v, "s_per_step": sps,
                "iou": [{"parking": x + (8.0 if m == "kd" else 0.0), "road": 80.0} for x in v]}
            for m, v, sps in (("baseline", base, 0.4), ("kd", kd, 0.6))}
    rows["kd"]["vs_baseline"] = xmodel_kd_stages.versus(rows["kd"], rows["baseline"])
    return rows


def test_xmodel_kd_table_and_machine_lines_come_from_the_stage_runners_results(tmp_path):
    results = {"steps": 2400, "teacher": {"step": 2000, "pixel_miou": 59.7, "points": {"01": {"miou": 63.0}}},
               "regimes": {"labels0.01": {"01": _stage_table([30.0, 32.0, 34.0], [33.0, 31.0, 38.0]),
                                          "02": _stage_table([40.0, 40.0, 40.0], [45.0, 46.0, 47.0])},
                           "dense": {"01": _stage_table([60.0, 60.0, 60.0], [60.0, 61.0, 59.0])}}}
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(results))
    manifest = {"what": "Baseline against xModel-KD.", "machine": "a test machine", "date": "2026-12-04",
                "files": [str(path), str(tmp_path / "not_yet.json")]}  # a file not written yet is skipped
    (tmp_path / report.XMODEL_KD).write_text(json.dumps(manifest))
    text = report.section_xmodel_kd(tmp_path)
    # pooled over both val worlds and the seeds: baseline 36.0, kd 40.0; dense: 60.0 / 60.0
    assert "<!-- kd labels=0.01 baseline=36.0 xmodel_kd=40.0 seeds=3 -->" in text
    assert "<!-- kd labels=1 baseline=60.0 xmodel_kd=60.0 seeds=3 -->" in text
    se = statistics.stdev([3.0, -1.0, 4.0]) / 3 ** 0.5
    row = next(line for line in text.splitlines() if line.startswith("| 1 % of points labeled"))
    assert f"| **+2.0 ± {se:.1f}** (01) / **+6.0 ± 0.6** (02) | 2/3 / 3/3 |" in row
    assert "| parking +12.0 |" in row and row.endswith("| 0.40 / 0.60 |")
    assert "pixel mIoU 59.7 on held-out rendered images (step 2000)" in text and "63.0 (01)" in text
    assert text.count(f"`{path}`") == 1  # a file of two regimes is named once
    summary = report.section_xmodel_kd_summary(tmp_path)
    assert (f"| 1 % of points labeled | yes | 2400 | 3 | 36.0 | 40.0 | **+2.0 ± {se:.1f}** / **+6.0 ± 0.6** |"
            in summary)
    assert "| dense labels | yes | 2400 | 3 | 60.0 | 60.0 | **+0.0 ± 0.6** |" in summary
    assert "No measured rows yet" in report.section_xmodel_kd(tmp_path / "nowhere")
    # the same regime trained longer in a second file: both rows in the table, the longer one quoted
    longer = {"steps": 4800,
              "regimes": {"labels0.01": {"01": _stage_table([50.0, 50.0, 50.0], [51.0, 52.0, 53.0])}}}
    longer["regimes"]["labels0.01"]["01"]["kd"]["distillation"] = {"kd_labeled": "none"}  # as the run said
    (tmp_path / "longer.json").write_text(json.dumps(longer))
    manifest["files"].append(str(tmp_path / "longer.json"))
    (tmp_path / report.XMODEL_KD).write_text(json.dumps(manifest))
    text = report.section_xmodel_kd(tmp_path)
    assert sorted(line for line in text.splitlines() if line.startswith("<!-- kd labels=")) == [
        "<!-- kd labels=0.01 baseline=50.0 xmodel_kd=52.0 seeds=3 -->",
        "<!-- kd labels=1 baseline=60.0 xmodel_kd=60.0 seeds=3 -->"]
    assert sum(line.startswith("| 1 % of points labeled") for line in text.splitlines()) == 2
    regimes = [line.split(" |")[0] for line in text.splitlines() if line.startswith(("| 1 %", "| dense"))]
    assert regimes == ["| 1 % of points labeled"] * 2 + ["| dense labels"]  # a regime's rows together
    # which points the KL reached: a file without the runs' recipe predates kd_labeled (every point)
    assert "| 1 % of points labeled | yes | 2400 |" in text
    assert "| 1 % of points labeled | no | 4800 |" in text
    summary = report.section_xmodel_kd_summary(tmp_path)
    assert "| 1 % of points labeled | no | 4800 | 3 | 50.0 | 52.0 | **+2.0 ± 0.6** |" in summary
    assert "| 1 % of points labeled | yes | 2400 |" not in summary


def test_the_fleet_loop_table_comes_from_the_loops_results(tmp_path):
    from experiments.common import paired

    def world(full: float) -> dict:
        return {"full": full, "frustum": full, "iou": {"building": full, "road": 90.0}}

    per_seed = {str(s): {"drive": {"pair_files": 120, "views_per_file": 6},
                         "guard": {"ok": False, "refused": ["heldout_worse"],
                                   "agreement": {"deployed": 60.0, "candidate": 70.0 + s}},
                         "before_b": world(30.0 + s), "after_b": world(36.0 + s),
                         "before_a": world(50.0), "after_a": world(47.0 - s),
                         "teacher_b": 62.0, "redeploy_node_miou_b": None, "finetune_s_per_step": 1.0}
                for s in (0, 1)}
    res = {"seeds": [0, 1], "finetune_steps": 300, "mix_per_batch": 1,
           "b_lidar": {"beams": 32, "height": 2.0, "fov_up": 10.0, "fov_down": -30.0}, "per_seed": per_seed,
           "paired": {"b_full": paired([36.0, 37.0], [30.0, 31.0]),
                      "a_full": paired([47.0, 46.0], [50.0, 50.0])},
           "classes": {"b": {"building": paired([36.0, 37.0], [30.0, 31.0])}}}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(res))
    (tmp_path / report.FLEET_LOOP).write_text(json.dumps(
        {"what": "The loop.", "machine": "a test machine", "date": "2026-12-04", "plan": "plan.md",
         "file": str(path)}))
    text = report.section_fleet_loop(tmp_path)
    assert text.startswith("The loop. Measured on a test machine, 2026-12-04 (plan: `plan.md`)")
    row = "| 0 | 120 (6) | 30.0 -> 36.0 | 62.0 | 50.0 -> 47.0 | 60.0 -> 70.0 | refused: heldout_worse |"
    assert row in text
    assert "B held-out, full: after - before +6.0 ± 0.0 mIoU points over 2 seed(s), signs ++" in text
    assert "A val, full: after - before -3.5 ± 0.5 mIoU points over 2 seed(s), signs --" in text
    assert "B held-out, classes that change (IoU points, mean over seeds): building +6.0" in text
    assert "### Fleet loop" not in text  # the page has its own heading
    assert "Not measured yet" in report.section_fleet_loop(tmp_path / "nowhere")


def test_demo_figures_come_from_the_demo_report(tmp_path):
    demo_report = {"mode": "live", "checkpoint": "/somewhere/xkd_synth_small.pt",
                   "frames": {"scored": 40, "with_ground_truth": 40, "dropped": 0, "mismatched": 0},
                   "miou": {"full": 33.564, "frustum": 31.306},
                   "latency_ms": {"samples": 40, "p50": 93.4, "p90": 108.0, "p99": 116.6, "mean": 95.0,
                                  "max": 120.0},
                   "latency_definition": "labeled cloud received - scan published (rclpy, one clock)",
                   "node_diagnostics": {"device": "cpu"}, "demo": {"scans": 40, "replay_hz": 4.0}}
    (tmp_path / "report.json").write_text(json.dumps(demo_report))
    assert record_demo.main(["--report", str(tmp_path / "report.json"), "--out", str(tmp_path / "demo.json")
                             ]) == 0
    recorded = json.loads((tmp_path / "demo.json").read_text())
    assert recorded["machine"]["cores"] and recorded["checkpoint"] == "xkd_synth_small.pt"
    text = report.section_demo(tmp_path)
    assert "40/40 scans scored at 4 Hz replay, mIoU 33.56 (full scan) / 31.31 (camera frustum)" in text
    assert "p50 93 ms, p99 117 ms." in text and text.startswith("Measured by `make demo` on ")
    with pytest.raises(ValueError, match="no 'demo' section"):  # an xkd-bag-eval report is not a demo's
        record_demo.demo_record({k: v for k, v in demo_report.items() if k != "demo"}, "today")
    assert "Not recorded" in report.section_demo(tmp_path / "nowhere")
    assert record_demo.main(["--report", str(tmp_path / "report.json"), "--out", str(tmp_path / "demo.json"),
                             "--note", "two trainings ran beside it"]) == 0
    assert report.section_demo(tmp_path).endswith("p50 93 ms, p99 117 ms (two trainings ran beside it).")


def test_gpu_sentence_takes_the_fastest_shipped_row_and_the_10hz_node_row(tmp_path):
    _write_results(tmp_path)
    assert "No GPU measurement" in report.section_gpu(tmp_path)  # stages_cuda.json with skipped rows only
    stages = {k: _stats(1.0, 2.0) for k in report.STAGES}
    machine = {"gpu": "Test GPU", "spconv_triton": "1.0.0", "spconv_triton_autotune": "1"}
    rows = [{"points": 120000, "backend": "spconv_triton", "precision": p,
             "stages_ms": dict(stages, total=_stats(30.0, 40.0), inference=_stats(ms, ms + 5))}
            for p, ms in (("fp32", 15.8), ("fp16", 20.7))]
    (tmp_path / "stages_cuda.json").write_text(json.dumps({"date": "2026-11-30 01:31 UTC", "machine": machine,
                                                           "rows": rows}))
    node = json.loads((tmp_path / "node_cpu.json").read_text())
    (tmp_path / "node_cuda.json").write_text(json.dumps(node))
    text = report.section_gpu(tmp_path)
    assert text.startswith("On one Test GPU (2026-11-30 01:31 UTC; spconv-triton 1.0.0, "
                           "`XKD_SPCONV_TRITON_AUTOTUNE=1`)")
    assert "120k-point scan in 15.8 ms p50 (spconv_triton fp32)" in text
    assert "fed 128k-point scans at 10 Hz, published 111 of 300 (189 dropped) with end-to-end p99 432 ms" \
        in text  # the largest scans of the 10 Hz rows


def test_dds_sentence_compares_the_profiles_on_the_full_size_cloud(tmp_path):
    _write_results(tmp_path)
    data = json.loads((tmp_path / "transport.json").read_text())
    small = [dict(r, points=30000, received=r["sent"]) for r in data["rows"]]  # a size the sentence skips
    lost = dict(data["rows"][0], reliability="reliable", received=0)
    (tmp_path / "transport.json").write_text(json.dumps(dict(data, rows=small + data["rows"] + [lost])))
    text = report.section_dds(tmp_path)
    assert text.startswith("One hop of a 127k-point cloud")
    assert "best effort (the node's input default, and what LiDAR drivers publish with) 31 of 200 " \
           "arrived, 40.0 ms p50 a hop, reliable 0 of 200 arrived;" in text  # none arrived: no latency
    assert "`config/fastdds_large_clouds.xml`: best effort 200 of 200 arrived, 14.0 ms p50 a hop, " \
           "reliable not measured (Test CPU (2 cores), ?, rmw_fastrtps)." in text


def test_the_docs_figures_are_the_results_files():
    """`make test` fails when a figure in README.md, docs/results.md or docs/performance.md is not what
    its results file renders (fix: python -m bench.report)."""
    for doc, names in ((report.DOCS[0], ("demo", "gpu", "xmodel_kd_summary")),
                       (report.DOCS[1], ("xmodel_kd", "fleet_loop", "demo")),
                       (report.DOCS[2], ("targets", "stages"))):
        text = doc.read_text()
        assert all(f"<!-- figures:{n} -->" in text for n in names), doc
    assert report.main(["--check"]) == 0


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
