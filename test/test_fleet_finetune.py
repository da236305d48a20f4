"""Fine-tuning on a pair log (config/train/fleet_finetune.yaml): the camera teaches, the log's predictions
never do; labeled scans mixed in; the teacher from the deployed checkpoint or another one; the deployed
model's architecture adopted; the settings that cannot work refused.

Data: a tiny synthetic world (`train_fixtures.write_synth`, KITTI rig, camera `image_2`), a tiny random
camera-capable checkpoint as the deployed model (`node_fixtures.tiny_checkpoint`), and a pair log written
by the real `PairLogWriter` with that model's predictions, as the node writes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fleet_fixtures import CONFIG, fleet_cfg, write_log
from model_fixtures import tiny_config
from node_fixtures import IMAGE_HW, tiny_checkpoint
from train_fixtures import write_synth

from xkd_core.classes import IGNORE_INDEX
from xkd_core.config import ConfigError, to_dict
from xkd_core.data.pairlog import PairLogWriter, list_pair_files, read_pair_file
from xkd_core.models.checkpoint import load_checkpoint, save_checkpoint
from xkd_core.models.xmodel_kd import XModelKD
from xkd_core.training.config import load_train_config, train_config_from_dict
from xkd_core.training.data import LogFrames, steps_per_epoch, train_loader
from xkd_core.training.distributed import DistInfo
from xkd_core.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fleet")
    write_synth(root / "world", "00", scans=4)
    write_synth(root / "world", "01", scans=2)
    deployed = tiny_checkpoint(root / "deployed.pt")
    return {"root": root, "world": root / "world", "deployed": deployed,
            "log": write_log(root / "log", root / "world", deployed)}


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------- the recipe


def test_the_logged_predictions_are_not_targets(setup: dict[str, Path], tmp_path: Path) -> None:
    """A log whose predictions (and confidences) are replaced by random ones trains exactly as the real
    one: only points, images and calibration teach. A log-only batch has no supervised loss; the KL does."""
    other = tmp_path / "other_log"
    rng = np.random.default_rng(0)
    with PairLogWriter(other) as writer:
        for path in list_pair_files(setup["log"]):
            s = read_pair_file(path)
            seg = s.confidence > 0
            conf = np.where(seg, rng.uniform(0.06, 1.0, len(seg)), 0.0).astype(np.float32)
            writer.submit(dataclasses.replace(s, pred_labels=rng.integers(1, 20, len(seg)).astype(np.uint16),
                                              confidence=conf))
    runs = {}
    for name, log in (("real", setup["log"]), ("random", other)):
        trainer = Trainer(fleet_cfg(setup, tmp_path / name, log=log), progress=False)
        result = trainer.fit()
        runs[name] = (weights(trainer.model), result.history)
    (w_real, hist), (w_random, _) = runs["real"], runs["random"]
    assert w_real.keys() == w_random.keys()
    assert all(torch.equal(w_real[k], w_random[k]) for k in w_real)
    assert all(h["loss/ce_3d"] == 0.0 and h["loss/lovasz_3d"] == 0.0 and h["loss/ce_fused"] == 0.0
               for h in hist)
    assert all(h["loss/kd"] > 0.0 for h in hist)
    start = load_checkpoint(setup["deployed"])["model"]
    assert any(not torch.equal(start[k], w_real[k]) for k in start if k.startswith("unet."))


def test_the_deployed_camera_branch_teaches_frozen(setup: dict[str, Path], tmp_path: Path) -> None:
    """Every module starts from the deployed checkpoint; its camera branch is the frozen teacher (weights
    and BatchNorm statistics unchanged after training), the 3D network learns."""
    trainer = Trainer(fleet_cfg(setup, tmp_path), progress=False)
    start = load_checkpoint(setup["deployed"])["model"]
    assert all(torch.equal(start[k], v) for k, v in weights(trainer.model).items())
    trainer.fit()
    end = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("image_net."))
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("point_head."))


def test_mixed_labeled_scans_in_every_batch(setup: dict[str, Path], tmp_path: Path) -> None:
    """data.mix: each batch holds batch_size logged scans (labels ignore) and per_batch labeled scans of
    the source data; an epoch is one pass over the log; the labeled scans train the supervised terms."""
    cfg = fleet_cfg(setup, tmp_path, f"data.mix.root={setup['world']}", "data.mix.sequences=['01']",
                    "data.mix.per_batch=1")
    trainer = Trainer(cfg, progress=False)
    samples = trainer.train_samples
    assert isinstance(samples.frames, LogFrames)
    assert len(samples.frames.log_indices) == 4 and len(samples.frames.mix_indices) == 2
    assert steps_per_epoch(samples, cfg, DistInfo()) == 2  # 4 logged scans, 2 per batch
    batch = next(iter(train_loader(samples, cfg, DistInfo(), epoch=0)))
    assert batch.num_samples == 3
    log_name = setup["log"].name
    assert [seq == log_name for seq, _ in batch.meta] == [True, True, False]
    for b, (seq, _) in enumerate(batch.meta):
        labels = batch.labels[batch.batch_idx == b]
        assert bool((labels == IGNORE_INDEX).all()) == (seq == log_name)
    history = trainer.fit().history
    assert all(h["loss/ce_3d"] > 0.0 and h["loss/kd"] > 0.0 for h in history)


def test_the_arbiter_counts_the_mixed_labeled_scans(setup: dict[str, Path], tmp_path: Path) -> None:
    """distillation.kd_arbiter: the table fills from the labeled scans of data.mix (and only from labeled
    points: the log's count nothing); a log without labeled scans warns that the KL applies everywhere."""
    cfg = fleet_cfg(setup, tmp_path / "mix", "model.distillation.kd_arbiter=true",
                    f"data.mix.root={setup['world']}", "data.mix.sequences=['01']", "data.mix.per_batch=1")
    trainer = Trainer(cfg, progress=False)
    history = trainer.fit().history
    assert all(h["loss/kd"] > 0.0 for h in history)
    assert trainer.model.kd_arbiter.counts.sum().item() > 0
    with pytest.warns(UserWarning, match="kd_arbiter counts on labeled paired points"):
        trainer = Trainer(fleet_cfg(setup, tmp_path / "log", "model.distillation.kd_arbiter=true"),
                          progress=False)
    trainer.fit()
    assert trainer.model.kd_arbiter.counts.sum().item() == 0


def test_explicit_teacher_checkpoint(setup: dict[str, Path], tmp_path: Path) -> None:
    """teacher_checkpoint: the camera branch of another checkpoint teaches; one that does not fit the
    deployed model's camera branch is refused, naming it."""
    torch.manual_seed(7)
    cfg = tiny_config()
    teacher = save_checkpoint(tmp_path / "teacher.pt", XModelKD(cfg), cfg, image_hw=IMAGE_HW)
    trainer = Trainer(fleet_cfg(setup, tmp_path / "run", f"teacher_checkpoint={teacher}"), progress=False)
    theirs = load_checkpoint(teacher)["model"]
    ours = weights(trainer.model)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items() if k.startswith("image_net."))
    assert not torch.equal(ours["image_net.classifier.1.weight"],
                           load_checkpoint(setup["deployed"])["model"]["image_net.classifier.1.weight"])
    other = tiny_config(fpn_dim=16)
    wrong = save_checkpoint(tmp_path / "wrong.pt", XModelKD(other), other, image_hw=IMAGE_HW)
    with pytest.raises(ValueError, match=r"wrong\.pt: its camera branch does not fit"):
        Trainer(fleet_cfg(setup, tmp_path / "run2", f"teacher_checkpoint={wrong}"), progress=False)


