"""xModel-KD in stages (issue 28): a camera teacher trained on plentiful 2D labels, then per label regime
and seed the LiDAR-only baseline and the xModel-KD designs, scored with the LiDAR branch alone.

    .venv/bin/python -m experiments.xmodel_kd_stages --regimes labels0.01 scans3 dense --seeds 0 1 2 3 4
    .venv/bin/python -m experiments.xmodel_kd_stages --stage report
    # a pilot: one seed, the development world only
    .venv/bin/python -m experiments.xmodel_kd_stages --val-sequences 03 --seeds 0 --regimes labels0.01 \
        --methods baseline kd pre_kd

Worlds (`xkd-synth --rig surround`: six 70-degree cameras all round, per-pixel class images):
  3D       `DATA/world`, generator seed 0, appearance cue `--gap`: sequence 00 trains (`--train-scans`
           paired scans), 01 and 02 are the val worlds (`--val-scans`; never used for a choice), 03 is
           the development world of the pilots (`--dev-scans`);
  teacher  `DATA/teacher`, generator seed 1 and sequences 10, 11 (its training images) and 12 (held-out
           images for its pixel mIoU): no world of the 3D runs, none of their sequence ids.
Stages (each skips what is finished and resumes what was interrupted, from its last.pt; runs live in
`RUNS/<regime>-<steps>steps/<method>/seed<s>`, pretraining in `RUNS/pretrain-<steps>steps/seed<s>` and
the teacher in `RUNS/camera_teacher`):
  synth     the sequences that the chosen stages need;
  teacher   `config/train/camera_teacher.yaml`: the camera branch alone (ImageNet EfficientNet-Lite0 + FPN
            + 2D head) on the teacher's images, pixel mIoU on sequence 12;
  pretrain  `config/train/contrastive_pretrain.yaml` per seed (methods that need it): point-pixel
            InfoNCE towards the frozen teacher's features on the unlabeled train scans, no label at all;
  train     per regime x method x seed, `--jobs` at once with `--threads` torch threads each;
  eval      `xkd-eval` of each last.pt on every `--val-sequences` world: LiDAR branch alone, full scan
            (and the camera frustum: the points any camera sees); the teacher on the same worlds' points
            (`--camera-branch`: what its KL hands the LiDAR branch);
  report    per regime and val world: mIoU per method and seed, paired differences to the baseline (mean,
            standard error, every seed's sign), per-class IoU of the classes that change, seconds per
            step, the teacher's pixel mIoU -> `--out` JSON and markdown on stdout.
Methods (`METHODS`): the baseline; `kd`, the KL from the frozen 2D-trained teacher on every unlabeled
point a camera sees; `pre_kd`, contrastive pretraining then fine-tuning with the labels and that KL; `kd_nce`,
the KL and InfoNCE jointly; `kd_imagenet`, no 2D-label stage (the camera branch from ImageNet, trained
jointly on the projected 3D labels); `kd_front`, the front camera only. Regimes: `labelsF` (a fixed
fraction F of every scan's points keeps its label), `scansK` (K fully labeled scans, the others
unlabeled), `dense`. The last checkpoint is scored, never a best-on-val one: the val worlds select nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from experiments.common import BIN, paired, run, run_config, run_stages

CONFIGS = Path("config/train")
PRESET = "synth_surround"

#: 3D world: generator seed and its sequences.
WORLD_SEED, TRAIN_SEQ, VAL_SEQS, DEV_SEQ = 0, "00", ("01", "02"), "03"
#: Teacher world: its own generator seed and sequence ids.
TEACHER_SEED, TEACHER_TRAIN, TEACHER_VAL = 1, ("10", "11"), "12"
#: A class whose mean IoU moves at least this much (IoU points) against the baseline is reported.
CLASS_CHANGE = 1.0


@dataclass(frozen=True)
class Method:
    """One design: its config file, `--set` overrides, and the stages it starts from."""

    config: str
    overrides: tuple[str, ...] = ()
    teacher: bool = False  # loads the camera teacher (init_checkpoint, init_modules: [image_net])
    pretrain: bool = False  # fine-tunes the seed's contrastive pretraining (which loads the teacher)
    what: str = ""


METHODS: dict[str, Method] = {
    "baseline": Method("baseline_lidar", what="the LiDAR-only baseline"),
    "kd": Method("xmodel_kd", teacher=True,
                 what="KL from the frozen 2D-trained teacher on every unlabeled point a camera sees"),
    "pre_kd": Method("xmodel_kd", pretrain=True,
                     what="contrastive pretraining on unlabeled scans, then labels + the KL"),
    "kd_nce": Method("xmodel_kd", ("model.losses.wc=1.0", "model.losses.max_pairs=2048"), teacher=True,
                     what="the KL and point-pixel InfoNCE jointly"),
    "kd_imagenet": Method("xmodel_kd", ("model.distillation.freeze_camera=false", "init_checkpoint=null",
                                        "init_modules=null"),
                          what="no 2D-label stage: camera from ImageNet, trained on the projected 3D labels"),
    "kd_front": Method("xmodel_kd", ("data.cameras=[CAM_FRONT]",), teacher=True,
                       what="the KL from the front camera only"),
}


def parse_regime(text: str) -> tuple[str, list[str]]:
    """`labelsF` (label fraction F in (0, 1)), `scansK` (K labeled scans) or `dense` -> (name, overrides)."""
    if text == "dense":
        return text, []
    m = re.fullmatch(r"labels(0?\.\d+)", text)
    if m and 0.0 < float(m.group(1)) < 1.0:
        return text, [f"data.label_fraction={float(m.group(1))}"]
    m = re.fullmatch(r"scans(\d+)", text)
    if m:
        return text, [f"data.labeled_scans={int(m.group(1))}"]
    raise argparse.ArgumentTypeError(f"regime must be labelsF (0 < F < 1, e.g. labels0.01), scansK (e.g. "
                                     f"scans3) or dense, got {text!r}")


def parse_method(text: str) -> str:
    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; known: {list(METHODS)}")
    return text


def parse_sequence(text: str) -> str:
    if not re.fullmatch(r"\d\d", text) or text not in (*VAL_SEQS, DEV_SEQ):
        raise argparse.ArgumentTypeError(f"a val sequence is one of {[*VAL_SEQS, DEV_SEQ]}, got {text!r}")
    return text


# ------------------------------------------------------------------------------------------ folders


def world_root(args: argparse.Namespace) -> Path:
    return args.data / "world"


def teacher_root(args: argparse.Namespace) -> Path:
    return args.data / "teacher"


def teacher_dir(args: argparse.Namespace) -> Path:
    return args.runs / "camera_teacher"


def pretrain_dir(args: argparse.Namespace, seed: int) -> Path:
    return args.runs / f"pretrain-{args.pretrain_steps}steps" / f"seed{seed}"


def run_dir(args: argparse.Namespace, regime: str, method: str, seed: int) -> Path:
    """`RUNS/<regime>-<steps>steps/<method>/seed<s>`: another budget is another set of runs."""
    return args.runs / f"{regime}-{args.steps}steps" / method / f"seed{seed}"


def eval_dir(rd: Path, sequence: str) -> Path:
    return rd / f"eval-seq{sequence}"


# ------------------------------------------------------------------------------------------ synth


def sequence_complete(root: Path, sequence: str, scans: int) -> bool:
    """Whether xkd-synth finished `sequence`: every view's image and class image of the last frame
    (written after its scan and labels)."""
    from xkd_core.data.views import VIEWS_FILE, read_views

    seq_dir = root / "sequences" / sequence
    last = f"{scans - 1:06d}"
    if not (seq_dir / VIEWS_FILE).is_file() or not (seq_dir / "velodyne" / f"{last}.bin").is_file():
        return False
    views = read_views(seq_dir / VIEWS_FILE)
    return all(v.image_path(seq_dir, last).is_file() and v.class_path(seq_dir, last).is_file() for v in views)


def synth_jobs(args: argparse.Namespace) -> list[tuple[Path, str, int, int]]:
    """(root, sequence, scans, generator seed) of every sequence the chosen stages need."""
    jobs = []
    stages = set(args.stages)
    if stages & {"teacher"} or (stages & {"pretrain", "train"} and needs_teacher(args)):
        jobs += [(teacher_root(args), s, args.teacher_scans, TEACHER_SEED) for s in TEACHER_TRAIN]
        jobs.append((teacher_root(args), TEACHER_VAL, args.teacher_val_scans, TEACHER_SEED))
    if stages & {"pretrain", "train"}:
        jobs.append((world_root(args), TRAIN_SEQ, args.train_scans, WORLD_SEED))
    if "eval" in stages:
        jobs += [(world_root(args), s, args.dev_scans if s == DEV_SEQ else args.val_scans, WORLD_SEED)
                 for s in args.val_sequences]
    return jobs


def stage_synth(args: argparse.Namespace) -> None:
    def one(job: tuple[Path, str, int, int]) -> None:
        root, seq, scans, seed = job
        if sequence_complete(root, seq, scans):
            return
        run([str(BIN / "xkd-synth"), "--out", str(root), "--rig", "surround", "--sequences", seq,
             "--scans", str(scans), "--seed", str(seed), "--appearance-intensity-gap", str(args.gap),
             "--overwrite", "--quiet"], None, args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, synth_jobs(args)))


# ------------------------------------------------------------------------------------------ training


def needs_teacher(args: argparse.Namespace) -> bool:
    return any(METHODS[m].teacher or METHODS[m].pretrain for m in args.methods)


def finished_step(rd: Path) -> int | None:
    """The step of `rd/last.pt` (None without one)."""
    from xkd_core.models.checkpoint import load_checkpoint

    path = rd / "last.pt"
    return int(load_checkpoint(path).get("step", 0)) if path.is_file() else None


def train(cmd: list[str], rd: Path, steps: int, threads: int) -> None:
    """Run `cmd` into `rd` unless its last.pt reached `steps`; an interrupted run resumes from it."""
    step = finished_step(rd)
    if step is not None and step >= steps:
        return
    if step is not None:
        cmd = [str(BIN / "xkd-train"), "--resume", str(rd / "last.pt"), "--no-progress"]
    run(cmd, rd / "train.log", threads, append=True)  # a resumed run goes on in the same log


def common_sets(args: argparse.Namespace, rd: Path, steps: int) -> list[str]:
    sets = [f"optim.steps={steps}", f"ckpt_every={args.ckpt_every}", f"out_dir={rd}",
            "data.num_workers=0", "val_every=0"]
    return [a for kv in sets for a in ("--set", kv)]


def teacher_cmd(args: argparse.Namespace) -> list[str]:
    return [str(BIN / "xkd-train"), "--config", str(CONFIGS / "camera_teacher.yaml"), "--preset", PRESET,
            "--set", f"data.root={teacher_root(args)}",
            "--set", f"data.train_sequences=[{', '.join(TEACHER_TRAIN)}]",
            "--set", f"data.val_sequences=[{TEACHER_VAL}]",
            *common_sets(args, teacher_dir(args), args.teacher_steps), "--no-progress"]


def pretrain_cmd(args: argparse.Namespace, seed: int) -> list[str]:
    config = str(CONFIGS / "contrastive_pretrain.yaml")
    return [str(BIN / "xkd-train"), "--config", config, "--preset", PRESET,
            "--set", f"data.root={world_root(args)}", "--set", f"data.train_sequences=[{TRAIN_SEQ}]",
            "--set", f"seed={seed}", "--set", f"init_checkpoint={teacher_dir(args) / 'last.pt'}",
            *common_sets(args, pretrain_dir(args, seed), args.pretrain_steps), "--no-progress"]


def train_cmd(args: argparse.Namespace, regime: str, method: str, seed: int) -> list[str]:
    m = METHODS[method]
    sets = [f"data.root={world_root(args)}", f"data.train_sequences=[{TRAIN_SEQ}]", "data.val_sequences=[]",
            f"seed={seed}", *dict(args.regimes)[regime]]
    if m.teacher:
        sets.append(f"init_checkpoint={teacher_dir(args) / 'last.pt'}")
    if m.pretrain:
        sets += [f"init_checkpoint={pretrain_dir(args, seed) / 'last.pt'}", "init_modules=null"]
    sets += list(m.overrides)
    return [str(BIN / "xkd-train"), "--config", str(CONFIGS / f"{m.config}.yaml"), "--preset", PRESET,
            *(a for kv in sets for a in ("--set", kv)),
            *common_sets(args, run_dir(args, regime, method, seed), args.steps), "--no-progress"]


def stage_teacher(args: argparse.Namespace) -> None:
    train(teacher_cmd(args), teacher_dir(args), args.teacher_steps, args.threads)


def stage_pretrain(args: argparse.Namespace) -> None:
    if not any(METHODS[m].pretrain for m in args.methods):
        return

    def one(seed: int) -> None:
        train(pretrain_cmd(args, seed), pretrain_dir(args, seed), args.pretrain_steps, args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, args.seeds))


def stage_train(args: argparse.Namespace) -> None:
    jobs = [(r, m, s) for r, _ in args.regimes for s in args.seeds for m in args.methods]
    # camera runs take longer: started first, the workers finish together
    jobs.sort(key=lambda job: job[1] == "baseline")

    def one(job: tuple[str, str, int]) -> None:
        r, m, s = job
        train(train_cmd(args, r, m, s), run_dir(args, r, m, s), args.steps, args.threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


def stage_eval(args: argparse.Namespace) -> None:
    jobs = [(run_dir(args, r, m, s), q) for r, _ in args.regimes for m in args.methods for s in args.seeds
            for q in args.val_sequences]

    def one(job: tuple[Path, str]) -> None:
        rd, seq = job
        out = eval_dir(rd, seq)
        if (out / "metrics.json").is_file() or finished_step(rd) != args.steps:
            return
        run([str(BIN / "xkd-eval"), "--checkpoint", str(rd / "last.pt"), "--data", str(world_root(args)),
             "--sequences", seq, "--cameras", "all", "--out", str(out), "--num-workers", "0",
             "--no-progress"], rd / f"eval-seq{seq}.log", args.threads, append=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))
    if finished_step(teacher_dir(args)) == args.teacher_steps:
        for seq in args.val_sequences:  # what the teacher hands the LiDAR branch on each scored world
            out = eval_dir(teacher_dir(args), seq)
            if not (out / "metrics.json").is_file():
                run([str(BIN / "xkd-eval"), "--checkpoint", str(teacher_dir(args) / "last.pt"),
                     "--data", str(world_root(args)), "--sequences", seq, "--cameras", "all",
                     "--camera-branch", "--out", str(out), "--num-workers", "0", "--no-progress"],
                    out.parent / f"eval-seq{seq}.log", args.threads, append=True)


# ------------------------------------------------------------------------------------------ report


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seconds_per_step(rows: list[dict], best: bool = False) -> float | None:
    """Median logged seconds per step, the first window (start-up) left out; `best`: the fastest window,
    nearest the cost on a machine nothing else loads (the median counts whatever else ran beside)."""
    vals = [r["perf/s_per_step"] for r in rows if "perf/s_per_step" in r]
    vals = vals[1:] or vals
    if not vals:
        return None
    return min(vals) if best else statistics.median(vals)


def percent(metrics: dict, part: str) -> tuple[float, dict[str, float]]:
    """mIoU and per-class IoU (absent: 0) of an xkd-eval metrics.json, in percent whatever its unit."""
    scale = 1.0 if metrics.get("unit") == "percent" else 100.0
    d = metrics[part]
    return d["miou"] * scale, {c: (v or 0.0) * scale for c, v in d["per_class_iou"].items()}


def class_changes(after: list[dict[str, float]], before: list[dict[str, float]]) -> dict[str, dict]:
    """Per-class IoU differences paired by seed (`after[i]` against `before[i]`): the classes whose IoU
    moves by at least `CLASS_CHANGE` on average, largest first."""
    changes = {c: paired([x[c] for x in after], [x[c] for x in before]) for c in after[0]}
    return {c: d for c, d in sorted(changes.items(), key=lambda kv: -abs(kv[1]["mean"]))
            if abs(d["mean"]) >= CLASS_CHANGE}


def versus(row: dict, base: dict) -> dict | None:
    """A method's paired differences to the baseline over the seeds both have: full scan, frustum, and
    the classes whose IoU moves by at least `CLASS_CHANGE` on average (largest first)."""
    common = [s for s in row["seeds"] if s in base["seeds"]]
    if not common:
        return None

    def pick(r: dict, key: str) -> list:
        return [r[key][r["seeds"].index(s)] for s in common]

    return {"seeds": common, "full": paired(pick(row, "full"), pick(base, "full")),
            "frustum": paired(pick(row, "frustum"), pick(base, "frustum")),
            "classes": class_changes(pick(row, "iou"), pick(base, "iou"))}


def teacher_summary(args: argparse.Namespace) -> dict | None:
    """The teacher's pixel mIoU (percent) and per-class IoU on the held-out images, from its log."""
    rows = read_log(teacher_dir(args) / "log.jsonl")
    val = [r for r in rows if "val/miou" in r]
    if not val:
        return None
    last = val[-1]
    points = {}
    for seq in args.val_sequences:
        path = eval_dir(teacher_dir(args), seq) / "metrics.json"
        if path.is_file():
            miou, iou = percent(json.loads(path.read_text()), "frustum")
            points[seq] = {"miou": miou, "iou": iou}
    return {"step": last["step"], "pixel_miou": 100.0 * last["val/miou"],
            "pixel_iou": {k.split("/", 1)[1]: 100.0 * v for k, v in last.items() if k.startswith("val_iou/")},
            "s_per_step": seconds_per_step(rows), "points": points}


