"""experiments/fleet_loop.py: the fleet loop end to end on tiny worlds (the real node over DDS logs the
drive, xkd-train distils from the log, xkd-export guards, xkd-eval scores, the node runs the new model),
resumed without redoing anything; and the loop's own arithmetic (B's sensor, the commands it runs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from node_fixtures import tiny_checkpoint

from experiments import fleet_loop as loop
from xkd_core.data.pairlog import list_pair_files, read_pair_file
from xkd_core.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_leftover_children(no_leftover_children):
    """Every test of this module starts child processes (the node, players): none may outlive it."""


def args_for(tmp_path: Path, *extra: str) -> argparse.Namespace:
    args = loop.build_parser().parse_args(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                                           *extra])
    args.stages = loop.STAGES
    return args


def test_world_b_is_another_lidar_under_the_same_cameras(tmp_path: Path) -> None:
    from xkd_core.synth.cli import build_parser, config_from_args

    args = args_for(tmp_path, "--b-height", "2.2")
    flags = loop.b_lidar_sets(args)
    cfg = config_from_args(build_parser().parse_args(["--out", "x", "--rig", "surround", *flags]))
    a = config_from_args(build_parser().parse_args(["--out", "x", "--rig", "surround"]))
    assert (cfg.lidar.beams, cfg.lidar.fov_up, cfg.lidar.fov_down, cfg.lidar.height) == (32, 10.0, -30.0, 2.2)
    # the cameras hang as high above the road as A's
    above_road = a.lidar.height - a.camera.surround.drop
    assert cfg.lidar.height - cfg.camera.surround.drop == pytest.approx(above_road)
    assert dataclasses.replace(cfg.camera.surround, drop=a.camera.surround.drop) == a.camera.surround
    assert dataclasses.replace(cfg.camera, surround=a.camera.surround) == a.camera


def test_the_fine_tune_command_starts_from_the_deployed_model_on_its_log(tmp_path: Path) -> None:
    args = args_for(tmp_path, "--deployed", "models/dep{seed}.pt", "--finetune-steps", "7",
                    "--finetune-set", "data.max_points=100")
    cmd = loop.finetune_cmd(args, 3)
    assert cmd[cmd.index("--config") + 1].endswith("fleet_finetune.yaml")
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert {f"data.root={tmp_path / 'runs' / 'seed3' / 'pairs'}", "init_checkpoint=models/dep3.pt", "seed=3",
            f"data.mix.root={tmp_path / 'data' / 'world'}", "data.mix.sequences=[00]",
            "optim.steps=7", "data.max_points=100"} <= set(sets)
    assert not any(a.startswith("data.mix.per_batch") for a in sets)  # the config's (4)
    three = loop.finetune_cmd(args_for(tmp_path, "--mix-per-batch", "3"), 0)
    assert "data.mix.per_batch=3" in three
    no_mix = loop.finetune_cmd(args_for(tmp_path, "--mix-per-batch", "0"), 0)
    assert not any(a.startswith("data.mix") for a in no_mix)
    # a given deployed model: no teacher world, no A training scans unless mixed
    roots = {(root.name, seq) for root, seq, *_ in loop.synth_jobs(args)}
    assert roots == {("world", "00"), ("world", "01"), ("world_b", "00"), ("world_b", "01")}
    trained = {(root.name, seq) for root, seq, *_ in loop.synth_jobs(args_for(tmp_path))}
    assert {("teacher", "10"), ("teacher", "11"), ("teacher", "12")} <= trained


TINY = ["--seeds", "0", "--a-train-scans", "3", "--a-val-scans", "2", "--b-drive-scans", "4",
        "--b-heldout-scans", "2", "--synth-set", "lidar.columns=256", "--synth-set", "camera.image_width=128",
        "--synth-set", "camera.image_height=72", "--finetune-steps", "20", "--ckpt-every", "10",
        "--finetune-set", "data.max_points=3000", "--rate-scale", "0.5", "--guard-scans", "4",
        # the guard's refusals have their own tests (test_finetune_guard.py); here it measures and records
        "--min-agreement-ratio", "0", "--max-miou-drop", "100"]


def run_loop(tmp_path: Path, deployed: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.fleet_loop", "--data", str(tmp_path / "data"),
           "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report.json"),
           "--deployed", str(deployed), *TINY]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.ros
@pytest.mark.slow
def test_the_loop_end_to_end_on_tiny_worlds(tmp_path: Path) -> None:
    deployed = tiny_checkpoint(tmp_path / "deployed.pt")
    proc = run_loop(tmp_path, deployed)
    runs = tmp_path / "runs" / "seed0"
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + "".join(
        p.read_text()[-2000:] for p in sorted(runs.glob("*.log")))
    res = json.loads((tmp_path / "report.json").read_text())
    row = res["per_seed"]["0"]

    # drive: the real node replayed B's bag and logged every camera of the scans it segmented
    drive = row["drive"]
    assert drive["scans_published"] == 4 and 1 <= drive["pair_files"] <= drive["scans_segmented"] <= 4
    files = list_pair_files(runs / "pairs")
    assert len(files) == drive["pair_files"] and drive["views_per_file"] == 6
    for path in files:
        sample = read_pair_file(path)
        assert sorted(v.name for v in sample.views) == sorted(
            ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK_RIGHT", "CAM_BACK"])
        assert all(v.image.shape == (72, 128, 3) for v in sample.views)
        assert sample.checkpoint == deployed.name and len(sample.pairs.point) > 0

    # distil: from the deployed model, on the log, with A's labeled scans mixed in
    ckpt = load_checkpoint(runs / "finetune" / "last.pt")
    assert ckpt["step"] == 20
    data = ckpt["train_config"]["data"]
    assert data["source"] == "pairlog" and Path(data["root"]) == runs / "pairs"
    assert Path(data["mix"]["root"]) == tmp_path / "data" / "world"
    assert data["mix"]["per_batch"] == 4 and row["finetune_mix_per_batch"] == 4  # the preset's
    assert ckpt["train_config"]["init_checkpoint"] == str(deployed)
    kl = ckpt["train_config"]["model"]["distillation"]
    assert kl["kd_arbiter"] and row["finetune_distillation"] == kl  # the config's default: A's labels count
    heading = next(line for line in proc.stdout.splitlines() if line.startswith("### Fleet loop"))
    assert "kd_arbiter" in heading and "4 labeled A scan(s) per batch" in heading
    history = [json.loads(line) for line in (runs / "finetune" / "log.jsonl").read_text().splitlines()]
    assert all(h["loss/kd"] > 0 for h in history if "loss/kd" in h)

    # export: the guard measured both checks and the exported model carries its report
    guard = row["guard"]
    assert guard["ok"] and guard["agreement"]["scans"] == min(4, len(files))
    assert 0 <= guard["agreement"]["deployed"] <= 100 and 0 <= guard["agreement"]["candidate"] <= 100
    assert guard["heldout"]["scans"] == 2 and row["exported"]
    assert load_checkpoint(runs / "model.pt")["guard"] == guard

    # evaluation: before / after on B's held-out scans and A's val world, paired by seed
    for key in ("before_b", "after_b", "before_a", "after_a"):
        assert 0.0 <= row[key]["full"] <= 100.0
    for world in ("b", "a"):
        d = res["paired"][f"{world}_full"]
        assert d["diffs"] == [pytest.approx(row[f"after_{world}"]["full"] - row[f"before_{world}"]["full"])]

    # redeploy: the node ran the new model on B's held-out bag
    node = json.loads((runs / "redeploy" / "report.json").read_text())
    assert node["mode"] == "live" and node["checkpoint"] == str(runs / "model.pt")
    if node["frames"]["scored"] == 2:  # the node had time for every scan: xkd-eval's figure, exactly
        assert row["redeploy_node_miou_b"] == pytest.approx(row["after_b"]["full"], abs=0.01)
    assert "| 0 | " in proc.stdout

    # resumed: every stage finds its work done and runs no tool again
    done = [runs / "finetune" / "last.pt", runs / "guard.json", runs / "model.pt", *files,
            *runs.glob("eval-*/metrics.json")]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    again = run_loop(tmp_path, deployed)
    assert again.returncode == 0, again.stderr[-4000:]
    assert not [line for line in again.stdout.splitlines() if line.startswith("+ ")]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((tmp_path / "report.json").read_text()) == res
    assert np.isfinite(res["per_seed"]["0"]["finetune_s_per_step"])
