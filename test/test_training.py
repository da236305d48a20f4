"""Training end to end on a tiny CPU scene: loss falls, exact resume, both configs, DDP, fine-tuning, eval.

Data: the synthetic world (`train_fixtures.write_synth`: sequence 00 to train, 01 to validate), small
enough that a CPU step takes tens of milliseconds (baseline) to a few tenths of a second (xModel-KD).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_fixtures import HW, ddp_worker, write_synth

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError, to_dict
from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.geometry.projection import point_pixel_pairs
from xkd_core.models.checkpoint import load_checkpoint, model_from_checkpoint
from xkd_core.models.heads import labels_from_logits
from xkd_core.training.config import OptimConfig, TrainConfig, load_train_config
from xkd_core.training.data import ResumableSampler, ShardSampler, batches_per_epoch
from xkd_core.training.distributed import DistInfo
from xkd_core.training.schedule import build_optimizer, build_scheduler, lr_factor
from xkd_core.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "train"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # deterministic and polite on a 2-core CI machine
    yield


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scene")
    write_synth(root, "00", scans=4)
    write_synth(root, "01", scans=2)
    return root


def tiny_cfg(config: str, root: Path, out: Path, *overrides: str) -> TrainConfig:
    """The shipped synth_small preset, shrunk to the fixture scene."""
    base = [
        f"data.root={root}", "data.train_sequences=['00']", "data.val_sequences=['01']",
        f"data.image_hw=[{HW[0]}, {HW[1]}]", "data.max_points=800", "data.num_workers=0",
        "data.batch_size=2", "model.losses.max_pairs=256", "optim.warmup_steps=2", f"out_dir={out}",
        "log_every=1", "val_every=0", "ckpt_every=0",
    ]
    return load_train_config(CONFIGS / config, "synth_small", [*base, *overrides])


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


# ----------------------------------------------------------------------------------------- pieces


def test_schedules() -> None:
    cfg = OptimConfig(lr=1.0, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 100) == pytest.approx(1 / 11)
    assert lr_factor(10, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(100, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(55, cfg, 100) == pytest.approx(0.55)  # cosine half way: (1 + 0.1) / 2
    const = OptimConfig(lr=1.0, steps=100, warmup_steps=4, schedule="constant")
    assert [lr_factor(s, const, 100) for s in (0, 3, 4, 99)] == pytest.approx([0.2, 0.8, 1.0, 1.0])
    p = torch.nn.Parameter(torch.zeros(2, 2))
    one = OptimConfig(lr=0.5, steps=20, warmup_steps=5, schedule="onecycle", optimizer="sgd")
    opt = build_optimizer([("w", p)], one)
    sched = build_scheduler(opt, one, 20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.5, rel=0.05) and int(np.argmax(lrs)) == 5
    assert lrs[-1] < 0.01 * 0.5


def test_weight_decay_skips_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.05, steps=1))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.05
    assert decays[id(model[0].bias)] == decays[id(model[1].weight)] == 0.0


def test_samplers_resume_and_shard() -> None:
    one = DistInfo()
    full = list(ResumableSampler(10, one, seed=3, epoch=2))
    assert sorted(i for _, i in full) == list(range(10)) and all(e == 2 for e, _ in full)
    assert list(ResumableSampler(10, one, seed=3, epoch=2, start=4)) == full[4:]
    assert full != list(ResumableSampler(10, one, seed=3, epoch=3))  # reshuffled per epoch
    ranks = [list(ResumableSampler(10, DistInfo(r, r, 2), seed=3, epoch=0)) for r in (0, 1)]
    assert not {i for _, i in ranks[0]} & {i for _, i in ranks[1]}
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert batches_per_epoch(10, DistInfo(0, 0, 3), 2) == 2  # ceil(ceil(10 / 3) / 2)
    shards = [list(ShardSampler(5, DistInfo(r, r, 2))) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(5))  # no padding: nothing counted twice


def test_labels_from_logits_never_predicts_ignore() -> None:
    logits = torch.tensor([[9.0, 1.0, 2.0], [0.0, 3.0, -1.0]])
    assert labels_from_logits(logits).tolist() == [2, 1]


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def baseline_run(scene_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 24-step LiDAR-only run with validation every 8 steps (shared by the eval tests)."""
    out = tmp_path_factory.mktemp("baseline_run")
    torch.set_num_threads(1)
    cfg = tiny_cfg("baseline_lidar.yaml", scene_root, out, "optim.steps=24", "optim.schedule=constant",
                   "log_every=4", "val_every=8", "ckpt_every=8")
    result = Trainer(cfg, progress=False).fit()
    return cfg, result, out