def run_distillation(rd: Path) -> dict | None:
    """The `model.distillation` section a run trained with; None without a camera or a config."""
    model = (run_config(rd) or {}).get("model") or {}
    return model.get("distillation") if model.get("use_camera") else None


def collect(args: argparse.Namespace) -> dict:
    """Everything the report states, from the run folders; methods or seeds not evaluated yet are left out."""
    out: dict = {"steps": args.steps, "seeds": list(args.seeds), "gap": args.gap,
                 "train_scans": args.train_scans, "teacher": teacher_summary(args),
                 "methods": {m: METHODS[m].what for m in args.methods},
                 "regimes": {}}
    logs = [read_log(pretrain_dir(args, s) / "log.jsonl") for s in args.seeds]
    pre = [v for v in (seconds_per_step(rows) for rows in logs) if v is not None]
    fast = [v for v in (seconds_per_step(rows, best=True) for rows in logs) if v is not None]
    out["pretrain"] = {"steps": args.pretrain_steps, "s_per_step": statistics.fmean(pre) if pre else None,
                       "s_per_step_fastest": min(fast) if fast else None}
    for regime, _ in args.regimes:
        reg: dict = {}
        for seq in args.val_sequences:
            table: dict = {}
            for m in args.methods:
                seeds, full, frustum, iou, sps, fastest = [], [], [], [], [], []
                for s in args.seeds:
                    path = eval_dir(run_dir(args, regime, m, s), seq) / "metrics.json"
                    if not path.is_file():
                        continue
                    metrics = json.loads(path.read_text())
                    f, per_class = percent(metrics, "full")
                    seeds.append(s)
                    full.append(f)
                    frustum.append(percent(metrics, "frustum")[0])
                    iou.append(per_class)
                    rows = read_log(run_dir(args, regime, m, s) / "log.jsonl")
                    sps.append(seconds_per_step(rows))
                    fastest.append(seconds_per_step(rows, best=True))
                if seeds:
                    sps = [v for v in sps if v is not None]
                    fastest = [v for v in fastest if v is not None]
                    table[m] = {"seeds": seeds, "full": full, "frustum": frustum, "iou": iou,
                                "s_per_step": statistics.fmean(sps) if sps else None,
                                "s_per_step_fastest": min(fastest) if fastest else None,
                                "distillation": run_distillation(run_dir(args, regime, m, seeds[0]))}
            base = table.get("baseline")
            for m, row in table.items():
                if m != "baseline" and base is not None:
                    row["vs_baseline"] = versus(row, base)
            reg[seq] = table
        out["regimes"][regime] = reg
    return out


