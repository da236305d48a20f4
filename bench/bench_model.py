"""Cost of one xModel-KD / LiDAR-only training step and of `Segmenter.segment`, to size training presets.

Run: .venv/bin/python bench/bench_model.py [--points 30000] [--threads 2] [--reps 5] [--device cpu]
Writes bench/results/model.json. The scan is a synthetic 64-beam sweep (ground plane inside a
cylindrical wall, sensor at 1.73 m) and the camera a KITTI-like 1226x370 view resized to `--image-hw`
(default 96 x 320), so voxel occupancy and the share of paired points resemble a real scan.
Model sizes: `--size small` is the synth_small preset of config/train/xmodel_kd.yaml, `--size full`
the ModelConfig defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from xkd_core.data.collate import collate, prepare_sample
from xkd_core.data.frame import CameraView, Frame
from xkd_core.inference import Segmenter
from xkd_core.models.xmodel_kd import ArchitectureConfig, LossConfig, ModelConfig, XModelKD

RESULTS = Path(__file__).resolve().parent / "results" / "model.json"

SMALL = dict(architecture=ArchitectureConfig(
    voxel_size=0.1, unet_channels=[16, 32, 64], unet_decoder_channels=[32, 32], unet_blocks=1,
    image_backbone="resnet18", image_out_indices=[1, 2], fpn_dim=32, embed_dim=32, scales=[[0, 0], [1, 1]],
    fusion_hidden=32), losses=LossConfig(max_pairs=1024))


def lidar_scan(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) points of a 64-beam sweep hitting a ground plane or a 25 m wall, and random labels."""
    beams = 64
    az = rng.uniform(-np.pi, np.pi, n)
    el = np.deg2rad(rng.integers(0, beams, n) * (28.0 / (beams - 1)) - 25.0)
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
    h = 1.73
    t_ground = np.where(d[:, 2] < 0, h / np.maximum(-d[:, 2], 1e-6), np.inf)
    t_wall = 25.0 / np.maximum(np.cos(el), 1e-6)
    t = np.minimum(t_ground, t_wall) * (1 + rng.normal(0, 0.002, n))
    xyz = d * t[:, None]
    pts = np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
    labels = np.where(t_ground < t_wall, 9, 13) + rng.integers(0, 2, n) * 2
    return pts, labels.astype(np.int64)


def kitti_view(rng: np.random.Generator) -> CameraView:
    K = np.array([[707.0, 0.0, 601.9], [0.0, 707.0, 183.1], [0.0, 0.0, 1.0]])
    T = np.array([[0.0, -1, 0, 0], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]])
    return CameraView(rng.integers(0, 256, (370, 1226, 3), dtype=np.uint8), K, T, "image_2")


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def bench_train_step(cfg: ModelConfig, frame: Frame, image_hw: tuple[int, int], reps: int,
                     device: torch.device) -> dict:
    torch.manual_seed(0)
    model = XModelKD(cfg, device=device).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in ("prepare", "forward", "loss", "backward", "step")}
    batch = None
    for i in range(reps + 2):
        t0 = time.perf_counter()
        sample = prepare_sample(frame, train=False, rng=rng, point_aug=None, image_aug=None,
                                image_hw=image_hw, use_camera=cfg.use_camera)
        batch = collate([sample]).to(device)
        t1 = time.perf_counter()
        out = model(batch)
        _sync(device)
        t2 = time.perf_counter()
        losses = model.loss(out, batch)
        _sync(device)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        _sync(device)
        t4 = time.perf_counter()
        opt.step()
        _sync(device)
        t5 = time.perf_counter()
        if i >= 2:  # first passes build caches / autotune
            for k, a, b in (("prepare", t0, t1), ("forward", t1, t2), ("loss", t2, t3),
                            ("backward", t3, t4), ("step", t4, t5)):
                times[k].append(b - a)
    res = {f"{k}_ms": _median_ms(v) for k, v in times.items()}
    res["fwd_loss_bwd_ms"] = round(res["forward_ms"] + res["loss_ms"] + res["backward_ms"], 1)
    res["points"] = int(len(batch.points))
    res["pairs"] = int(len(batch.pair_point))
    res["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    return res


def bench_segment(cfg: ModelConfig, frame: Frame, image_hw: tuple[int, int], reps: int, device: str,
                  fuse: bool) -> dict:
    torch.manual_seed(0)
    model = XModelKD(cfg, device=device)
    seg = Segmenter.from_model(model, cfg, image_hw, device=device, fuse=fuse,
                               fp16=torch.device(device).type == "cuda")
    seg.warmup(num_points=len(frame.points), iterations=2)
    totals = [seg.segment(frame.points, frame.views).timings["total"] for _ in range(reps)]
    return {"points": len(frame.points), "fuse": fuse, "p50_ms": _median_ms(totals),
            "max_ms": round(1000 * max(totals), 1)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=30000)
    p.add_argument("--segment-points", type=int, default=120000)
    p.add_argument("--image-hw", type=int, nargs=2, default=(96, 320))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rng = np.random.default_rng(0)
    pts, labels = lidar_scan(a.points, rng)
    frame = Frame(pts, labels, views=[kitti_view(rng)])
    hw = (a.image_hw[0], a.image_hw[1])
    base = SMALL if a.size == "small" else {}
    results = {
        "machine": platform.processor() or platform.machine(), "threads": a.threads, "device": a.device,
        "size": a.size, "image_hw": list(hw), "torch": torch.__version__,
        "train_step_xmodel_kd": bench_train_step(ModelConfig(**base), frame, hw, a.reps, device),
        "train_step_lidar_only": bench_train_step(ModelConfig(**base, use_camera=False), frame, hw, a.reps,
                                                  device),
    }
    big, _ = lidar_scan(a.segment_points, rng)
    results["segment"] = bench_segment(ModelConfig(**base), Frame(big, views=[kitti_view(rng)]), hw, a.reps,
                                       a.device, fuse=False)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