def test_loss_falls_and_run_is_recorded(baseline_run) -> None:
    cfg, result, out = baseline_run
    losses = [h["loss/total"] for h in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.75 * losses[0], losses
    for h in result.history:
        assert h["perf/s_per_step"] > 0 and h["perf/scans_per_s"] > 0 and np.isfinite(h["grad_norm"])
    assert [v["step"] for v in result.val] == [8, 16, 24]
    mious = [v["val/miou"] for v in result.val]
    assert all(0.0 <= m <= 1.0 for m in mious)
    assert result.best_miou == max(mious)

    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 24 and ckpt["train_state"]["step"] == 24
    assert ckpt["train_config"] == to_dict(cfg)
    assert ckpt["class_names"][9] == "road"
    assert ckpt["config"]["model"]["use_camera"] is False
    best = load_checkpoint(out / "best.pt")
    assert best["val"]["miou"] == pytest.approx(result.best_miou)
    assert best["step"] == [v["step"] for v in result.val][int(np.argmax(mious))]
    model, _, _ = model_from_checkpoint(out / "last.pt")  # loads strictly into a fresh model
    assert isinstance(model, torch.nn.Module)

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum("loss/total" in r for r in records) == 6 and sum("val/miou" in r for r in records) == 3
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("config", ["baseline_lidar.yaml", "xmodel_kd.yaml"])
def test_both_configs_take_a_step(config: str, scene_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(config, scene_root, tmp_path, "optim.steps=1", "data.val_sequences=[]")
    trainer = Trainer(cfg, progress=False)
    before = weights(trainer.model)
    result = trainer.fit()
    terms = {k.removeprefix("loss/") for k in result.history[0] if k.startswith("loss/")}
    camera_terms = {"ce_2d", "ce_fused", "contrastive", "kd"}
    if cfg.model.use_camera:
        assert camera_terms <= terms
        assert trainer.model.image_net is not None
    else:
        assert not camera_terms & terms
        assert trainer.model.image_net is None
    after = weights(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "best.pt").exists()


def test_resume_is_bit_exact(scene_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """6 steps straight == 3 steps, stop, `xkd-train --resume last.pt`, 3 more: identical weights.

    xModel-KD with augmentation, random pair subsampling (max_pairs < pairs), a warm-up + cosine
    schedule, validation and best.pt; 2 steps per epoch, so the resume point is mid-epoch. The
    resumed half loads data in a worker process: augmentation and order do not depend on workers.
    """
    from xkd_core.training.cli import main

    extra = ("optim.steps=6", "val_every=2", "model.losses.max_pairs=64")
    straight = Trainer(tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "a", *extra), progress=False)
    res_a = straight.fit()
    first = Trainer(tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "b", *extra), progress=False)
    first.fit(stop_at_step=3)
    half = weights(first.model)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["step"] == 3
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # as if it had crashed at step 4, after last.pt
        f.write(json.dumps({"step": 4, "loss/total": 123.0}) + "\n")

    resume = ["--resume", str(tmp_path / "b" / "last.pt"), "--no-progress", "--set", "data.num_workers=1"]
    with caplog.at_level("INFO", logger="xkd.train"):
        assert main(resume) == 0
    done = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("done: step 6 / 6"))
    assert f"best val mIoU {100 * res_a.best_miou:.2f} %" in done  # percent, as every tool prints it
    resumed = load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed["train_state"]["step"] == 6
    assert_same(weights(straight.model), resumed["model"])
    assert not all(torch.equal(half[k], resumed["model"][k]) for k in half)  # it did train on
    opt_a = straight.optimizer.state_dict()["state"]
    opt_b = resumed["train_state"]["optimizer"]["state"]
    for k in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[k][name], opt_b[k][name])
    assert resumed["train_state"]["best_miou"] == res_a.best_miou
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    loss_b = [(r["step"], r["loss/total"]) for r in log_b if "loss/total" in r]
    assert [(h["step"], h["loss/total"]) for h in res_a.history] == loss_b  # stale step-4 record dropped