def _pm(d: dict) -> str:
    return f"{d['mean']:+.1f}" + ("" if d["se"] is None else f" ± {d['se']:.1f}")


def markdown(res: dict) -> str:
    """Tables: per regime and val world, one row per method."""
    lines = []
    t = res.get("teacher")
    if t:
        iou = ", ".join(f"{c} {v:.0f}" for c, v in sorted(t["pixel_iou"].items(), key=lambda kv: kv[1]))
        lines += [f"Camera teacher: pixel mIoU {t['pixel_miou']:.1f} on held-out images (step {t['step']}); "
                  f"per class: {iou}."]
        for seq, p in t.get("points", {}).items():
            lines.append(f"On the points of val sequence {seq} (its KL target): mIoU {p['miou']:.1f}.")
        lines.append("")
    for regime, reg in res["regimes"].items():
        for seq, table in reg.items():
            lines += [f"### regime `{regime}`, val sequence {seq}, {res['steps']} steps", "",
                      "| method | seeds | mIoU full scan (per seed) | vs baseline, full (paired ± se) | "
                      "signs | vs baseline, frustum | classes that change (IoU points) | "
                      "s/step median (fastest window) |",
                      "|---|---|---|---|---|---|---|---|"]
            for m, row in table.items():
                per_seed = ", ".join(f"{v:.1f}" for v in row["full"])
                mean = statistics.fmean(row["full"])
                vs = row.get("vs_baseline")
                sps = "-" if row["s_per_step"] is None else (f"{row['s_per_step']:.2f} "
                                                             f"({row['s_per_step_fastest']:.2f})")
                if vs is None:
                    full = signs = frustum = cls = "-"
                else:
                    full, signs, frustum = _pm(vs["full"]), vs["full"]["signs"], _pm(vs["frustum"])
                    cls = ", ".join(f"{c} {d['mean']:+.1f}" for c, d in vs["classes"].items()) or "-"
                lines.append(f"| {m} | {len(row['seeds'])} | {mean:.1f} ({per_seed}) | {full} | {signs} | "
                             f"{frustum} | {cls} | {sps} |")
            lines.append("")
    p = res.get("pretrain") or {}
    if p.get("s_per_step"):
        lines.append(f"Contrastive pretraining: {p['steps']} steps at {p['s_per_step']:.2f} s/step "
                     f"(fastest window {p['s_per_step_fastest']:.2f}).")
    return "\n".join(lines)


