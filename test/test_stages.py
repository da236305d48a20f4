"""xModel-KD in stages on a tiny surround world: the camera teacher on dense image labels, the frozen
teacher's student, the few-labeled-scans regime, contrastive pretraining without labels, and xkd-eval
over every view.

The world is small (32 x 512 LiDAR, six 128 x 72 cameras, two scans per sequence) and every run takes
two or three steps, so the file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import write_surround

from xkd_core.classes import IGNORE_INDEX, to_learning
from xkd_core.config import ConfigError, from_dict
from xkd_core.data.dataset import ViewImageDataset
from xkd_core.data.semantickitti import DataFormatError, read_class_image, sequence_dir
from xkd_core.data.views import read_views
from xkd_core.models.checkpoint import load_checkpoint
from xkd_core.synth import SynthConfig, generate
from xkd_core.training.config import load_train_config
from xkd_core.training.data import (
    LabeledUnlabeledBatchSampler,
    SampleDataset,
    build_frame_datasets,
    labeled_scan_indices,
    learns_from_unlabeled,
)
from xkd_core.training.distributed import DistInfo
from xkd_core.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "train"
HW = (36, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_surround(tmp_path_factory.mktemp("surround"), ["00", "01"], 2, seed=5, beams=32, columns=512,
                          image_wh=(128, 72))


def stage_cfg(config: str, root: Path, out: Path, *overrides: str):
    """A shipped `synth_surround` preset, shrunk to the tiny world."""
    base = [f"data.root={root}", "data.train_sequences=[0]", "data.val_sequences=[]",
            f"data.image_hw={list(HW)}", "data.max_points=1500", "data.num_workers=0", "data.batch_size=2",
            "model.losses.max_pairs=256", "optim.steps=2", "optim.warmup_steps=1", f"out_dir={out}",
            "log_every=1", "val_every=0", "ckpt_every=0"]
    return load_train_config(CONFIGS / config, "synth_surround", [*base, *overrides])


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def teacher(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A camera teacher run: (its folder, weights before, weights after)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = stage_cfg("camera_teacher.yaml", root, out, "data.val_sequences=[1]", "data.batch_size=4",
                    "optim.steps=3")
    torch.manual_seed(0)
    trainer = Trainer(cfg, progress=False)
    before = weights(trainer.model)
    trainer.fit()
    return out, before, weights(trainer.model)


# ------------------------------------------------------------------------------------- the teacher


def test_view_images_come_with_their_class_ids_as_learning_ids(root: Path, tmp_path: Path) -> None:
    images = ViewImageDataset(root, ["00"], "all")
    assert len(images) == 2 * 6
    item = images[7]
    view = next(v for v in read_views(sequence_dir(root, 0) / "views.yaml") if v.name == item.view)
    raw = read_class_image(view.class_path(sequence_dir(root, 0), item.frame_id))
    assert item.image.shape == (72, 128, 3) and np.array_equal(item.classes, to_learning(raw))
    assert {0, 9} <= set(np.unique(item.classes).tolist())  # sky (ignore) and road in view
    front = ViewImageDataset(root, ["00", "01"], ["CAM_FRONT"])
    assert len(front) == 4 and {front[i].view for i in range(4)} == {"CAM_FRONT"}
    kitti = tmp_path / "kitti"
    generate(kitti, ["00"], 1, seed=5, config=from_dict(SynthConfig, {
        "lidar": {"beams": 16, "columns": 360}, "camera": {"image_width": 128, "image_height": 40}}),
        progress=False)
    with pytest.raises(DataFormatError, match=r"have no class images"):
        ViewImageDataset(kitti, ["00"], [2])


def test_the_camera_teacher_trains_its_branch_alone_and_reports_pixel_miou(teacher) -> None:
    out, before, after = teacher
    moved = changed(before, after)
    assert moved and all(k.startswith("image_net.") for k in moved)
    assert any(k.startswith("image_net.encoder.") for k in moved)  # the ImageNet encoder fine-tunes too
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss/ce_2d" in r]
    assert len(train) == 3 and all(r["loss/total"] == r["loss/ce_2d"] > 0 for r in train)
    assert train[0]["perf/scans_per_s"] > 0
    val = [r for r in records if "val/miou" in r]
    assert len(val) == 1 and 0.0 < val[0]["val/miou"] <= 1.0 and "val_iou/road" in val[0]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["train_config"]["stage"] == "camera" and ckpt["config"]["image_hw"] == list(HW)


def test_the_student_takes_the_teacher_frozen_and_the_baselines_3d_init(root: Path, teacher,
                                                                         tmp_path: Path) -> None:
    out, _, taught = teacher
    # half the points labeled: the preset's KL reaches only the other half (kd_labeled: none)
    student_cfg = stage_cfg("xmodel_kd.yaml", root, tmp_path / "kd", f"init_checkpoint={out / 'last.pt'}",
                            "data.label_fraction=0.5")
    assert student_cfg.init_modules == ["image_net"] and student_cfg.model.distillation.freeze_camera
    student = Trainer(student_cfg, progress=False)
    baseline = Trainer(stage_cfg("baseline_lidar.yaml", root, tmp_path / "base"), progress=False)
    start = weights(student.model)
    assert all(torch.equal(start[k], v) for k, v in taught.items() if k.startswith("image_net."))
    base = weights(baseline.model)
    assert all(torch.equal(start[k], base[k]) for k in base)  # same seed: the same 3D network and heads
    student.fit()
    end = weights(student.model)
    moved = changed(start, end)
    assert not any(k.startswith("image_net.") for k in moved)  # running statistics included
    assert any(k.startswith("unet.") for k in moved) and any(k.startswith("fusion_head.") for k in moved)
    records = [json.loads(line) for line in (tmp_path / "kd" / "log.jsonl").read_text().splitlines()]
    assert all("loss/ce_2d" not in r and r["loss/kd"] > 0 for r in records)
    # a checkpoint without a camera branch cannot be the teacher
    lidar = tmp_path / "base" / "last.pt"
    baseline.fit()
    with pytest.raises(ValueError, match=r"lacks .* weights of image_net"):
        Trainer(stage_cfg("xmodel_kd.yaml", root, tmp_path / "bad", f"init_checkpoint={lidar}"),
                progress=False)


def test_stage_and_teacher_settings_are_checked(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stage: camera trains the camera branch"):
        stage_cfg("camera_teacher.yaml", root, tmp_path, "model.use_camera=false")
    with pytest.raises(ConfigError, match="frozen camera branch teaches what it was trained on"):
        stage_cfg("xmodel_kd.yaml", root, tmp_path, "init_checkpoint=null", "init_modules=null")
    with pytest.raises(ConfigError, match="init_modules: unknown"):
        stage_cfg("xmodel_kd.yaml", root, tmp_path, "init_checkpoint=x.pt", "init_modules=[camera]")
    with pytest.raises(ConfigError, match="data.labeled_scans must be >= 0"):
        stage_cfg("xmodel_kd.yaml", root, tmp_path, "data.labeled_scans=-1")
    with pytest.raises(ValueError, match="data.train_sequences and data.val_sequences"):
        Trainer(stage_cfg("camera_teacher.yaml", root, tmp_path, "data.val_sequences=null"), progress=False)


# ------------------------------------------------------------------- few labeled scans, no labels


def test_the_labeled_scans_are_evenly_spaced_and_fixed() -> None:
    assert labeled_scan_indices(10, 3).tolist() == [0, 4, 9]
    assert labeled_scan_indices(120, 4).tolist() == [0, 40, 79, 119]
    assert labeled_scan_indices(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert labeled_scan_indices(5, 0).tolist() == []
    for n, k in ((7, 7), (50, 13), (3, 2)):
        got = labeled_scan_indices(n, k)
        assert len(set(got.tolist())) == k and got[0] == 0 and got[-1] == n - 1


def test_each_batch_adds_unlabeled_scans_from_a_stream_that_resumes_exactly() -> None:
    labeled, unlabeled = np.array([0, 5, 9]), np.array([1, 2, 3, 4, 6, 7, 8])
    info = DistInfo(0, 0, 1)

    def epoch(e: int, start: int = 0, extra: int = 2) -> list[list[tuple[int, int]]]:
        return list(LabeledUnlabeledBatchSampler(labeled, unlabeled, 2, extra, info, 11, e, start))

    e0, e1 = epoch(0), epoch(1)
    assert len(e0) == 2  # ceil(3 labeled / 2)
    for batch in e0 + e1:
        lab = [i for _, i in batch if i in labeled]
        unl = [i for _, i in batch if i in unlabeled]
        assert len(unl) == 2 and len(lab) == len(batch) - 2 >= 1
    assert sorted(i for b in e0 for _, i in b[:-2]) == [0, 5, 9]  # one pass over the labeled scans
    stream = [i for b in e0 + e1 for _, i in b[-2:]]
    assert sorted(stream[:7]) == unlabeled.tolist()  # a pass over the unlabeled ones, then the next
    assert epoch(0, start=1) == e0[1:] and epoch(1, start=1) == e1[1:]  # exact resume mid-epoch
    alone = epoch(0, extra=0)
    assert [b for b in alone] == [b[:-2] for b in e0]  # the baseline: the same labeled batches alone
    ranks = [list(LabeledUnlabeledBatchSampler(labeled, unlabeled, 1, 1, DistInfo(r, r, 2), 11, 0))
             for r in (0, 1)]
    assert ranks[0][0][-1] != ranks[1][0][-1]  # ranks draw different unlabeled scans


def test_unlabeled_scans_lose_every_label_and_batches_mix_them_in(root: Path, tmp_path: Path) -> None:
    from xkd_core.training.data import train_loader

    cfg = stage_cfg("xmodel_kd.yaml", root, tmp_path, "init_checkpoint=x.pt", "data.train_sequences=[0, 1]",
                    "data.labeled_scans=1", "data.batch_size=1", "data.unlabeled_batch_size=2")
    frames, _ = build_frame_datasets(cfg)
    samples = SampleDataset(frames, cfg, train=True)
    assert samples.labeled.tolist() == [0] and samples.unlabeled.tolist() == [1, 2, 3]
    assert (samples[(0, 2)].labels == IGNORE_INDEX).all()
    assert (samples[(0, 0)].labels != IGNORE_INDEX).any()
    batches = list(train_loader(samples, cfg, DistInfo(0, 0, 1), 0))
    assert len(batches) == 1 and batches[0].num_samples == 3
    assert [m[1] for m in batches[0].meta][0] == "000000"
    base = load_train_config(CONFIGS / "baseline_lidar.yaml", "synth_surround",
                             [f"data.root={root}", "data.train_sequences=[0, 1]", "data.labeled_scans=1",
                              "data.val_sequences=[]", "data.num_workers=0", f"out_dir={tmp_path}",
                              "data.batch_size=1"])
    assert learns_from_unlabeled(cfg) and not learns_from_unlabeled(base)
    frames_b, _ = build_frame_datasets(base)
    only = list(train_loader(SampleDataset(frames_b, base, train=True), base, DistInfo(0, 0, 1), 0))
    assert [b.num_samples for b in only] == [1]
    with pytest.raises(ValueError, match="nothing to train on"):
        SampleDataset(frames_b, load_train_config(CONFIGS / "baseline_lidar.yaml", "synth_surround", [
            f"data.root={root}", "data.labeled_scans=0", f"out_dir={tmp_path}"]), train=True)


def test_contrastive_pretraining_learns_without_a_single_label(root: Path, teacher, tmp_path: Path) -> None:
    out, _, taught = teacher
    cfg = stage_cfg("contrastive_pretrain.yaml", root, tmp_path / "pre", f"init_checkpoint={out / 'last.pt'}",
                    "data.train_sequences=[0, 1]")
    assert cfg.data.labeled_scans == 0 and cfg.model.losses.wc > 0 and cfg.model.distillation.wkd == 0
    trainer = Trainer(cfg, progress=False)
    start = weights(trainer.model)
    result = trainer.fit()
    for rec in result.history:
        assert rec["loss/ce_3d"] == rec["loss/lovasz_3d"] == rec["loss/ce_fused"] == 0.0
        assert rec["loss/contrastive"] > 0 and np.isfinite(rec["loss/total"])
    moved = changed(start, weights(trainer.model))
    assert any(k.startswith("unet.") for k in moved) and any(k.startswith("proj_3d.") for k in moved)
    assert not any(k.startswith("image_net.") for k in moved)
    # the fine-tuning run starts from all of it
    tune = stage_cfg("xmodel_kd.yaml", root, tmp_path / "tune",
                     f"init_checkpoint={tmp_path / 'pre' / 'last.pt'}", "init_modules=null")
    pre = weights(trainer.model)
    assert all(torch.equal(v, pre[k]) for k, v in weights(Trainer(tune, progress=False).model).items())


def test_xkd_eval_scores_every_view_of_a_surround_world(root: Path, teacher, tmp_path: Path) -> None:
    from xkd_core.evaluation.cli import main

    out, _, _ = teacher
    Trainer(stage_cfg("xmodel_kd.yaml", root, tmp_path / "kd", f"init_checkpoint={out / 'last.pt'}",
                      "optim.steps=1"), progress=False).fit()
    ev = tmp_path / "eval"
    # no --cameras: a world whose sequences list their rig in views.yaml is scored with every view
    assert main(["--checkpoint", str(tmp_path / "kd" / "last.pt"), "--data", str(root), "--sequences", "01",
                 "--out", str(ev), "--num-workers", "0", "--no-progress"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["unit"] == "percent" and m["cameras"] == ["all"]
    assert m["num_frustum_points"] > 0.9 * m["num_points"]  # six cameras see nearly the whole scan
    front = tmp_path / "front"
    assert main(["--checkpoint", str(tmp_path / "kd" / "last.pt"), "--data", str(root), "--sequences", "01",
                 "--cameras", "CAM_FRONT", "--out", str(front), "--num-workers", "0", "--no-progress"]) == 0
    assert json.loads((front / "metrics.json").read_text())["num_frustum_points"] < 0.3 * m["num_points"]
    assert main(["--checkpoint", str(tmp_path / "kd" / "last.pt"), "--data", str(root), "--sequences", "01",
                 "--cameras", "all", "2", "--out", str(front), "--num-workers", "0", "--no-progress"]) == 2


def test_the_camera_branch_is_scored_on_the_points_it_teaches(root: Path, teacher, tmp_path: Path) -> None:
    """A camera branch that outputs the rendered class image scores near-perfect IoU on the points its
    views see (the pairs land on their class); xkd-eval --camera-branch scores a real teacher so."""
    from xkd_core.data.dataset import SemanticKittiDataset
    from xkd_core.evaluation.cli import main
    from xkd_core.evaluation.evaluate import camera_point_labels
    from xkd_core.models.checkpoint import model_from_checkpoint

    out, _, _ = teacher
    model, cfg, _ = model_from_checkpoint(out / "last.pt")
    frame = SemanticKittiDataset(root, sequences=["01"], cameras="all")[0]
    seq_dir = sequence_dir(root, 1)
    views = read_views(seq_dir / "views.yaml")
    truth = np.stack([to_learning(read_class_image(v.class_path(seq_dir, frame.frame_id))) for v in views])
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(truth.astype(np.int64)), 20).permute(0, 3, 1, 2)

    class RenderedClasses(torch.nn.Module):  # the perfect camera branch of this frame, at native size
        def forward(self, images: torch.Tensor):
            assert images.shape[0] == len(views)
            return [], 10.0 * one_hot.float()

    model.image_net = RenderedClasses()
    seen, pred = camera_point_labels(model, frame, (72, 128), cfg.distillation.kd_T)
    labeled = frame.labels[seen] != IGNORE_INDEX
    assert len(seen) > 0.9 * frame.num_points and len(np.unique(seen)) == len(seen)
    assert (pred[labeled] == frame.labels[seen][labeled]).mean() > 0.93  # 0.96: bilinear at class edges
    assert (pred != IGNORE_INDEX).all()
    ev = tmp_path / "teacher"
    args = ["--checkpoint", str(out / "last.pt"), "--data", str(root), "--sequences", "01", "--cameras",
            "all", "--camera-branch", "--out", str(ev), "--num-workers", "0", "--no-progress"]
    assert main(args) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["branch"] == "camera" and m["full"]["miou"] is None and 0 <= m["frustum"]["miou"] <= 100
    assert m["num_frustum_points"] > 0.9 * m["num_points"]
    assert main([*args, "--fuse"]) == 2