def test_deterministic_on_the_cpu_runs_one_thread(scene_root: Path, tmp_path: Path) -> None:
    """Two CPU runs with two torch threads diverge (measured: their weights differ after 60 steps of
    synth_small); `deterministic: true` is what makes a CPU run reproducible, so it runs one thread."""
    torch.set_num_threads(2)
    Trainer(tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path / "free"), progress=False)
    assert torch.get_num_threads() == 2
    try:
        Trainer(tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path / "det", "deterministic=true",
                         "device=cpu"), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: the other tests run as configured


def test_resume_refuses_a_checkpoint_without_training_state(baseline_run, tmp_path: Path) -> None:
    from xkd_core.models.checkpoint import save_checkpoint

    cfg, _, out = baseline_run
    model, mcfg, _ = model_from_checkpoint(out / "last.pt")
    bare = save_checkpoint(tmp_path / "bare.pt", model, mcfg)
    with pytest.raises(ValueError, match="no training state"):
        Trainer(cfg, resume=bare, progress=False)


def test_export_drops_training_state_and_keeps_the_model(baseline_run, tmp_path: Path) -> None:
    from xkd_core.models.checkpoint import CheckpointError, export_checkpoint
    from xkd_core.models.export import main as export_main

    cfg, _, out = baseline_run
    dst = tmp_path / "deploy" / "model.pt"
    assert export_main(["--checkpoint", str(out / "last.pt"), "--out", str(dst),
                        "--description", "tiny test model"]) == 0
    full, slim = load_checkpoint(out / "last.pt"), load_checkpoint(dst)
    assert "train_state" in full and "train_state" not in slim
    assert slim["description"] == "tiny test model" and slim["step"] == full["step"]
    assert slim["train_config"] == full["train_config"] and slim["class_names"] == full["class_names"]
    assert dst.stat().st_size < (out / "last.pt").stat().st_size
    assert dst.stat().st_mode & 0o777 == 0o644  # readable by the user the node runs as
    assert_same(model_from_checkpoint(dst)[0].state_dict(),
                model_from_checkpoint(out / "last.pt")[0].state_dict())
    with pytest.raises(ValueError, match="no training state"):  # a deployment file cannot resume
        Trainer(cfg, resume=dst, progress=False)

    broken = load_checkpoint(out / "last.pt")
    broken["model"].pop(next(iter(broken["model"])))
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        export_checkpoint(tmp_path / "broken.pt", tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_hold_identical_weights(scene_root: Path, tmp_path: Path) -> None:
    """2 ranks (gloo), each on its own shard: after 2 steps both hold the same, changed weights.

    Parameters agree through DDP's averaged gradients; BatchNorm running statistics (per rank in
    DDP) agree because the trainer averages them before every checkpoint.
    """
    import torch.multiprocessing as mp

    cfg = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "run", "optim.steps=2", "data.batch_size=1",
                   "data.val_sequences=[]")
    mp.spawn(ddp_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    assert_same(r0["init"], r1["init"])
    assert_same(r0["final"], r1["final"])
    assert any(not torch.equal(r0["init"][k], r0["final"][k]) for k in r0["init"])
    # logged losses are the mean over both ranks' shards, the same record on every rank
    assert r0["history"][0]["loss/total"] == r1["history"][0]["loss/total"]
    rec = r0["history"][0]
    assert rec["perf/scans_per_s"] == pytest.approx(2 * rec["perf/scans_per_s_per_process"])
    assert (tmp_path / "run" / "last.pt").is_file()


def test_finetune_on_pair_logs_from_a_checkpoint(baseline_run, scene_root: Path, tmp_path: Path) -> None:
    """data.source=pairlog + init_checkpoint: xModel-KD starts from the LiDAR-only checkpoint's 3D
    weights (the camera branch starts fresh) and learns from the logged pairs through the camera terms
    only: the logged predictions are no labels (test_fleet_finetune.py: the fleet recipe)."""
    from xkd_core.data.pairlog import PairLogWriter, PairSample
    from xkd_core.inference import Segmenter

    _, _, out = baseline_run
    seg = Segmenter.from_checkpoint(out / "best.pt")
    logs = tmp_path / "pairs"
    with PairLogWriter(logs) as writer:
        for i, frame in enumerate(SemanticKittiDataset(scene_root, sequences=["00"], cameras=(2,))):
            res = seg.segment(frame.points)
            pairs = point_pixel_pairs(frame.points[:, :3], [(v.K, v.T, v.hw) for v in frame.views])
            writer.submit(PairSample(frame.points, frame.views, res.labels, res.confidence, pairs, i * 10**8))
    assert len(list(logs.glob("*"))) == 4

    cfg = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "ft", "data.source=pairlog", f"data.root={logs}",
                   f"data.val_root={scene_root}", "optim.steps=2", f"init_checkpoint={out / 'best.pt'}")
    trainer = Trainer(cfg, progress=False)
    init = load_checkpoint(out / "best.pt")["model"]
    start = weights(trainer.model)
    assert_same({k: start[k] for k in init}, init)
    assert any(k.startswith("image_net.") for k in set(start) - set(init))
    result = trainer.fit()
    assert result.step == 2 and len(result.val) == 1
    assert {"loss/contrastive", "loss/kd"} <= set(result.history[-1])
    assert all(h["loss/ce_3d"] == 0.0 and h["loss/lovasz_3d"] == 0.0 for h in result.history)


