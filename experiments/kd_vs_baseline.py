"""The runs of docs/results.md: LiDAR-only baseline vs xModel-KD on the synthetic world, several seeds.

    .venv/bin/python -m experiments.kd_vs_baseline            # everything, skipping finished pieces
    .venv/bin/python -m experiments.kd_vs_baseline --stage report

Stages (each skips work whose output already exists, so an interrupted run resumes):
  synth   one data set per world (`xkd-synth`, sequences 00 = train, 01 = val, each from its own
          derived seed), worlds differing only in `appearance_intensity_gap` and the camera's
          `focal_scale` (the lens changes the images and calibration, not the LiDAR scans or labels);
  train   `xkd-train` of both `synth_small` presets per setting and seed, same steps, data and budget,
          `--jobs` processes at once with `--threads` torch threads each; a setting is a world and
          a label fraction (`--label-fractions`: 1.0 = every training point labeled, 0.1 = a fixed
          10% of each scan's points, the rest ignore -- weak supervision, `data.label_fraction`);
  eval    `xkd-eval` of each last.pt on the val sequence (01, or `--val-sequence NN`: one more
          world from the same generator, scored into `eval3d-seqNN`): 3D branch only, and (xModel-KD)
          fused in the camera frustum;
  report  mean / spread of mIoU and per-class IoU -> `--out` JSON and markdown tables on stdout.
The last checkpoint is evaluated, never the best-on-val one, so the val split selects nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.common import BIN, paired, run, write_report

METHODS = ("baseline_lidar", "xmodel_kd")
#: Appearance-only pairs of the synthetic world: (LiDAR look-alike, class told apart by the camera).
PAIRS = (("road", "parking"), ("road", "other-ground"), ("sidewalk", "terrain"))
FOCUS = ("road", "parking", "other-ground", "sidewalk", "terrain")


def parse_world(text: str) -> tuple[str, float, float]:
    """`NAME:GAP[:FOCAL_SCALE]` -> (name, appearance intensity gap, camera focal scale), e.g.
    `gap005:0.05` (KITTI's lens) or `gap005wide:0.05:0.5` (a ~120 degree front camera)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"world must be NAME:GAP[:FOCAL_SCALE], got {text!r}")
    focal = parts[2] if len(parts) == 3 and parts[2] else "1"
    try:
        return parts[0], float(parts[1]), float(focal)
    except ValueError:
        raise argparse.ArgumentTypeError(f"world {text!r}: GAP and FOCAL_SCALE must be numbers") from None


def stage_synth(args: argparse.Namespace) -> None:
    """Train (00) and val (01) sequences per world, and `--val-sequence` if it is another one: each
    sequence is its own world from the same generator settings."""
    last = f"{args.scans - 1:06d}.bin"
    for name, gap, focal in args.worlds:
        root = args.data / name
        for seqs in (["00", "01"], [args.val_sequence]):
            if all((root / "sequences" / q / "velodyne" / last).is_file() for q in seqs):
                continue
            run([str(BIN / "xkd-synth"), "--out", str(root), "--sequences", *seqs,
                 "--scans", str(args.scans), "--seed", "0", "--appearance-intensity-gap", str(gap),
                 "--focal-scale", str(focal), "--quiet"], None, args.threads)


def parse_val_sequence(text: str) -> str:
    """A two-digit sequence number other than 00, the training sequence."""
    if not re.fullmatch(r"\d\d", text) or text == "00":
        raise argparse.ArgumentTypeError(
            f"a val sequence is two digits and not 00 (the train sequence), got {text!r}")
    return text


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`[METHOD+]NAME:key=value,key=value` -> (`METHOD+NAME`, overrides): a method (xModel-KD unless
    `baseline_lidar+` is given) with these `--set` overrides, reported as its own method; `{seed}`
    in a value becomes the run's seed (e.g. a per-seed init_checkpoint)."""
    name, _, rest = text.partition(":")
    sets = re.split(r",(?=[\w.]+=)", rest) if rest else []  # a value may hold commas: k=[a, b]
    if not name or not sets or any("=" not in kv for kv in sets):
        raise argparse.ArgumentTypeError(
            f"variant must be [METHOD+]NAME:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    base, plus, short = name.rpartition("+")
    if not plus:
        base, short = "xmodel_kd", name
    if base not in METHODS or not short:
        raise argparse.ArgumentTypeError(f"variant {text!r}: METHOD must be one of {list(METHODS)}")
    return f"{base}+{short}", sets


def methods(args: argparse.Namespace) -> list[str]:
    """The baseline, xModel-KD as its preset says, and one `METHOD+NAME` per `--variants` entry;
    only those `--methods` names when given (e.g. more seeds of one variant and the baseline)."""
    every = [*METHODS, *(name for name, _ in args.variants)]
    chosen = getattr(args, "methods", None)
    if not chosen:
        return every
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {every}")
    if "baseline_lidar" not in chosen:
        raise SystemExit("--methods must include baseline_lidar: every row is compared with it")
    return [m for m in every if m in chosen]


def settings(args: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    """(key, world, gap, label fraction) of every setting; the key names its runs folder."""
    return [(w if f >= 1.0 else f"{w}-labels{f:g}", w, gap, f)
            for w, gap, _ in args.worlds for f in args.label_fractions]


def run_dir(args: argparse.Namespace, key: str, method: str, seed: int) -> Path:
    return args.runs / key / method / f"seed{seed}"


def train_cmd(args: argparse.Namespace, key: str, method: str, seed: int) -> list[str]:
    _, world, _, fraction = next(s for s in settings(args) if s[0] == key)
    config = method.partition("+")[0]
    extra = [a for name, sets in args.variants if name == method for kv in sets
             for a in ("--set", kv.replace("{seed}", str(seed)))]
    return [str(BIN / "xkd-train"), "--config", f"config/train/{config}.yaml", "--preset", "synth_small",
            *extra,
            "--set", f"data.root={args.data / world}", "--set", f"seed={seed}",
            "--set", f"data.label_fraction={fraction}",
            "--set", f"optim.steps={args.steps}", "--set", "val_every=100000",
            "--set", f"ckpt_every={args.steps}", "--set", f"out_dir={run_dir(args, key, method, seed)}",
            "--no-progress"]


def stage_train(args: argparse.Namespace) -> None:
    jobs = [(k, m, s) for k, *_ in settings(args) for s in args.seeds for m in methods(args)
            if not (run_dir(args, k, m, s) / "last.pt").is_file()]
    # The camera runs (as in eval_dirs) take 2-3x a LiDAR-only run's time: started first, the
    # workers finish together.
    jobs.sort(key=lambda job: not job[1].startswith("xmodel_kd"))

    def one(job: tuple[str, str, int]) -> None:
        k, m, s = job
        run(train_cmd(args, k, m, s), run_dir(args, k, m, s) / "train.log", args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


def eval_dirs(method: str, val_sequence: str = "01") -> dict[str, bool]:
    """Evaluation folder -> whether it fuses the camera; a val sequence other than 01 gets its own
    folders (`eval3d-seq02`), so the figures on the first val sequence stay where they are."""
    suffix = "" if val_sequence == "01" else f"-seq{val_sequence}"
    subs = ("eval3d", "evalfused") if method.startswith("xmodel_kd") else ("eval3d",)
    return {f"{sub}{suffix}": sub == "evalfused" for sub in subs}


def scored_elsewhere(metrics: dict, data: Path) -> bool:
    """Whether an evaluation's metrics scored another data folder than `data`: a run folder copied
    from a world with the same LiDAR scans (e.g. the baseline for a world that differs only in the
    lens) brings its old evaluation along, whose camera-frustum rows belong to the other camera."""
    scored = metrics.get("data")
    return scored is not None and Path(scored).resolve() != data.resolve()


def stage_eval(args: argparse.Namespace) -> None:
    jobs = []
    for k, w, _, _ in settings(args):
        for m in methods(args):
            for s in args.seeds:
                rd = run_dir(args, k, m, s)
                for sub, fuse in eval_dirs(m, args.val_sequence).items():
                    metrics = rd / sub / "metrics.json"
                    done = metrics.is_file() and not scored_elsewhere(json.loads(metrics.read_text()),
                                                                      args.data / w)
                    if (rd / "last.pt").is_file() and not done:
                        jobs.append((w, rd, sub, fuse))

    def one(job: tuple[str, Path, str, bool]) -> None:
        w, rd, sub, fuse = job
        cmd = [str(BIN / "xkd-eval"), "--checkpoint", str(rd / "last.pt"), "--data", str(args.data / w),
               "--sequences", args.val_sequence, "--out", str(rd / sub), "--num-workers", "0",
               "--no-progress"]
        run(cmd + (["--fuse"] if fuse else []), rd / f"{sub}.log", args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


def as_fraction(metrics: dict) -> dict:
    """An xkd-eval metrics.json with mIoU and IoU as 0..1 fractions: those written before xkd-eval
    reported percent (no `unit`) already are; `unit: percent` ones are divided by 100."""
    if metrics.get("unit") != "percent":
        return metrics
    out = dict(metrics)
    for part in ("full", "frustum"):
        if isinstance(out.get(part), dict):
            d = dict(out[part])
            d["miou"] = None if d.get("miou") is None else d["miou"] / 100.0
            d["per_class_iou"] = {k: None if v is None else v / 100.0
                                  for k, v in d.get("per_class_iou", {}).items()}
            out[part] = d
    return out


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
                 "val_sequence": args.val_sequence, "worlds": {}}
    focal = {name: f for name, _, f in args.worlds}
    for k, w, gap, fraction in settings(args):
        world: dict = {"world": w, "appearance_intensity_gap": gap, "focal_scale": focal[w],
                       "label_fraction": fraction, "methods": {}}
        for m in methods(args):
            rows: dict[str, dict] = {}
            for sub, fused in eval_dirs(m, args.val_sequence).items():
                files = [run_dir(args, k, m, s) / sub / "metrics.json" for s in args.seeds]
                metrics = [as_fraction(json.loads(f.read_text())) for f in files]
                stale = [str(f) for f, d in zip(files, metrics, strict=True)
                         if scored_elsewhere(d, args.data / w)]
                if stale:
                    raise SystemExit(f"scored on another world's data, run --stage eval again: {stale}")
                for part in ("full", "frustum"):
                    if fused and part == "full":
                        continue  # outside the frustum the fused run is the 3D branch again
                    key = f"{'fused' if fused else '3d'}_{part}"
                    rows[key] = {"miou": mean_sd([d[part]["miou"] for d in metrics]),
                                 "iou": {c: mean_sd([d[part]["per_class_iou"][c] or 0.0 for d in metrics])
                                         for c in FOCUS}}
            sps = [seconds_per_step(run_dir(args, k, m, s) / "log.jsonl") for s in args.seeds]
            world["methods"][m] = {"rows": rows, "s_per_step": statistics.fmean(sps)}
        out["worlds"][k] = world
    return out


def fmt(ms: dict[str, float]) -> str:
    return f"{ms['mean']:.1f} ± {ms['sd']:.1f}"


def vs_baseline(row: dict, ref: dict) -> str:
    """Difference of means against the baseline row, ± its standard error (sd_a^2/n_a + sd_b^2/n_b)^0.5."""
    a, b = row["miou"], ref["miou"]
    se = (a["sd"] ** 2 / len(a["values"]) + b["sd"] ** 2 / len(b["values"])) ** 0.5
    return f"{a['mean'] - b['mean']:+.1f} ± {se:.1f}"


def paired_vs_baseline(row: dict, ref: dict) -> str:
    """Mean of the per-seed differences ± its standard error: both methods of a seed share the data
    order and the 3D network's initialisation, so differences by seed cancel what the seed adds."""
    diff = paired(row["miou"]["values"], ref["miou"]["values"])
    return "-" if diff["se"] is None else f"{diff['mean']:+.1f} ± {diff['se']:.1f}"


def markdown(res: dict) -> str:
    """The tables of research/results_diary.md."""
    first = next(iter(res["worlds"].values()))["methods"]  # the paper's comparison: dense labels, 3D only
    lines = []
    if "xmodel_kd" in first:  # the machine-readable line compares the preset as specified
        lines = [f"<!-- miou baseline={first['baseline_lidar']['rows']['3d_full']['miou']['mean']:.1f} "
                 f"xmodel_kd={first['xmodel_kd']['rows']['3d_full']['miou']['mean']:.1f} "
                 f"seeds={len(res['seeds'])} -->", ""]
    labels = {"3d_full": "3D branch, full scan", "3d_frustum": "3D branch, camera frustum",
              "fused_frustum": "fused (camera), camera frustum"}
    for w, world in res["worlds"].items():
        lines += [f"### `{w}`: world `{world['world']}` (appearance_intensity_gap = "
                  f"{world['appearance_intensity_gap']}), labeled fraction of training points "
                  f"{world['label_fraction']:g}", "",
                  "| method | inference | mIoU (mean ± sd) | per seed | vs baseline (± se) | "
                  "paired by seed (± se) | " + " | ".join(FOCUS) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(FOCUS)]
        base = world["methods"]["baseline_lidar"]["rows"]
        for m, data in world["methods"].items():
            for key, row in data["rows"].items():
                seeds = ", ".join(f"{v:.1f}" for v in row["miou"]["values"])
                cls = " | ".join(f"{row['iou'][c]['mean']:.1f}" for c in FOCUS)
                ref = base["3d_" + key.split("_")[1]]
                vs = "-" if m == "baseline_lidar" else vs_baseline(row, ref)
                pv = "-" if m == "baseline_lidar" else paired_vs_baseline(row, ref)
                lines.append(f"| {m} | {labels[key]} | {fmt(row['miou'])} | {seeds} | {vs} | {pv} | {cls} |")
        lines.append("")
        lines.append("Seconds per training step: " + ", ".join(
            f"{m} {d['s_per_step']:.2f} s" for m, d in world["methods"].items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("synth", "train", "eval", "report", "all"), default="all")
    p.add_argument("--worlds", nargs="+", type=parse_world,
                   default=[("gap005", 0.05, 1.0), ("gap0", 0.0, 1.0)],
                   help="NAME:GAP[:FOCAL_SCALE] (appearance_intensity_gap of the world; the camera's "
                        "focal length times KITTI's, default 1)")
    p.add_argument("--label-fractions", nargs="+", type=float, default=[1.0, 0.1],
                   help="data.label_fraction of the training runs (1.0 = dense labels)")
    p.add_argument("--variants", nargs="*", type=parse_variant, default=[],
                   help="[METHOD+]NAME:KEY=VALUE,...: xModel-KD (or METHOD, e.g. baseline_lidar) with these "
                        "overrides, reported as method METHOD+NAME")
    p.add_argument("--methods", nargs="+", default=None,
                   help="only these methods (baseline_lidar, xmodel_kd, METHOD+NAME); default all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--scans", type=int, default=60, help="frames per synthetic sequence")
    p.add_argument("--val-sequence", type=parse_val_sequence, default="01",
                   help="sequence the eval stage scores (01 = the val sequence of every table; another "
                        "number is generated as its own world, for a check on data nothing was chosen on)")
    p.add_argument("--jobs", type=int, default=2, help="trainings / evaluations at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--data", type=Path, default=Path("data/results"))
    p.add_argument("--runs", type=Path, default=Path("runs/results"))
    p.add_argument("--out", type=Path, default=Path("research/results/kd_vs_baseline.json"))
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
        write_report(res, args.out, markdown(res))


if __name__ == "__main__":
    main()
