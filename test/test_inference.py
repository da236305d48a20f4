"""Segmenter: one output per input point in input order, NaN / range handling, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import camera, random_frame, tiny_config

from xkd_core.config import ConfigError
from xkd_core.data.collate import collate, prepare_sample
from xkd_core.inference import Segmenter
from xkd_core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xkd_core.models.xmodel_kd import XModelKD

HW = (32, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _model(use_camera: bool = True, seed: int = 0) -> XModelKD:
    torch.manual_seed(seed)
    model = XModelKD(tiny_config(use_camera=use_camera))
    # a few training-mode passes give BatchNorm non-trivial running statistics
    rng = np.random.default_rng(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            f = random_frame(rng, 800, [camera(rng)])
            model(collate([prepare_sample(f, train=False, rng=None, point_aug=None, image_aug=None,
                                          image_hw=HW, use_camera=use_camera)]))
    return model.eval()


def test_output_keeps_length_and_order_and_zeroes_bad_points():
    model = _model(use_camera=False)
    seg = Segmenter.from_model(model, model.cfg, None, device="cpu")
    rng = np.random.default_rng(1)
    clean = random_frame(rng, 1000).points
    res_clean = seg.segment(clean)
    assert res_clean.labels.shape == (1000,) and res_clean.labels.dtype == np.uint16
    assert res_clean.confidence.shape == (1000,) and res_clean.confidence.dtype == np.float32
    assert (res_clean.labels >= 1).all() and (res_clean.labels < 20).all()  # never the ignore class
    assert (res_clean.confidence > 0).all() and (res_clean.confidence <= 1).all()
    assert set(res_clean.timings) >= {"preprocess", "model", "postprocess", "total"}

    # insert non-finite points between the clean ones: the clean ones keep their results exactly
    bad_at = np.array([0, 17, 18, 500, 1002])
    dirty = np.insert(clean, bad_at - np.arange(len(bad_at)), np.nan, axis=0)
    dirty[17, 0] = np.inf
    assert len(dirty) == 1005
    res = seg.segment(dirty)
    assert res.labels.shape == (1005,)
    assert (res.labels[bad_at] == 0).all() and (res.confidence[bad_at] == 0).all()
    good = np.setdiff1d(np.arange(1005), bad_at)
    assert np.array_equal(res.labels[good], res_clean.labels)
    assert np.allclose(res.confidence[good], res_clean.confidence, atol=1e-6)


def test_max_range_three_columns_empty_and_bad_shapes():
    model = _model(use_camera=False)
    seg = Segmenter.from_model(model, model.cfg, None, max_range=10.0)
    pts = random_frame(np.random.default_rng(2), 600).points
    res = seg.segment(pts)
    far = np.linalg.norm(pts[:, :3], axis=1) > 10.0
    assert far.any() and (res.labels[far] == 0).all() and (res.confidence[far] == 0).all()
    assert (res.labels[~far] > 0).all()
    assert seg.segment(pts[:, :3]).labels.shape == (600,)
    empty = seg.segment(np.full((7, 4), np.nan, np.float32))
    assert (empty.labels == 0).all() and (empty.confidence == 0).all() and len(empty.labels) == 7
    assert len(seg.segment(np.zeros((0, 4), np.float32)).labels) == 0
    with pytest.raises(ValueError, match="points must be"):
        seg.segment(np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="max_range"):
        Segmenter.from_model(model, model.cfg, None, max_range=-1.0)


def test_checkpoint_round_trip_gives_identical_results(tmp_path):
    model = _model(use_camera=True)
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, model.cfg, {"step": 7}, image_hw=HW)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["config"]["image_hw"] == list(HW) and len(ckpt["class_names"]) == 20

    rng = np.random.default_rng(3)
    frame = random_frame(rng, 900, [camera(rng, (40, 80))])
    for fuse in (False, True):
        a = Segmenter.from_model(model, model.cfg, HW, fuse=fuse).segment(frame.points, frame.views)
        b = Segmenter.from_checkpoint(path, device="cpu", fuse=fuse).segment(frame.points, frame.views)
        assert np.array_equal(a.labels, b.labels)
        assert np.allclose(a.confidence, b.confidence, atol=1e-6)
    fused = Segmenter.from_checkpoint(path, fuse=True)
    fused.warmup(num_points=500, iterations=1)
    plain = Segmenter.from_checkpoint(path, fuse=False).segment(frame.points, frame.views)
    with_cam = fused.segment(frame.points, frame.views)
    without_cam = fused.segment(frame.points, None)
    assert np.array_equal(without_cam.labels, plain.labels)  # no image: the 3D branch alone
    assert not np.allclose(with_cam.confidence, plain.confidence)


def test_save_checkpoint_image_size_rules(tmp_path):
    model = _model(use_camera=True)
    with pytest.raises(ValueError, match="image_hw"):
        save_checkpoint(tmp_path / "a.pt", model, model.cfg)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a.pt", model, model.cfg, {"model": 1}, image_hw=HW)
    # xkd-train passes its resolved config in `extra`; the image size is taken from there
    extra = {"train_config": {"data": {"image_hw": [24, 48]}}}
    p = save_checkpoint(tmp_path / "b.pt", model, model.cfg, extra)
    assert load_checkpoint(p)["config"]["image_hw"] == [24, 48]
    base = _model(use_camera=False)
    assert load_checkpoint(save_checkpoint(tmp_path / "c.pt", base, base.cfg))["config"]["image_hw"] is None


def test_bad_checkpoints_give_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Segmenter.from_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*missing keys"):
        Segmenter.from_checkpoint(foreign)
    model = _model(use_camera=False)
    good = save_checkpoint(tmp_path / "good.pt", model, model.cfg)
    ckpt = torch.load(good, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="future.pt.*format_version"):
        Segmenter.from_checkpoint(tmp_path / "future.pt")
    ckpt["format_version"] = 1
    ckpt["config"]["model"]["architecture"]["unet_channels"] = [8, 32, 16]  # weights no longer fit
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="mismatch.pt.*do not fit"):
        Segmenter.from_checkpoint(tmp_path / "mismatch.pt")
    ckpt["config"]["model"]["bogus"] = 1
    torch.save(ckpt, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="badcfg.pt.*bogus"):
        Segmenter.from_checkpoint(tmp_path / "badcfg.pt")
    del ckpt["config"]["model"]["bogus"]
    ckpt["config"]["model"]["architecture"]["unet_channels"] = [8, 16, 16]
    ckpt["config"]["model"]["kd_loss"] = "pseudo_label"  # a switch since removed, on
    torch.save(ckpt, tmp_path / "removed.pt")
    removed = r"removed.pt: incompatible model config: config\.model\.kd_loss = 'pseudo_label': this switch"
    with pytest.raises(CheckpointError, match=removed):
        Segmenter.from_checkpoint(tmp_path / "removed.pt")


def test_a_checkpoint_in_the_flat_config_layout_loads_and_segments(tmp_path):
    """Checkpoints written before `ModelConfig` had sections (the model shipped until 2026-12-04) are
    migrated: the config reads as it was trained, the weights load, both heads segment."""
    from model_fixtures import flat_layout_checkpoint
    from train_fixtures import write_synth

    from xkd_core.data.dataset import SemanticKittiDataset

    old = flat_layout_checkpoint(tmp_path / "old.pt")
    assert "voxel_size" in load_checkpoint(old)["config"]["model"]  # the flat layout
    seg = Segmenter.from_checkpoint(old, fuse=True)
    assert seg.cfg.architecture.voxel_size == 0.1 and seg.cfg.distillation.kd_average == "all"
    assert seg.cfg.losses.fused_detach_3d is True and seg.cfg.architecture.image_pretrained == "none"
    frame = SemanticKittiDataset(write_synth(tmp_path, "00", scans=1), split="train", sequences=["00"],
                                 cameras=(2,))[0]
    plain, fused = seg.segment(frame.points, None), seg.segment(frame.points, frame.views)
    assert plain.labels.shape == fused.labels.shape == (len(frame.points),)
    assert not np.array_equal(plain.labels, fused.labels)  # the camera changed some labels in view


def test_the_shipped_models_label_a_world_they_never_saw(tmp_path):
    """The shipped xModel-KD student and its baseline (LiDAR only, exported without the camera branch)
    label most points of a synthetic world of another seed, LiDAR and camera rig right; asked to fuse,
    they run the LiDAR branch (the node warns: test_pipeline)."""
    from pathlib import Path

    from train_fixtures import write_synth

    from xkd_core.data.dataset import SemanticKittiDataset

    assets = Path(__file__).resolve().parents[1] / "xkd_core" / "assets"
    frame = SemanticKittiDataset(write_synth(tmp_path, "00", scans=1), split="train", sequences=["00"],
                                 cameras=(2,))[0]
    labeled = frame.labels != 0
    for name in ("xkd_synth_small.pt", "baseline_synth_small.pt"):
        seg = Segmenter.from_checkpoint(assets / name)
        assert not seg.cfg.use_camera and seg.input_convention.intensity_max == 1.0
        assert Segmenter.from_checkpoint(assets / name, fuse=True).fuse is False
        res = seg.segment(frame.points, None)
        assert (res.labels[labeled] == frame.labels[labeled]).mean() > 0.55, name


def test_cuda_requested_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = _model(use_camera=False)
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        Segmenter.from_model(model, model.cfg, None, device="cuda")


@pytest.mark.gpu
def test_gpu_fp16_agrees_with_cpu():
    model = _model(use_camera=False)
    pts = random_frame(np.random.default_rng(4), 3000).points
    cpu = Segmenter.from_model(model, model.cfg, None, device="cpu").segment(pts)
    gpu = Segmenter.from_model(_model(use_camera=False), model.cfg, None, device="cuda", fp16=True)
    gpu.warmup(num_points=1000, iterations=1)
    res = gpu.segment(pts)
    assert res.labels.shape == cpu.labels.shape
    assert (res.labels == cpu.labels).mean() > 0.95


def test_stage_timing_splits_the_total_and_changes_nothing():
    model = _model(use_camera=False)
    pts = random_frame(np.random.default_rng(5), 700).points
    plain = Segmenter.from_model(model, model.cfg, None).segment(pts)
    staged_seg = Segmenter.from_model(model, model.cfg, None, stage_timing=True)
    staged = staged_seg.segment(pts)
    assert np.array_equal(staged.labels, plain.labels) and np.array_equal(staged.confidence, plain.confidence)
    t = staged.timings
    assert min(t[k] for k in ("preprocess", "voxelize", "forward_3d", "gather")) >= 0
    assert t["preprocess"] + t["voxelize"] + t["forward_3d"] + t["gather"] == pytest.approx(t["total"])
    assert "voxelize" not in plain.timings  # off by default: no extra GPU synchronisation in the node
    assert not model.unet._forward_hooks and not model.unet._forward_pre_hooks  # hooks removed after use


def test_any_memory_layout_and_dtype_give_the_same_result():
    model = _model(use_camera=False)
    seg = Segmenter.from_model(model, model.cfg, None)
    pts = random_frame(np.random.default_rng(6), 500).points
    pts[[3, 40]] = np.nan
    pts[41, 3] = np.inf  # a bad intensity alone also drops the point
    ref = seg.segment(pts)
    assert (ref.labels[[3, 40, 41]] == 0).all() and (ref.labels[:3] > 0).all()
    wide = np.concatenate([pts, np.ones((len(pts), 2), np.float32)], 1)
    for variant in (np.asfortranarray(pts), wide[:, :4], pts.astype(np.float64)):
        res = seg.segment(variant)
        assert np.array_equal(res.labels, ref.labels) and np.array_equal(res.confidence, ref.confidence)


def test_a_lidar_only_export_predicts_as_the_lidar_branch_of_the_full_model(tmp_path) -> None:
    """`xkd-export --lidar-only`: the camera modules go, the LiDAR branch's labels stay bit for bit."""
    from node_fixtures import synthetic_scan, tiny_checkpoint

    from xkd_core.models.checkpoint import CAMERA_MODULES, load_checkpoint
    from xkd_core.models.export import main as export_main

    full = tiny_checkpoint(tmp_path / "full.pt")
    slim = tmp_path / "lidar.pt"
    assert export_main(["--checkpoint", str(full), "--out", str(slim), "--lidar-only"]) == 0
    ckpt = load_checkpoint(slim)
    assert ckpt["config"]["model"]["use_camera"] is False
    assert not any(k.split(".", 1)[0] in CAMERA_MODULES for k in ckpt["model"])
    assert slim.stat().st_size < full.stat().st_size
    points = synthetic_scan(5)
    a = Segmenter.from_checkpoint(full, "cpu").segment(points)
    b = Segmenter.from_checkpoint(slim, "cpu").segment(points)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    assert not Segmenter.from_checkpoint(slim, "cpu", fuse=True).fuse  # nothing left to fuse with