def test_amp_on_cpu_warns_and_trains_in_float32(scene_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path, "optim.steps=1", "amp=bf16",
                   "data.val_sequences=[]")
    with pytest.warns(UserWarning, match="amp: bf16 needs a GPU"):
        trainer = Trainer(cfg, progress=False)
    assert trainer.amp_dtype is None
    assert np.isfinite(trainer.fit().history[0]["loss/total"])


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_gpu(amp: str, scene_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path, "optim.steps=3", f"amp={amp}", "device=cuda")
    trainer = Trainer(cfg, progress=False)
    before = weights(trainer.model)
    result = trainer.fit()
    assert all(np.isfinite(h["loss/total"]) for h in result.history)
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer.model).items())
    assert result.val and 0.0 <= result.val[-1]["val/miou"] <= 1.0


def test_init_checkpoint_must_fit(baseline_run, scene_root: Path, tmp_path: Path) -> None:
    _, _, out = baseline_run
    cfg = tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path, "optim.steps=1",
                   "model.architecture.unet_channels=[8, 16, 32]", f"init_checkpoint={out / 'last.pt'}")
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(cfg, progress=False)


def test_init_checkpoint_loads_the_parts_it_has(baseline_run, scene_root: Path, tmp_path: Path) -> None:
    """A LiDAR-only checkpoint starts a camera run: its UNet and point head are loaded, the camera
    branch, projections and fused head keep the fresh init a run without init_checkpoint gets."""
    _, _, out = baseline_run
    init = load_checkpoint(out / "last.pt")["model"]
    fresh = weights(Trainer(tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "a", "optim.steps=1"),
                            progress=False).model)
    cfg = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "b", "optim.steps=1",
                   f"init_checkpoint={out / 'last.pt'}")
    start = weights(Trainer(cfg, progress=False).model)
    assert all(torch.equal(start[k], init[k]) for k in init)
    assert any(not torch.equal(init[k], fresh[k]) for k in init)  # the checkpoint was trained
    camera = sorted(set(start) - set(init))
    assert camera and all(k.startswith(("image_net.", "proj_", "fusion_head.")) for k in camera)
    assert all(torch.equal(start[k], fresh[k]) for k in camera)


