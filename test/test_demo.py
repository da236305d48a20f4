"""xkd-demo end to end on a tiny drive: synthetic data -> bag -> live replay through segment_node."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from node_fixtures import tiny_checkpoint
from rosbags.rosbag2 import Reader

from xkd_ros.demo import main


@pytest.fixture(autouse=True)
def _cleanup(no_leftover_children):
    """One torch thread, as the node's; and none of the processes the demo starts outlives it."""
    torch.set_num_threads(1)


@pytest.mark.ros
def test_demo_runs_end_to_end_and_prints_a_summary(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "demo"
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "stale.txt").write_text("from an earlier run")
    rc = main(["--out", str(out), "--scans", "3", "--checkpoint", str(ckpt), "--rate-scale", "0.5",
               "--timeout", "600", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert not (out / "eval" / "stale.txt").exists()  # a rerun replaces the previous demo
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["mode"] == "live" and report["demo"]["scans"] == 3
    assert report["frames"]["scored"] + report["frames"]["dropped"] == 3 and report["frames"]["scored"] >= 1
    for name in ("latency_hist.png", "per_class_iou.png", "bev.png", "node.log"):
        assert (out / "eval" / name).stat().st_size > 0
    # the node's labels drawn into the camera image of a scored scan: coloured points on the picture
    overlay = cv2.imread(str(out / "overlay.png"))
    camera = cv2.imread(str(sorted((out / "data" / "sequences" / "08" / "image_2").glob("*.png"))[1]))
    assert overlay.shape == camera.shape and 0.001 < (overlay != camera).any(axis=2).mean() < 0.9
    with Reader(out / "labeled") as reader:
        assert reader.message_count == report["frames"]["scored"]
    with Reader(out / "drive") as reader:
        assert {c.topic for c in reader.connections} >= {"/velodyne_points", "/xkd/ground_truth"}
    assert f"mIoU full scan {report['miou']['full']:.2f}" in printed
    assert f"p99 {report['latency_ms']['p99']:.1f} ms" in printed
    assert str((out / "eval").resolve()) in printed


def test_demo_refuses_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--scans", "1"]) == 2
    assert "--scans" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--timeout", "0"]) == 2
    assert main(["--out", str(tmp_path / "d"), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "d" / "data").exists()  # refused before generating anything
