"""experiments/kd_vs_baseline.py: the report maths behind docs/results.md on hand-made run folders."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest

from experiments import kd_vs_baseline as exp


def write_run(rd: Path, sub: str, full: float, frustum: float, parking: float) -> None:
    """A finished run folder: metrics of one evaluation and a training log with two windows."""
    (rd / sub).mkdir(parents=True, exist_ok=True)
    part = {"per_class_iou": {c: (parking if c == "parking" else 0.5) for c in exp.FOCUS}}
    (rd / sub / "metrics.json").write_text(json.dumps({"full": {"miou": full, **part},
                                                       "frustum": {"miou": frustum, **part}}))
    (rd / "log.jsonl").write_text(json.dumps({"perf/s_per_step": 9.0}) + "\n"  # start-up window: left out
                                  + json.dumps({"perf/s_per_step": 0.5}) + "\n")


def test_report_means_spread_and_gap(tmp_path: Path) -> None:
    args = argparse.Namespace(
        worlds=[("w", 0.05, 1.0)], label_fractions=[1.0, 0.1], seeds=[0, 1, 2], steps=10, scans=5,
        runs=tmp_path, data=tmp_path, variants=[], val_sequence="01")
    assert [k for k, *_ in exp.settings(args)] == ["w", "w-labels0.1"]
    base_full, kd_full, kd_fused = [0.30, 0.36, 0.33], [0.33, 0.40, 0.35], [0.60, 0.62, 0.64]
    for key, _, _, _ in exp.settings(args):
        for s in args.seeds:
            write_run(exp.run_dir(args, key, "baseline_lidar", s), "eval3d", base_full[s], 0.2, 0.0)
            write_run(exp.run_dir(args, key, "xmodel_kd", s), "eval3d", kd_full[s], 0.25, 0.1)
            write_run(exp.run_dir(args, key, "xmodel_kd", s), "evalfused", kd_full[s], kd_fused[s], 0.8)
    res = exp.collect(args)
    rows = res["worlds"]["w-labels0.1"]["methods"]["xmodel_kd"]["rows"]
    assert set(rows) == {"3d_full", "3d_frustum", "fused_frustum"}  # no fused row for the full scan
    assert rows["3d_full"]["miou"]["mean"] == pytest.approx(100 * statistics.fmean(kd_full))
    assert rows["3d_full"]["miou"]["sd"] == pytest.approx(100 * statistics.stdev(kd_full))
    assert rows["fused_frustum"]["iou"]["parking"]["mean"] == pytest.approx(80.0)
    assert res["worlds"]["w"]["methods"]["baseline_lidar"]["s_per_step"] == pytest.approx(0.5)
    assert res["worlds"]["w-labels0.1"]["label_fraction"] == 0.1

    md = exp.markdown(res)
    assert md.splitlines()[0] == "<!-- miou baseline=33.0 xmodel_kd=36.0 seeds=3 -->"
    se = ((100 * statistics.stdev(kd_full)) ** 2 / 3 + (100 * statistics.stdev(base_full)) ** 2 / 3) ** 0.5
    assert f"| +3.0 ± {se:.1f} |" in md  # 3D full scan against the baseline's full scan
    assert "| +42.0 ± " in md  # fused frustum (62.0) against the baseline's 3D frustum (20.0)
    diffs = [100 * (k - b) for k, b in zip(kd_full, base_full)]  # paired by seed: 3, 4, 2
    assert f"| +3.0 ± {se:.1f} | +3.0 ± {statistics.stdev(diffs) / 3 ** 0.5:.1f} |" in md


def test_another_val_sequence_reads_its_own_folders(tmp_path: Path) -> None:
    args = argparse.Namespace(worlds=[("w", 0.05, 1.0)], label_fractions=[0.02], seeds=[0, 1], steps=10,
                              scans=5, runs=tmp_path, data=tmp_path, variants=[], val_sequence="02")
    assert exp.eval_dirs("xmodel_kd", "02") == {"eval3d-seq02": False, "evalfused-seq02": True}
    assert exp.eval_dirs("baseline_lidar", "02") == {"eval3d-seq02": False}
    assert exp.parse_val_sequence("02") == "02"
    for bad in ("00", "2", "ab"):  # 00 is the training sequence
        with pytest.raises(argparse.ArgumentTypeError, match="val sequence"):
            exp.parse_val_sequence(bad)
    for s in args.seeds:  # the first val sequence's figures sit beside, and must not be read
        for m, full in (("baseline_lidar", 0.2), ("xmodel_kd", 0.3)):
            write_run(exp.run_dir(args, "w-labels0.02", m, s), "eval3d", 0.9, 0.9, 0.0)
            write_run(exp.run_dir(args, "w-labels0.02", m, s), "eval3d-seq02", full, 0.1, 0.0)
        write_run(exp.run_dir(args, "w-labels0.02", "xmodel_kd", s), "evalfused-seq02", 0.3, 0.5, 0.0)
    res = exp.collect(args)
    assert res["val_sequence"] == "02"
    rows = res["worlds"]["w-labels0.02"]["methods"]["xmodel_kd"]["rows"]
    assert rows["3d_full"]["miou"]["mean"] == pytest.approx(30.0)
    assert rows["fused_frustum"]["miou"]["mean"] == pytest.approx(50.0)
    assert res["worlds"]["w-labels0.02"]["methods"]["baseline_lidar"]["rows"]["3d_full"]["miou"]["mean"] \
        == pytest.approx(20.0)


def test_methods_filter_keeps_the_baseline(tmp_path: Path) -> None:
    args = argparse.Namespace(worlds=[("w", 0.0, 1.0)], label_fractions=[1.0], seeds=[0], steps=10, scans=5,
                              runs=tmp_path, data=tmp_path,
                              variants=[exp.parse_variant("kdall:model.losses.wc=0")],
                              methods=["baseline_lidar", "xmodel_kd+kdall"])
    assert exp.methods(args) == ["baseline_lidar", "xmodel_kd+kdall"]
    args.methods = ["xmodel_kd+kdall"]
    with pytest.raises(SystemExit, match="baseline_lidar"):
        exp.methods(args)
    args.methods = ["baseline_lidar", "xmodel_kd+nope"]
    with pytest.raises(SystemExit, match="unknown"):
        exp.methods(args)


def test_variant_is_its_own_method_with_its_overrides(tmp_path: Path) -> None:
    variant = exp.parse_variant("kdall:model.distillation.kd_average=all")
    args = argparse.Namespace(worlds=[("w", 0.0, 1.0)], label_fractions=[1.0], seeds=[0], steps=10, scans=5,
                              runs=tmp_path, data=tmp_path, variants=[variant])
    assert exp.methods(args) == ["baseline_lidar", "xmodel_kd", "xmodel_kd+kdall"]
    cmd = exp.train_cmd(args, "w", "xmodel_kd+kdall", 0)
    assert "config/train/xmodel_kd.yaml" in cmd
    assert cmd[cmd.index("model.distillation.kd_average=all") - 1] == "--set"
    assert "model.distillation.kd_average=all" not in exp.train_cmd(args, "w", "xmodel_kd", 0)
    assert f"out_dir={tmp_path / 'w' / 'xmodel_kd+kdall' / 'seed0'}" in cmd
    assert exp.eval_dirs("xmodel_kd+kdall") == {"eval3d": False, "evalfused": True}
    with pytest.raises(argparse.ArgumentTypeError):
        exp.parse_variant("kdall:model.distillation.kd_average")


def test_a_baseline_variant_trains_the_baseline_config(tmp_path: Path) -> None:
    variant = exp.parse_variant("baseline_lidar+oracle:data.label_frustum=true")
    assert variant == ("baseline_lidar+oracle", ["data.label_frustum=true"])
    args = argparse.Namespace(worlds=[("w", 0.0, 1.0)], label_fractions=[0.02], seeds=[0], steps=10, scans=5,
                              runs=tmp_path, data=tmp_path, variants=[variant])
    assert exp.methods(args) == ["baseline_lidar", "xmodel_kd", "baseline_lidar+oracle"]
    cmd = exp.train_cmd(args, "w-labels0.02", "baseline_lidar+oracle", 0)
    assert "config/train/baseline_lidar.yaml" in cmd and "data.label_frustum=true" in cmd
    assert "data.label_frustum=true" not in exp.train_cmd(args, "w-labels0.02", "baseline_lidar", 0)
    assert exp.eval_dirs("baseline_lidar+oracle") == {"eval3d": False}  # no camera branch to fuse
    with pytest.raises(argparse.ArgumentTypeError, match="METHOD"):
        exp.parse_variant("teacher+x:model.distillation.wkd=1")
    per_seed = exp.parse_variant("warm:init_checkpoint=runs/kd/seed{seed}/last.pt,"
                                 "model.architecture.scales=[[0, 0], [1, 1]]")
    assert per_seed[1] == ["init_checkpoint=runs/kd/seed{seed}/last.pt",
                           "model.architecture.scales=[[0, 0], [1, 1]]"]
    args.variants = [per_seed]
    assert "init_checkpoint=runs/kd/seed3/last.pt" in exp.train_cmd(args, "w-labels0.02", "xmodel_kd+warm", 3)


def test_world_names_gap_and_lens_and_synth_passes_them_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert exp.parse_world("gap005:0.05") == ("gap005", 0.05, 1.0)
    assert exp.parse_world("wide:0.05:0.5") == ("wide", 0.05, 0.5)
    for bad in ("gap005", ":0.05", "w:x", "w:0.05:y", "w:0.05:0.5:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            exp.parse_world(bad)
    calls: list[list[str]] = []
    monkeypatch.setattr(exp, "run", lambda cmd, log, threads: calls.append(cmd))
    args = argparse.Namespace(worlds=[("wide", 0.05, 0.5)], scans=5, data=tmp_path, val_sequence="02",
                              threads=1)
    exp.stage_synth(args)
    assert [c[c.index("--sequences") + 1:c.index("--scans")] for c in calls] == [["00", "01"], ["02"]]
    for c in calls:
        assert c[c.index("--focal-scale") + 1] == "0.5"
        assert c[c.index("--appearance-intensity-gap") + 1] == "0.05"
        assert c[c.index("--out") + 1] == str(tmp_path / "wide")


def test_train_starts_the_camera_runs_first_and_skips_finished_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(exp, "run", lambda cmd, log, threads: calls.append(cmd))
    args = argparse.Namespace(worlds=[("w", 0.0, 1.0)], label_fractions=[1.0], seeds=[0, 1], steps=10,
                              scans=5, runs=tmp_path, data=tmp_path, jobs=1, threads=1, methods=None,
                              variants=[exp.parse_variant("baseline_lidar+oracle:data.label_frustum=true")])
    (tmp_path / "w" / "xmodel_kd" / "seed1").mkdir(parents=True)
    (tmp_path / "w" / "xmodel_kd" / "seed1" / "last.pt").write_bytes(b"")
    exp.stage_train(args)
    order = [(Path(c[c.index("--config") + 1]).stem, next(a for a in c if a.startswith("seed=")))
             for c in calls]
    assert order == [("xmodel_kd", "seed=0"), ("baseline_lidar", "seed=0"), ("baseline_lidar", "seed=0"),
                     ("baseline_lidar", "seed=1"), ("baseline_lidar", "seed=1")]  # the LiDAR-only variant too


def test_an_evaluation_of_another_world_is_redone_and_never_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A baseline folder copied from a world with the same scans but another lens keeps its old
    metrics, whose frustum rows are the other camera's: eval scores it again, report refuses it."""
    calls: list[list[str]] = []
    monkeypatch.setattr(exp, "run", lambda cmd, log, threads: calls.append(cmd))
    args = argparse.Namespace(worlds=[("wide", 0.1, 0.5)], label_fractions=[1.0], seeds=[0], steps=10,
                              scans=5, runs=tmp_path / "runs", data=tmp_path / "data", jobs=1, threads=1,
                              methods=["baseline_lidar"], variants=[], val_sequence="01")
    rd = exp.run_dir(args, "wide", "baseline_lidar", 0)
    write_run(rd, "eval3d", 0.3, 0.2, 0.0)
    (rd / "last.pt").write_bytes(b"")
    metrics = rd / "eval3d" / "metrics.json"
    stale = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**stale, "data": str(tmp_path / "data" / "kitti_lens")}))
    with pytest.raises(SystemExit, match="another world"):
        exp.collect(args)
    exp.stage_eval(args)
    assert len(calls) == 1 and calls[0][calls[0].index("--data") + 1] == str(tmp_path / "data" / "wide")

    metrics.write_text(json.dumps({**stale, "data": str(tmp_path / "data" / "wide")}))  # scored again
    calls.clear()
    exp.stage_eval(args)
    assert calls == []
    rows = exp.collect(args)["worlds"]["wide"]["methods"]["baseline_lidar"]["rows"]
    assert rows["3d_full"]["miou"]["mean"] == pytest.approx(30.0)
