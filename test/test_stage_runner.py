"""experiments/xmodel_kd_stages.py: the commands it builds are valid runs, it skips and resumes what
exists, and its report pairs methods with the baseline by seed (hand-made run folders, no training)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest
import yaml
from model_fixtures import tiny_config

from experiments import xmodel_kd_stages as stages
from xkd_core.models.checkpoint import save_checkpoint
from xkd_core.models.xmodel_kd import XModelKD
from xkd_core.training.config import load_train_config

REPO = Path(__file__).resolve().parents[1]


def args_for(tmp_path: Path, *argv: str) -> argparse.Namespace:
    paths = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    args = stages.build_parser().parse_args([*paths, *argv])
    args.stages = stages.STAGES
    return args


def config_of(cmd: list[str]):
    """The TrainConfig an xkd-train command line describes."""
    config = cmd[cmd.index("--config") + 1]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    return load_train_config(REPO / config, cmd[cmd.index("--preset") + 1], sets)


def test_regimes_and_methods_parse() -> None:
    assert stages.parse_regime("labels0.01") == ("labels0.01", ["data.label_fraction=0.01"])
    assert stages.parse_regime("scans3") == ("scans3", ["data.labeled_scans=3"])
    assert stages.parse_regime("dense") == ("dense", [])
    for bad in ("labels1.5", "labels0", "scans", "all"):
        with pytest.raises(argparse.ArgumentTypeError):
            stages.parse_regime(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown method"):
        stages.parse_method("kd_magic")
    with pytest.raises(argparse.ArgumentTypeError, match="val sequence"):
        stages.parse_sequence("00")  # the training world is never scored


def test_every_command_is_a_valid_run_with_its_stage_inputs(tmp_path: Path) -> None:
    args = args_for(tmp_path, "--regimes", "labels0.01", "scans3", "--seeds", "4", "--steps", "50",
                    "--methods", *stages.METHODS)
    teacher = stages.teacher_dir(args) / "last.pt"
    cfg = config_of(stages.teacher_cmd(args))
    assert cfg.stage == "camera" and cfg.data.train_sequences == ["10", "11"]
    assert cfg.data.val_sequences == ["12"]
    assert Path(cfg.data.root) == args.data / "teacher" and Path(cfg.out_dir) == teacher.parent
    pre = config_of(stages.pretrain_cmd(args, 4))
    assert pre.seed == 4 and pre.data.labeled_scans == 0 and Path(pre.init_checkpoint) == teacher
    assert pre.init_modules == ["image_net"] and pre.optim.steps == 600
    for regime, _ in args.regimes:
        for method, m in stages.METHODS.items():
            c = config_of(stages.train_cmd(args, regime, method, 4))
            assert c.seed == 4 and c.optim.steps == 50 and c.data.train_sequences == ["00"]
            assert c.data.val_sequences == [] and Path(c.out_dir) == stages.run_dir(args, regime, method, 4)
            assert (c.data.label_fraction, c.data.labeled_scans) == ((0.01, None) if regime == "labels0.01"
                                                                     else (1.0, 3))
            assert c.model.use_camera == (method != "baseline")
            if m.teacher:
                assert Path(c.init_checkpoint) == teacher and c.init_modules == ["image_net"]
                assert c.model.distillation.freeze_camera
            if m.pretrain:
                assert Path(c.init_checkpoint) == stages.pretrain_dir(args, 4) / "last.pt"
                assert c.init_modules is None
            if method in ("baseline", "kd_imagenet"):
                assert c.init_checkpoint is None
    assert config_of(stages.train_cmd(args, "scans3", "kd_front", 4)).data.cameras == ["CAM_FRONT"]
    assert not config_of(stages.train_cmd(args, "scans3", "kd_imagenet", 4)).model.distillation.freeze_camera
    assert config_of(stages.train_cmd(args, "scans3", "kd_nce", 4)).model.losses.wc == 1.0


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(stages, "run", lambda cmd, log, threads, append=False: calls.append(cmd))
    cfg = tiny_config(use_camera=False)
    model = XModelKD(cfg)
    rd = tmp_path / "run"
    stages.train(["xkd-train", "--config", "c.yaml"], rd, 100, 1)
    assert calls[-1] == ["xkd-train", "--config", "c.yaml"]  # nothing there: a fresh run
    save_checkpoint(rd / "last.pt", model, cfg, {"step": 40})
    stages.train(["xkd-train", "--config", "c.yaml"], rd, 100, 1)
    assert calls[-1][1:] == ["--resume", str(rd / "last.pt"), "--no-progress"]
    save_checkpoint(rd / "last.pt", model, cfg, {"step": 100})
    stages.train(["xkd-train", "--config", "c.yaml"], rd, 100, 1)
    assert len(calls) == 2
    # eval: only finished runs without metrics
    args = args_for(tmp_path, "--steps", "100", "--methods", "baseline", "--val-sequences", "03")
    done = stages.run_dir(args, "labels0.01", "baseline", 0)
    save_checkpoint(done / "last.pt", model, cfg, {"step": 100})
    stages.stage_eval(args)
    assert calls[-1][0].endswith("xkd-eval") and "--cameras" in calls[-1] and "03" in calls[-1]
    (stages.eval_dir(done, "03") / "metrics.json").parent.mkdir(parents=True)
    (stages.eval_dir(done, "03") / "metrics.json").write_text("{}")
    stages.stage_eval(args)
    assert len(calls) == 3
    # the finished teacher is scored on the same worlds' points, once
    save_checkpoint(stages.teacher_dir(args) / "last.pt", XModelKD(tiny_config()), tiny_config(),
                    {"step": args.teacher_steps}, image_hw=(32, 64))
    stages.stage_eval(args)
    assert "--camera-branch" in calls[-1] and str(stages.teacher_dir(args) / "last.pt") in calls[-1]
    assert len(calls) == 4


def test_synth_generates_only_what_the_stages_need(tmp_path: Path) -> None:
    args = args_for(tmp_path, "--methods", "baseline", "--val-sequences", "03")
    args.stages = ("synth", "train", "eval")
    jobs = {(p.name, s) for p, s, _, _ in stages.synth_jobs(args)}
    assert jobs == {("world", "00"), ("world", "03")}  # the baseline needs no teacher
    args = args_for(tmp_path, "--methods", "baseline", "kd")
    jobs = {(p.name, s, n, seed) for p, s, n, seed in stages.synth_jobs(args)}
    assert ("teacher", "10", 60, 1) in jobs and ("teacher", "12", 20, 1) in jobs
    assert {("world", "01", 60, 0), ("world", "02", 60, 0), ("world", "00", 120, 0)} <= jobs


def _metrics(miou: float, iou: dict[str, float]) -> dict:
    part = {"miou": miou, "per_class_iou": iou}
    return {"unit": "percent", "full": part, "frustum": dict(part, miou=miou + 5)}


def test_the_report_pairs_each_method_with_the_baseline_by_seed(tmp_path: Path) -> None:
    args = args_for(tmp_path, "--seeds", "0", "1", "2", "--methods", "baseline", "kd",
                    "--val-sequences", "01")
    base = {0: 30.0, 1: 32.0, 2: 34.0}
    kd = {0: 33.0, 1: 31.0, 2: 38.0}  # +3, -1, +4
    for method, values in (("baseline", base), ("kd", kd)):
        for seed, miou in values.items():
            rd = stages.run_dir(args, "labels0.01", method, seed)
            parking = 10.0 + (8.0 if method == "kd" else 0.0)
            iou = {"road": 80.0, "parking": parking, "car": miou}
            ev = stages.eval_dir(rd, "01")
            ev.mkdir(parents=True)
            (ev / "metrics.json").write_text(json.dumps(_metrics(miou, iou)))
            if seed == 0:  # the config a run writes: the report records the recipe it trained with
                camera = method == "kd"
                model = {"use_camera": camera, "distillation": {"wkd": 1.0, "kd_labeled": "none"}}
                (rd / "config.yaml").write_text(yaml.safe_dump({"model": model}))
            (rd / "log.jsonl").write_text("".join(json.dumps({"step": s, "perf/s_per_step": v}) + "\n"
                                                  for s, v in ((10, 9.0), (20, 0.5), (30, 0.7))))
    stages.teacher_dir(args).mkdir(parents=True)
    (stages.teacher_dir(args) / "log.jsonl").write_text(
        json.dumps({"step": 2000, "val/miou": 0.8, "val_iou/road": 0.9, "val_iou/parking": 0.7}) + "\n")
    ev = stages.eval_dir(stages.teacher_dir(args), "01")
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps(_metrics(60.0, {"road": 90.0})))
    res = stages.collect(args)
    assert res["teacher"]["points"]["01"]["miou"] == pytest.approx(65.0)  # the frustum row
    assert "On the points of val sequence 01 (its KL target): mIoU 65.0." in stages.markdown(res)
    assert res["teacher"]["pixel_miou"] == pytest.approx(80.0)
    assert res["teacher"]["pixel_iou"] == pytest.approx({"road": 90.0, "parking": 70.0})
    row = res["regimes"]["labels0.01"]["01"]["kd"]
    assert row["distillation"] == {"wkd": 1.0, "kd_labeled": "none"}
    assert res["regimes"]["labels0.01"]["01"]["baseline"]["distillation"] is None
    vs = row["vs_baseline"]["full"]
    assert vs["diffs"] == pytest.approx([3.0, -1.0, 4.0]) and vs["signs"] == "+-+"
    assert vs["mean"] == pytest.approx(2.0)
    assert vs["se"] == pytest.approx(statistics.stdev([3.0, -1.0, 4.0]) / 3 ** 0.5)
    assert row["s_per_step"] == pytest.approx(0.6)  # the start-up window left out
    assert row["s_per_step_fastest"] == pytest.approx(0.5)
    classes = row["vs_baseline"]["classes"]
    assert list(classes) == ["parking", "car"] and classes["parking"]["mean"] == pytest.approx(8.0)
    text = stages.markdown(res)
    assert "pixel mIoU 80.0" in text and "| kd | 3 | 34.0 (33.0, 31.0, 38.0) | +2.0 ± 1.5 | +-+ |" in text
    assert "parking +8.0, car +2.0" in text
    # a seed not evaluated yet is left out of both sides of the pairing
    (stages.eval_dir(stages.run_dir(args, "labels0.01", "kd", 2), "01") / "metrics.json").unlink()
    again = stages.collect(args)["regimes"]["labels0.01"]["01"]["kd"]["vs_baseline"]
    assert again["seeds"] == [0, 1] and again["full"]["diffs"] == pytest.approx([3.0, -1.0])


def test_old_metrics_in_fractions_read_as_percent(tmp_path: Path) -> None:
    old = {"full": {"miou": 0.3, "per_class_iou": {"road": 0.9, "car": None}}}
    assert stages.percent(old, "full") == (pytest.approx(30.0), {"road": pytest.approx(90.0), "car": 0.0})
