"""The fine-tune guard of `xkd-export` (xkd_core.evaluation.finetune_guard): a fine-tune whose agreement
with its camera teacher collapses on the log, or that is worse on labeled held-out scans, is refused
(not written, exit status 3) unless `--force`; a guard that cannot run stops the export.

The models have known behaviour: the deployed model is a tiny checkpoint whose camera branch and LiDAR
branch both output one class everywhere (a final layer of zeros and a bias), the candidate is a real
fine-tune of it on a real pair log, and its variants change only those final layers: a collapsed LiDAR
branch (another class), or a LiDAR branch that follows a camera teacher gone wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fleet_fixtures import fleet_cfg, write_log
from node_fixtures import tiny_checkpoint
from train_fixtures import write_synth

from xkd_core.classes import CLASS_NAMES, NUM_CLASSES
from xkd_core.evaluation.finetune_guard import AGREEMENT_COLLAPSE, HELDOUT_WORSE, GuardThresholds
from xkd_core.models.checkpoint import load_checkpoint
from xkd_core.models.export import REFUSED, main
from xkd_core.training.trainer import Trainer

ROAD, RARE = CLASS_NAMES.index("road"), CLASS_NAMES.index("motorcyclist")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def constant(src: Path, dst: Path, lidar: int | None = None, camera: int | None = None) -> Path:
    """A copy of checkpoint `src` whose LiDAR branch (point head) and / or camera branch (pixel classifier)
    output class `lidar` / `camera` everywhere; everything else, training state included, unchanged."""
    ckpt = torch.load(src, weights_only=True)
    state = ckpt["model"]
    for cls, prefix in ((lidar, "point_head.classifier.2"), (camera, "image_net.classifier.1")):
        if cls is None:
            continue
        state[f"{prefix}.weight"] = torch.zeros_like(state[f"{prefix}.weight"])
        bias = torch.full((NUM_CLASSES,), -10.0)
        bias[cls] = 10.0
        state[f"{prefix}.bias"] = bias
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guard")
    write_synth(root / "world", "00", scans=4)
    write_synth(root / "world", "01", scans=2)
    deployed = constant(tiny_checkpoint(root / "tiny.pt"), root / "deployed.pt", lidar=ROAD, camera=ROAD)
    setup = {"world": root / "world", "deployed": deployed,
             "log": write_log(root / "log", root / "world", deployed)}
    Trainer(fleet_cfg(setup, root / "finetune"), progress=False).fit()
    candidate = root / "finetune" / "last.pt"
    return {**setup, "candidate": candidate,
            "collapsed": constant(candidate, root / "collapsed.pt", lidar=RARE),
            "wrong_teacher": constant(candidate, root / "wrong_teacher.pt", lidar=RARE, camera=RARE)}


def export(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["--checkpoint", str(ckpt), "--out", str(out), "--guard-scans", "4", *extra])


def heldout(models: dict[str, Path]) -> list[str]:
    return ["--heldout", str(models["world"]), "--heldout-sequences", "01"]


def test_a_fine_tune_that_follows_its_teacher_is_exported(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    assert export(models["candidate"], out, *heldout(models)) == 0
    guard = load_checkpoint(out)["guard"]
    assert guard["ok"] and not guard["forced"] and guard["refused"] == []
    a = guard["agreement"]
    assert a["log"] == str(models["log"]) and a["scans"] == 4 and a["points"] > 0
    assert a["deployed"] == pytest.approx(100.0) and a["candidate"] == pytest.approx(100.0)
    h = guard["heldout"]
    assert h["scans"] == 2 and 0.0 < h["deployed_miou"] == pytest.approx(h["candidate_miou"])
    assert (tmp_path / "model.guard.json").is_file()  # the report beside the model


def test_a_collapsed_fine_tune_is_refused_unless_forced(models: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "model.pt", tmp_path / "guard.json"
    assert export(models["collapsed"], out, "--guard-report", str(report)) == REFUSED
    assert not out.exists()
    assert f"refused ({AGREEMENT_COLLAPSE})" in capsys.readouterr().err
    guard = json.loads(report.read_text())
    assert guard["refused"] == [AGREEMENT_COLLAPSE] and not guard["ok"]
    assert guard["agreement"]["candidate"] == 0.0 and guard["agreement"]["deployed"] == pytest.approx(100.0)
    # a lower bar lets it through: the threshold is the user's
    assert export(models["collapsed"], out, "--min-agreement-ratio", "0") == 0
    out.unlink()
    assert export(models["collapsed"], out, "--force") == 0
    assert "WARNING" in capsys.readouterr().out
    guard = load_checkpoint(out)["guard"]
    assert guard["forced"] and guard["refused"] == [AGREEMENT_COLLAPSE]


def test_a_fine_tune_worse_on_held_out_scans_is_refused(models: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """It follows its (wrong) teacher perfectly, so agreement rises (0 -> 100 %): only labeled held-out
    scans show that it got worse."""
    out = tmp_path / "model.pt"
    assert export(models["wrong_teacher"], out) == 0  # agreement alone cannot see it
    assert load_checkpoint(out)["guard"]["agreement"]["candidate"] == pytest.approx(100.0)
    out.unlink()
    report = tmp_path / "guard.json"
    assert export(models["wrong_teacher"], out, *heldout(models), "--guard-report", str(report)) == REFUSED
    assert not out.exists()
    guard = json.loads(report.read_text())
    assert guard["refused"] == [HELDOUT_WORSE] and guard["agreement"]["ok"]
    h = guard["heldout"]
    assert h["candidate_miou"] == 0.0 < h["deployed_miou"] and h["drop"] > h["max_drop"]
    # every class the deployed model got right at all is lost (the candidate scores 0 on each), most first
    lost = list(h["classes_lost"].values())
    assert lost and lost == sorted(lost, reverse=True) and min(lost) >= 1.0
    assert "classes that lost most on it" in capsys.readouterr().out
    assert export(models["wrong_teacher"], out, *heldout(models), "--force") == 0
    assert load_checkpoint(out)["guard"]["refused"] == [HELDOUT_WORSE]


def test_a_guard_that_cannot_run_stops_the_export(models: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = torch.load(models["candidate"], weights_only=True)
    ckpt["train_config"]["init_checkpoint"] = str(tmp_path / "moved_away.pt")
    torch.save(ckpt, tmp_path / "ft.pt")
    out = tmp_path / "model.pt"
    assert export(tmp_path / "ft.pt", out) == 2
    assert "moved_away.pt not found: give --deployed" in capsys.readouterr().err and not out.exists()
    assert export(tmp_path / "ft.pt", out, "--deployed", str(models["deployed"])) == 0
    out.unlink()
    assert export(tmp_path / "ft.pt", out, "--force") == 0
    guard = load_checkpoint(out)["guard"]
    assert guard["forced"] and "moved_away.pt" in guard["skipped"]


def test_an_ordinary_checkpoint_is_exported_without_a_guard(models: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.pt"
    assert export(models["deployed"], out) == 0  # not trained on a pair log, no check asked for
    assert "guard" not in load_checkpoint(out) and not (tmp_path / "model.guard.json").exists()
    out.unlink()
    assert export(models["deployed"], out, *heldout(models)) == 2  # a check asked for, nothing to compare
    assert "give --deployed" in capsys.readouterr().err


def test_thresholds_are_checked() -> None:
    for bad in ({"min_agreement_ratio": 1.5}, {"max_miou_drop": -1.0}, {"max_scans": 0}):
        with pytest.raises(ValueError):
            GuardThresholds(**bad)