# ------------------------------------------------------------------------------------------ xkd-eval


def test_xkd_eval_writes_metrics_and_pictures(baseline_run, scene_root: Path, tmp_path: Path) -> None:
    from xkd_core.evaluation.cli import main

    _, _, out = baseline_run
    ev = tmp_path / "eval"
    assert main(["--checkpoint", str(out / "best.pt"), "--data", str(scene_root), "--sequences", "01",
                 "--out", str(ev), "--num-workers", "0", "--no-progress"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    frames = list(SemanticKittiDataset(scene_root, sequences=["01"], cameras=(2,)))
    labelled = sum(int((f.labels > 0).sum()) for f in frames)
    in_view = 0
    for f in frames:
        pairs = point_pixel_pairs(f.points[:, :3], [(v.K, v.T, v.hw) for v in f.views])
        seen = np.zeros(f.num_points, bool)
        seen[pairs.point] = True
        in_view += int((seen & (f.labels > 0)).sum())
    assert m["num_scans"] == 2 and m["sequences"] == ["01"] and m["fuse"] is False
    assert m["cameras"] == [2]  # a KITTI-layout world (no views.yaml): camera 2 by default
    assert np.asarray(m["full"]["confusion_matrix"]).sum() == labelled == m["full"]["num_points"]
    assert np.asarray(m["frustum"]["confusion_matrix"]).sum() == in_view
    assert 0 < in_view < labelled
    assert m["unit"] == "percent"
    for part in ("full", "frustum"):
        assert 0.0 <= m[part]["miou"] <= 100.0
        iou = [v for v in m[part]["per_class_iou"].values() if v is not None]
        # the mean of the percent IoUs, each written to four decimals
        assert m[part]["miou"] == pytest.approx(sum(iou) / len(iou), abs=1e-4)
        cm = np.asarray(m[part]["confusion_matrix"], dtype=np.float64)
        road = CLASS_NAMES.index("road")
        tp, fn, fp = cm[road, road], cm[road].sum() - cm[road, road], cm[1:, road].sum() - cm[road, road]
        assert m[part]["per_class_iou"]["road"] == pytest.approx(100.0 * tp / (tp + fn + fp), abs=5e-5)
        assert {"road", "car", "building"} <= set(m[part]["classes_present"])
    assert m["latency_ms"]["p50"] > 0
    for name in ("confusion_full.png", "confusion_frustum.png", "iou_per_class.png"):
        img = cv2.imread(str(ev / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100


def test_xkd_eval_fused_on_a_camera_checkpoint(scene_root: Path, tmp_path: Path) -> None:
    from xkd_core.evaluation.cli import main

    cfg = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path / "run", "optim.steps=1", "data.val_sequences=[]")
    Trainer(cfg, progress=False).fit()
    for fuse in ([], ["--fuse"]):
        ev = tmp_path / f"eval{len(fuse)}"
        assert main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(scene_root),
                     "--sequences", "1", "--out", str(ev), "--num-workers", "0", "--no-progress", *fuse]) == 0
        assert json.loads((ev / "metrics.json").read_text())["fuse"] is bool(fuse)


def test_xkd_eval_bad_input(tmp_path: Path, scene_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xkd_core.evaluation.cli import main

    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(scene_root), "--split", "val",
                 "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "junk.pt"), "--data", str(scene_root), "--sequences", "01",
                 "--out", str(tmp_path)]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_train_cli_refuses_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xkd_core.training.cli import main

    rc = main(["--config", str(CONFIGS / "baseline_lidar.yaml"), "--preset", "synth_small", "--no-progress",
               "--set", f"data.root={tmp_path / 'nowhere'}", "--set", f"out_dir={tmp_path / 'o'}"])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


def test_config_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="optim.steps"):
        load_train_config(CONFIGS / "xmodel_kd.yaml", "synth_small", ["optim.steps=many"])