STAGES = ("synth", "teacher", "pretrain", "train", "eval", "report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=(*STAGES, "all"), nargs="+", default=["all"])
    p.add_argument("--regimes", nargs="+", type=parse_regime, default=[parse_regime("labels0.01")])
    p.add_argument("--methods", nargs="+", type=parse_method, default=["baseline", "kd", "pre_kd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--val-sequences", nargs="+", type=parse_sequence, default=list(VAL_SEQS),
                   help=f"worlds scored: the val worlds {list(VAL_SEQS)} or the development world {DEV_SEQ}")
    p.add_argument("--steps", type=int, default=600, help="training steps of every 3D run")
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--ckpt-every", type=int, default=100,
                   help="last.pt interval (an interrupted run resumes from it)")
    p.add_argument("--gap", type=float, default=0.05,
                   help="the 3D world's appearance_intensity_gap (LiDAR cue of the appearance-only pairs)")
    p.add_argument("--train-scans", type=int, default=120)
    p.add_argument("--val-scans", type=int, default=60)
    p.add_argument("--dev-scans", type=int, default=40)
    p.add_argument("--teacher-scans", type=int, default=60, help="frames per teacher training sequence")
    p.add_argument("--teacher-val-scans", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="trainings / evaluations at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--data", type=Path, default=Path("data/stages"))
    p.add_argument("--runs", type=Path, default=Path("runs/stages"))
    p.add_argument("--out", type=Path, default=Path("research/results/xmodel_kd_stages.json"))
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if "baseline" not in args.methods:
        raise SystemExit("--methods must include baseline: every row is compared with it")
    args.stages = STAGES if "all" in args.stage else tuple(s for s in STAGES if s in args.stage)
    stages = {"synth": stage_synth, "teacher": stage_teacher, "pretrain": stage_pretrain,
              "train": stage_train, "eval": stage_eval}
    run_stages(args, stages, collect, markdown)


if __name__ == "__main__":
    main()
