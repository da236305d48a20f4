"""The table of docs/results.md: LiDAR-only baseline vs xModel-KD on the synthetic world, several seeds.

    .venv/bin/python -m experiments.kd_vs_baseline            # everything, skipping finished pieces
    .venv/bin/python -m experiments.kd_vs_baseline --stage report

Stages (each skips work whose output already exists, so an interrupted run resumes):
  synth   one data set per world (`xkd-synth`, sequences 00 = train, 01 = val, each from its own
          derived seed), worlds differing only in `appearance_intensity_gap`;
  train   `xkd-train` of both `synth_small` presets per world and seed, same steps, data and budget,
          `--jobs` processes at once with `--threads` torch threads each;
  eval    `xkd-eval` of each last.pt on the val sequence: 3D branch only, and (xModel-KD) fused in the
          camera frustum;
  report  mean / spread of mIoU and per-class IoU -> `--out` JSON and markdown tables on stdout.
The last checkpoint is evaluated, never the best-on-val one, so the val split selects nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
METHODS = ("baseline_lidar", "xmodel_kd")
#: Appearance-only pairs of the synthetic world: (LiDAR look-alike, class told apart by the camera).
PAIRS = (("road", "parking"), ("road", "other-ground"), ("sidewalk", "terrain"))
FOCUS = ("road", "parking", "other-ground", "sidewalk", "terrain")


def parse_world(text: str) -> tuple[str, float]:
    """`name:gap`, e.g. `gap005:0.05`."""
    name, _, gap = text.partition(":")
    if not name or not gap:
        raise argparse.ArgumentTypeError(f"world must be NAME:GAP, got {text!r}")
    return name, float(gap)


def run(cmd: list[str], log: Path | None, threads: int) -> None:
    """Run one tool with `threads` intra-op threads; its output goes to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def stage_synth(args: argparse.Namespace) -> None:
    for name, gap in args.worlds:
        root = args.data / name
        if (root / "sequences" / "01" / "velodyne" / f"{args.scans - 1:06d}.bin").is_file():
            continue
        run([str(BIN / "xkd-synth"), "--out", str(root), "--sequences", "00", "01",
             "--scans", str(args.scans), "--seed", "0",
             "--appearance-intensity-gap", str(gap), "--quiet"], None, args.threads)


def run_dir(args: argparse.Namespace, world: str, method: str, seed: int) -> Path:
    return args.runs / world / method / f"seed{seed}"


def train_cmd(args: argparse.Namespace, world: str, method: str, seed: int) -> list[str]:
    return [str(BIN / "xkd-train"), "--config", f"config/train/{method}.yaml", "--preset", "synth_small",
            "--set", f"data.root={args.data / world}", "--set", f"seed={seed}",
            "--set", f"optim.steps={args.steps}", "--set", "val_every=100000",
            "--set", f"ckpt_every={args.steps}", "--set", f"out_dir={run_dir(args, world, method, seed)}",
            "--no-progress"]