def test_label_frustum_gives_the_baseline_the_frustum_labels(scene_root: Path, tmp_path: Path) -> None:
    """The LiDAR-only baseline reads the camera calibration only for `data.label_frustum`, and its
    training samples then carry labels on every point a camera sees (and no image pairs)."""
    from xkd_core.training.data import SampleDataset, build_frame_datasets

    plain = tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path, "data.label_fraction=0.02")
    oracle = tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path, "data.label_fraction=0.02",
                      "data.label_frustum=true", "data.max_points=null")
    assert build_frame_datasets(plain)[0][0].views == []
    frames = build_frame_datasets(oracle)[0]
    frame = frames[0]
    assert frame.views, "label_frustum needs the camera calibration"
    seen = point_pixel_pairs(frame.points, [(v.K, v.T, v.hw) for v in frame.views]).point
    sample = SampleDataset(frames, oracle, train=True)[(0, 0)]
    labels = np.asarray(sample.labels)
    assert np.all(labels[np.unique(seen)] != 0) and 0 < len(np.unique(seen)) < len(labels)
    assert (labels != 0).mean() > 0.02 + 0.5 * len(np.unique(seen)) / len(labels)


def test_image_labels_scan_gives_the_camera_branch_every_labeled_point_it_sees(
        scene_root: Path, tmp_path: Path) -> None:
    """`data.max_points` bounds the 3D network; with `data.image_labels: scan` the 2D CE still gets
    the labels of all the scan's labeled points in view, the subsample's among them."""
    from xkd_core.training.data import SampleDataset, build_frame_datasets

    over = ("data.label_fraction=0.2", "data.max_points=300")
    sampled = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path, *over)
    scan = tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path, *over, "data.image_labels=scan")
    frames = build_frame_datasets(scan)[0]
    a = SampleDataset(frames, sampled, train=True)[(0, 1)]
    s = SampleDataset(frames, scan, train=True)[(0, 1)]
    assert a.label_class is None
    assert np.array_equal(s.points, a.points) and np.array_equal(s.pair_uv, a.pair_uv)  # same 3D sample
    labeled_pairs = a.labels[a.pair_point] != 0
    assert 0 < labeled_pairs.sum() < len(s.label_class)
    assert (s.label_class != 0).all()
    # every labeled pair of the subsample is one of the camera labels, same pixel and class
    pair_class = a.labels[a.pair_point]
    for v, uv, c in zip(a.pair_view[labeled_pairs], a.pair_uv[labeled_pairs], pair_class[labeled_pairs]):
        hit = (s.label_view == v) & (np.abs(s.label_uv - uv).max(axis=1) < 1e-3)
        assert hit.any() and (s.label_class[hit] == c).all()
    # the LiDAR-only baseline builds no camera labels whatever the option says
    base = tiny_cfg("baseline_lidar.yaml", scene_root, tmp_path, *over, "data.image_labels=scan")
    assert SampleDataset(build_frame_datasets(base)[0], base, train=True)[(0, 1)].label_class is None
    with pytest.raises(ConfigError, match="image_labels"):
        tiny_cfg("xmodel_kd.yaml", scene_root, tmp_path, "data.image_labels=all")
