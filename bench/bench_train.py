"""Training throughput (scans/s) and peak memory of the LiDAR-only baseline and xModel-KD.

Run: .venv/bin/python -m bench.bench_train [--device cpu|cuda] [--presets synth_small semantickitti]
     [--steps 12] [--warmup-steps 3] [--threads 0]

Each row is the real `Trainer` (data loading, augmentation, forward, losses, backward, optimizer
step, at the preset's batch size, workers and precision) on synthetic data written by
`xkd_core.synth.generate` into a temporary folder, in a fresh process so that memory figures
belong to that row alone. After `--warmup-steps` untimed steps, `--steps` are measured: scans/s and
s/step are the Trainer's own `perf/*` log record for them (enough scans are generated that no epoch
boundary falls inside), peak memory is `torch.cuda.max_memory_allocated` on a GPU and, on the CPU,
the peak resident memory of the process and its loader workers, sampled at 20 Hz. `semantickitti`
(the full-size model: 5-level UNet, resnet34, 320x960 images, batch 4, bf16) needs a GPU and is
skipped with the reason elsewhere; `image_pretrained` is forced to `none` (no download).
Writes bench/results/train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, RESULTS, command_line, finish, load_average, machine_info, now_utc

CONFIGS = {"baseline": "baseline_lidar.yaml", "xmodel_kd": "xmodel_kd.yaml"}
PRESETS = ("synth_small", "semantickitti")


class PeakRss:
    """Largest resident memory of this process plus its children, sampled in a thread."""

    def __init__(self, period_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._period = period_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in (self._proc, *self._proc.children(recursive=True)):
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a loader worker may exit between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._period)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def skip_reason(device: str, preset: str) -> str | None:
    """Why this machine cannot run a preset, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if preset == "semantickitti" and device != "cuda":
        return "the full-size model needs a GPU (minutes per step on a 2-core CPU)"
    return None


def measure(config: str, preset: str, data: Path, out_dir: Path, device: str, steps: int,
            warmup: int) -> dict[str, Any]:
    """One Trainer run: `warmup` steps, then `steps` measured ones."""
    from xkd_core.training.config import load_train_config
    from xkd_core.training.trainer import Trainer

    overrides = [f"data.root={data}", "data.train_sequences=[0]", "data.val_sequences=[]",
                 "model.architecture.image_pretrained=none", "optim.epochs=null",
                 f"optim.steps={warmup + steps}",
                 "log_every=1000000", "val_every=0", "ckpt_every=0", f"out_dir={out_dir}", f"device={device}"]
    cfg = load_train_config(REPO / "config" / "train" / CONFIGS[config], preset, overrides)
    trainer = Trainer(cfg, progress=False)
    trainer.fit(stop_at_step=warmup)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    with PeakRss() as rss:
        result = trainer.fit(stop_at_step=warmup + steps)
    rec = result.history[-1]
    row: dict[str, Any] = {
        "config": config, "preset": preset, "steps": steps, "batch_size": cfg.data.batch_size,
        "scans_per_s": round(rec["perf/scans_per_s"], 3), "s_per_step": round(rec["perf/s_per_step"], 4),
        "amp": cfg.amp if trainer.device.type == "cuda" else "none", "num_workers": cfg.data.num_workers,
        "max_points": cfg.data.max_points, "image_hw": list(cfg.data.image_hw),
        "params_M": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
        "loss_total": round(rec["loss/total"], 4), "peak_rss_mb": round(rss.peak / 2**20, 1),
        "torch_threads": torch.get_num_threads(), "load_avg": load_average(),
    }
    if trainer.device.type == "cuda":
        row["cuda_max_memory_mb"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2**20, 1)
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--steps", type=int, default=12, help="measured optimizer steps per row")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/train_<device>.json")
    p.add_argument("--row", nargs=3, metavar=("CONFIG", "PRESET", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        p.error("--steps and --warmup-steps must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.row:  # child: one row, JSON on stdout's last line
        config, preset, data = args.row
        with tempfile.TemporaryDirectory(prefix="xkd_bench_train_run_") as run:
            row = measure(config, preset, Path(data), Path(run), args.device, args.steps, args.warmup_steps)
        print(json.dumps(row))
        return row

    from xkd_core.synth import generate

    out = args.out or RESULTS / f"train_{args.device}.json"
    result: dict[str, Any] = {
        "what": "training throughput of the real Trainer on synthetic data (bench/bench_train.py)",
        "date": now_utc(), "command": command_line(), "device": args.device,
        "machine": machine_info(args.device),
        "load_avg_start": load_average(), "rows": [], "skipped": [],
    }
    runnable = []
    for preset in args.presets:
        reason = skip_reason(args.device, preset)
        for config in args.configs:
            if reason:
                result["skipped"].append({"config": config, "preset": preset, "reason": reason})
                print(f"skip {config} {preset}: {reason}", flush=True)
            else:
                runnable.append((config, preset))
    with tempfile.TemporaryDirectory(prefix="xkd_bench_train_") as tmp:
        if runnable:
            batch = 4  # the largest preset batch size: enough scans that no epoch ends mid-measurement
            scans = (args.warmup_steps + args.steps) * batch
            t = time.perf_counter()
            generate(tmp, ["00"], scans, seed=0, progress=False)
            result["synthetic_scans"] = scans
            result["data_generation_s"] = round(time.perf_counter() - t, 1)
        for config, preset in runnable:
            cmd = [sys.executable, "-m", "bench.bench_train", "--row", config, preset, tmp, "--device",
                   args.device, "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:  # recorded, and the other rows still run (one device call, many rows)
                result.setdefault("failed", []).append({"config": config, "preset": preset,
                                                        "stderr_tail": proc.stderr[-3000:]})
                print(f"FAILED {config} {preset}:\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            result["rows"].append(row)
            print(f"{args.device} {preset:>13} {config:>9}: {row['scans_per_s']:.2f} scans/s, "
                  f"{row['s_per_step']:.3f} s/step, peak RSS {row['peak_rss_mb']:.0f} MB"
                  + (f", CUDA {row['cuda_max_memory_mb']:.0f} MB" if "cuda_max_memory_mb" in row else ""),
                  flush=True)
    finish(result, out)
    if result.get("failed"):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