def stage_train(args: argparse.Namespace) -> None:
    jobs = [(w, m, s) for w, _ in args.worlds for s in args.seeds for m in METHODS
            if not (run_dir(args, w, m, s) / "last.pt").is_file()]

    def one(job: tuple[str, str, int]) -> None:
        w, m, s = job
        run(train_cmd(args, w, m, s), run_dir(args, w, m, s) / "train.log", args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


def eval_dirs(method: str) -> dict[str, bool]:
    """Evaluation folder -> whether it fuses the camera."""
    return {"eval3d": False, "evalfused": True} if method == "xmodel_kd" else {"eval3d": False}


def stage_eval(args: argparse.Namespace) -> None:
    jobs = []
    for w, _ in args.worlds:
        for m in METHODS:
            for s in args.seeds:
                rd = run_dir(args, w, m, s)
                for sub, fuse in eval_dirs(m).items():
                    if (rd / "last.pt").is_file() and not (rd / sub / "metrics.json").is_file():
                        jobs.append((w, rd, sub, fuse))

    def one(job: tuple[str, Path, str, bool]) -> None:
        w, rd, sub, fuse = job
        cmd = [str(BIN / "xkd-eval"), "--checkpoint", str(rd / "last.pt"), "--data", str(args.data / w),
               "--sequences", "01", "--out", str(rd / sub), "--num-workers", "0", "--no-progress"]
        run(cmd + (["--fuse"] if fuse else []), rd / f"{sub}.log", args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation in percent."""
    pct = [100.0 * v for v in values]
    return {"mean": statistics.fmean(pct), "sd": statistics.stdev(pct) if len(pct) > 1 else 0.0,
            "values": pct}


def seconds_per_step(log: Path) -> float:
    """Median logged seconds per step (the first log window, with start-up, left out)."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if '"perf/s_per_step"' in line]
    vals = [r["perf/s_per_step"] for r in rows[1:]] or [r["perf/s_per_step"] for r in rows]
    return statistics.median(vals)


def collect(args: argparse.Namespace) -> dict:
    """Per world and method: metrics over seeds (rows: 3D full, 3D frustum, fused frustum)."""
    out: dict = {"steps": args.steps, "seeds": list(args.seeds), "scans_per_sequence": args.scans,
                 "worlds": {}}
    for w, gap in args.worlds:
        world: dict = {"appearance_intensity_gap": gap, "methods": {}}
        for m in METHODS:
            rows: dict[str, dict] = {}
            for sub in eval_dirs(m):
                metrics = [json.loads((run_dir(args, w, m, s) / sub / "metrics.json").read_text())
                           for s in args.seeds]
                for part in ("full", "frustum"):
                    if sub == "evalfused" and part == "full":
                        continue  # outside the frustum the fused run is the 3D branch again
                    key = f"{'fused' if sub == 'evalfused' else '3d'}_{part}"
                    rows[key] = {"miou": mean_sd([d[part]["miou"] for d in metrics]),
                                 "iou": {c: mean_sd([d[part]["per_class_iou"][c] or 0.0 for d in metrics])
                                         for c in FOCUS}}
            sps = [seconds_per_step(run_dir(args, w, m, s) / "log.jsonl") for s in args.seeds]
            world["methods"][m] = {"rows": rows, "s_per_step": statistics.fmean(sps)}
        out["worlds"][w] = world
    return out


def fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.1f} ± {ms['sd']:.1f}"


def markdown(res: dict) -> str:
    """The tables of docs/results.md."""
    lines: list[str] = []
    labels = {"3d_full": "3D branch, full scan", "3d_frustum": "3D branch, camera frustum",
              "fused_frustum": "fused (camera), camera frustum"}
    for w, world in res["worlds"].items():
        lines += [f"### World `{w}` (appearance_intensity_gap = {world['appearance_intensity_gap']})", "",
                  "| method | inference | mIoU (mean ± sd) | per seed | " + " | ".join(FOCUS) + " |",
                  "|---|---|---|---|" + "---|" * len(FOCUS)]
        for m, data in world["methods"].items():
            for key, row in data["rows"].items():
                seeds = ", ".join(f"{v:.1f}" for v in row["miou"]["values"])
                cls = " | ".join(f"{row['iou'][c]['mean']:.1f}" for c in FOCUS)
                lines.append(f"| {m} | {labels[key]} | {fmt(row['miou'])} | {seeds} | {cls} |")
        lines.append("")
        lines.append("Seconds per training step: " + ", ".join(
            f"{m} {d['s_per_step']:.2f} s" for m, d in world["methods"].items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("synth", "train", "eval", "report", "all"), default="all")
    p.add_argument("--worlds", nargs="+", type=parse_world, default=[("gap005", 0.05), ("gap0", 0.0)],
                   help="NAME:GAP (appearance_intensity_gap of the world)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--scans", type=int, default=60, help="frames per synthetic sequence")
    p.add_argument("--jobs", type=int, default=2, help="trainings / evaluations at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--data", type=Path, default=Path("data/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/results"))
    p.add_argument("--out", type=Path, default=Path("docs/results/kd_vs_baseline.json"))
    args = p.parse_args(argv)
    stages = ("synth", "train", "eval", "report") if args.stage == "all" else (args.stage,)
    if "synth" in stages:
        stage_synth(args)
    if "train" in stages:
        stage_train(args)
    if "eval" in stages:
        stage_eval(args)
    if "report" in stages:
        res = collect(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print(markdown(res))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