def test_a_lidar_only_deployed_model_needs_a_teacher(setup: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(use_camera=False)
    lidar_only = save_checkpoint(tmp_path / "lidar.pt", XModelKD(cfg), cfg)
    base = (f"init_checkpoint={lidar_only}", f"data.image_hw=[{IMAGE_HW[0]}, {IMAGE_HW[1]}]")
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        Trainer(fleet_cfg(setup, tmp_path / "a", *base), progress=False)
    trainer = Trainer(fleet_cfg(setup, tmp_path / "b", *base, f"teacher_checkpoint={setup['deployed']}"),
                      progress=False)
    assert trainer.fit().history[-1]["loss/kd"] > 0.0


def test_the_deployed_architecture_is_adopted_and_recorded(setup: dict[str, Path], tmp_path: Path) -> None:
    """The preset's own architecture (EfficientNet camera, 96 x 160 images) gives way to the deployed
    model's; the checkpoint and config.yaml hold what ran, so the run resumes from its own checkpoint."""
    cfg = fleet_cfg(setup, tmp_path, "ckpt_every=1")
    assert cfg.model.architecture.image_backbone == "efficientnet_lite0" and cfg.data.image_hw == (96, 160)
    trainer = Trainer(cfg, progress=False)
    deployed_arch = tiny_config().architecture
    assert trainer.cfg.model.architecture == deployed_arch and trainer.cfg.data.image_hw == IMAGE_HW
    trainer.fit(stop_at_step=1)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["image_hw"] == list(IMAGE_HW)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["model"]["architecture"]["image_backbone"] == "resnet18"
    resumed = Trainer(train_config_from_dict(ckpt["train_config"]), resume=tmp_path / "last.pt",
                      progress=False)
    assert resumed.step == 1 and resumed.fit().step == 2


def test_settings_that_cannot_work_are_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init_architecture.*set init_checkpoint"):
        load_train_config(CONFIG, "synth_surround", [f"data.root={setup['log']}"])
    with pytest.raises(ConfigError, match="labeled_scans"):
        fleet_cfg(setup, tmp_path, "data.labeled_scans=2")
    with pytest.raises(ConfigError, match="data.mix"):
        fleet_cfg(setup, tmp_path, "data.source=semantickitti", f"data.mix.root={setup['world']}")
    with pytest.raises(ConfigError, match="nothing to train on"):
        fleet_cfg(setup, tmp_path, "model.distillation.wkd=0")
    fleet_cfg(setup, tmp_path, "model.distillation.wkd=0", f"data.mix.root={setup['world']}")  # labels teach
    # the removed pseudo-label threshold: off (0.0, what every checkpoint so far holds) is dropped
    stored = to_dict(fleet_cfg(setup, tmp_path))
    stored["data"]["pairlog_min_confidence"] = 0.0
    assert train_config_from_dict(stored).data.source == "pairlog"
    stored["data"]["pairlog_min_confidence"] = 0.5
    with pytest.raises(ConfigError, match="pairlog_min_confidence = 0.5: removed"):
        train_config_from_dict(stored)
    with pytest.raises(ConfigError, match="no longer takes the node's own predictions"):
        fleet_cfg(setup, tmp_path, "data.pairlog_min_confidence=0.9")
    assert fleet_cfg(setup, tmp_path, "data.pairlog_min_confidence=0.0").data.source == "pairlog"
