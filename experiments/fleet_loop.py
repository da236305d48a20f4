"""The fleet loop (issue 31) on synthetic data, end to end: drive a vehicle with a new LiDAR, log
cross-modal pairs with the deployed node, distil, export through the guard, redeploy; measured per
seed on held-out labeled scans of the new sensor and on the old sensor's val world.

    .venv/bin/python -m experiments.fleet_loop --seeds 0 1 2                  # everything (make fleet-loop)
    .venv/bin/python -m experiments.fleet_loop --seeds 0 1 2 --stage report   # the report alone
    # reuse the worlds, the camera teacher and the deployed models of experiments/xmodel_kd_stages.py
    .venv/bin/python -m experiments.fleet_loop --data data/stages --seeds 0 1 2 \\
        --teacher runs/stages/camera_teacher/last.pt \\
        --deployed 'runs/stages/dense-1200steps/kd/seed{seed}/last.pt'

Worlds (`xkd-synth --rig surround`: the same six cameras everywhere, per-pixel class images):
  A        `DATA/world`, generator seed 0, the 64-beam LiDAR of every earlier experiment (1.73 m high,
           +2 to -24.8 degrees): sequence 00 trains the deployed model (and is what `--mix-per-batch`
           mixes into the fine-tune), 01 is A's val world;
  teacher  `DATA/teacher`, generator seed 1, sequences 10, 11 (images) and 12 (held-out images), only
           when the camera teacher is trained here;
  B        `DATA/world_b`, generator seed 2 (other streets), another LiDAR: `--b-beams` (32), mounted at
           `--b-height` (2.0 m) with a vertical field of view `--b-fov-up` / `--b-fov-down` (+10 / -30
           degrees, an HDL-32E's); the cameras hang lower below it (`camera.surround.drop`) so that they sit
           as high above the road as A's: the same cameras on a vehicle with a new LiDAR. Sequence 00 is the
           drive (no label is used), 01 the held-out labeled scans.
Stages (each skips what is finished and resumes what was interrupted; per seed s under `RUNS/seed<s>`):
  synth     the sequences above that the chosen stages need;
  teacher   the camera teacher (config/train/camera_teacher.yaml), unless `--teacher` or `--deployed`;
  deploy    per seed the deployed model: xModel-KD (config/train/xmodel_kd.yaml, synth_surround) on A's
            labeled scans, taught by the frozen teacher, then `xkd-export` ->
            `RUNS/deployed/seed<s>/model.pt`; or `--deployed` (a checkpoint, `{seed}` replaced by the seed);
  bag       `xkd-kitti2bag --compressed jpeg` of B's drive and of B's held-out scans (every camera);
  drive     the drive replayed LIVE through `segment_node` (`xkd-bag-eval --live`, real DDS) with the
            deployed model and `log_pairs:=true`: the pair log `RUNS/seed<s>/pairs`;
  finetune  `xkd-train --config config/train/fleet_finetune.yaml --preset synth_surround` on the log from
            the deployed checkpoint, `--mix-per-batch` labeled scans of A's sequence 00 in every batch;
  export    `xkd-export` with the guard (agreement on the log, held-out mIoU on A's val world, the labeled
            data a user has): `RUNS/seed<s>/model.pt`, or refused (recorded, not an error);
  eval      `xkd-eval`, LiDAR branch alone, of the deployed and the fine-tuned model (its last.pt, accepted
            or not) on B's held-out scans and on A's val world; the deployed model's camera branch (the
            teacher) on the points of B's held-out scans its cameras see (`--camera-branch`);
  redeploy  the node pointed at the exported model: B's held-out bag replayed live through it and scored;
  report    per seed before / after on B and A, paired by seed (mean, standard error, signs), the guard's
            figures and verdict, the drive and the cost -> `--out` JSON and markdown on stdout.
Every world, bag and model is a fixed function of the arguments and the seed; only the live replay
depends on timing (which scans the node had time for): its log is what the fine-tune learns from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.common import BIN, REPO, paired, run, run_config, run_stages
from experiments.xmodel_kd_stages import (  # world A, the teacher's world and its training are the stages'
    CONFIGS,
    PRESET,
    TEACHER_SEED,
    TEACHER_TRAIN,
    TEACHER_VAL,
    class_changes,
    common_sets,
    finished_step,
    percent,
    read_log,
    seconds_per_step,
    sequence_complete,
    teacher_cmd,
    teacher_dir,
    teacher_root,
    train,
    world_root,
)

#: Generator seeds and sequences of the worlds A and B.
A_SEED, A_TRAIN, A_VAL = 0, "00", "01"
B_SEED, B_DRIVE, B_HELDOUT = 2, "00", "01"
#: xkd-export's exit status for a fine-tune its guard refused.
REFUSED = 3
STAGES = ("synth", "teacher", "deploy", "bag", "drive", "finetune", "export", "eval", "redeploy", "report")


# ------------------------------------------------------------------------------------------ folders


def b_root(args: argparse.Namespace) -> Path:
    return args.data / "world_b"


def bag_path(args: argparse.Namespace, sequence: str) -> Path:
    return args.data / f"world_b_{'drive' if sequence == B_DRIVE else 'heldout'}.mcap"


def teacher_ckpt(args: argparse.Namespace) -> Path:
    return args.teacher if args.teacher is not None else teacher_dir(args) / "last.pt"


def seed_dir(args: argparse.Namespace, seed: int) -> Path:
    return args.runs / f"seed{seed}"


def deployed(args: argparse.Namespace, seed: int) -> Path:
    """The deployed model of `seed`: `--deployed` (its `{seed}` filled in) or the one trained here."""
    if args.deployed is not None:
        return Path(args.deployed.replace("{seed}", str(seed)))
    return args.runs / "deployed" / f"seed{seed}" / "model.pt"


def before_dir(args: argparse.Namespace, seed: int) -> Path:
    """Where the deployed model's evaluations go (once for a `--deployed` without `{seed}`)."""
    if args.deployed is None:
        return args.runs / "deployed" / f"seed{seed}"
    if "{seed}" in args.deployed:
        return seed_dir(args, seed) / "deployed"
    return args.runs / "deployed"


def eval_dir(base: Path, world: str) -> Path:
    return base / f"eval-{world}"


WORLDS = {"b": "B held-out", "a": "A val"}
#: The evaluation of the deployed model's camera branch, the fine-tune's teacher, on B's held-out scans.
TEACHER_B = "teacher-b"


def world_data(args: argparse.Namespace, world: str) -> tuple[Path, str]:
    return (b_root(args), B_HELDOUT) if world in ("b", TEACHER_B) else (world_root(args), A_VAL)


# ------------------------------------------------------------------------------------------ tools


def sets(*pairs: str) -> list[str]:
    return [a for kv in pairs for a in ("--set", kv)]


def run_status(cmd: list[str], log: Path, threads: int) -> int:
    """Run one tool (output to `log`) and return its exit status instead of raising."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        return subprocess.run(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode


def pool(args: argparse.Namespace, fn, jobs: list) -> None:
    with ThreadPoolExecutor(args.jobs) as ex:
        list(ex.map(fn, jobs))


# ------------------------------------------------------------------------------------------ synth


def b_lidar_sets(args: argparse.Namespace) -> list[str]:
    """xkd-synth settings of B's LiDAR, and the cameras' drop below it that keeps them as high above the
    road as on A (same cameras, another LiDAR mounting)."""
    from xkd_core.synth.config import LidarConfig, SurroundConfig

    drop = SurroundConfig().drop + args.b_height - LidarConfig().height
    return ["--beams", str(args.b_beams), "--fov-up", str(args.b_fov_up), "--fov-down", str(args.b_fov_down),
            "--set", f"lidar.height={args.b_height}", "--set", f"camera.surround.drop={drop:.4f}"]


def synth_jobs(args: argparse.Namespace) -> list[tuple[Path, str, int, int, list[str]]]:
    """(root, sequence, scans, generator seed, extra flags) of every sequence the chosen stages need."""
    stages, jobs = set(args.stages), []
    trains_teacher = args.deployed is None and args.teacher is None
    if trains_teacher and stages & {"teacher"}:
        jobs += [(teacher_root(args), s, args.teacher_scans, TEACHER_SEED, []) for s in TEACHER_TRAIN]
        jobs.append((teacher_root(args), TEACHER_VAL, args.teacher_val_scans, TEACHER_SEED, []))
    if (args.deployed is None and "deploy" in stages) or (args.mix_per_batch != 0 and "finetune" in stages):
        jobs.append((world_root(args), A_TRAIN, args.a_train_scans, A_SEED, []))
    if stages & {"export", "eval"}:
        jobs.append((world_root(args), A_VAL, args.a_val_scans, A_SEED, []))
    if "bag" in stages:
        jobs.append((b_root(args), B_DRIVE, args.b_drive_scans, B_SEED, b_lidar_sets(args)))
    if stages & {"bag", "eval"}:
        jobs.append((b_root(args), B_HELDOUT, args.b_heldout_scans, B_SEED, b_lidar_sets(args)))
    return list({(j[0], j[1]): j for j in jobs}.values())


def stage_synth(args: argparse.Namespace) -> None:
    def one(job: tuple[Path, str, int, int, list[str]]) -> None:
        root, seq, scans, seed, extra = job
        if sequence_complete(root, seq, scans):
            return
        run([str(BIN / "xkd-synth"), "--out", str(root), "--rig", "surround", "--sequences", seq,
             "--scans", str(scans), "--seed", str(seed), "--appearance-intensity-gap", str(args.gap),
             *extra, *sets(*args.synth_set), "--overwrite", "--quiet"], None, args.threads)

    pool(args, one, synth_jobs(args))


# ----------------------------------------------------------------------------------- the deployed model


def stage_teacher(args: argparse.Namespace) -> None:
    if args.deployed is not None or args.teacher is not None:
        return
    train(teacher_cmd(args), teacher_dir(args), args.teacher_steps, args.threads)


def stage_deploy(args: argparse.Namespace) -> None:
    if args.deployed is not None:
        return

    def one(seed: int) -> None:
        rd = deployed(args, seed).parent
        cmd = [str(BIN / "xkd-train"), "--config", str(CONFIGS / "xmodel_kd.yaml"), "--preset", PRESET,
               *sets(f"data.root={world_root(args)}", f"data.train_sequences=[{A_TRAIN}]",
                     "data.val_sequences=[]", f"seed={seed}", f"init_checkpoint={teacher_ckpt(args)}",
                     *args.deploy_set),
               *common_sets(args, rd, args.deploy_steps), "--no-progress"]
        train(cmd, rd, args.deploy_steps, args.threads)
        if not deployed(args, seed).is_file():
            run([str(BIN / "xkd-export"), "--checkpoint", str(rd / "last.pt"), "--out",
                 str(deployed(args, seed)), "--description", f"xModel-KD on world A (64 beams), seed {seed}"],
                rd / "export.log", args.threads)

    pool(args, one, list(args.seeds))


# ------------------------------------------------------------------------------------------ drive and log


def stage_bag(args: argparse.Namespace) -> None:
    for seq in (B_DRIVE, B_HELDOUT):
        out = bag_path(args, seq)
        if (out / "metadata.yaml").is_file():
            continue
        shutil.rmtree(out, ignore_errors=True)  # a conversion that died half way
        run([str(BIN / "xkd-kitti2bag"), "--data", str(b_root(args)), "--sequence", seq, "--out", str(out),
             "--compressed", "jpeg", "--no-progress"], None, args.threads)


def live_replay(args: argparse.Namespace, bag: Path, checkpoint: Path, out: Path, log: Path,
                params: list[str]) -> None:
    """`xkd-bag-eval --live`: the bag over DDS into segment_node, scored against the bag's labels."""
    node = ["device:=cpu", f"cpu_threads:={args.threads}", "qos.input.reliability:=reliable", *params]
    cmd = [str(BIN / "xkd-bag-eval"), "--bag", str(bag), "--out", str(out), "--checkpoint", str(checkpoint),
           "--live", "--rate-scale", str(args.rate_scale), "--startup-timeout", "300", "--no-progress",
           *(a for p in node for a in ("--param", p))]
    run(cmd, log, args.threads)


def pair_dir(args: argparse.Namespace, seed: int) -> Path:
    return seed_dir(args, seed) / "pairs"


def stage_drive(args: argparse.Namespace) -> None:
    for seed in args.seeds:  # one live replay at a time: the node's timing decides what it logs
        sd = seed_dir(args, seed)
        if (sd / "drive" / "report.json").is_file():
            continue
        shutil.rmtree(pair_dir(args, seed), ignore_errors=True)  # a replay that died: start the log over
        shutil.rmtree(sd / "drive", ignore_errors=True)
        live_replay(args, bag_path(args, B_DRIVE), deployed(args, seed), sd / "drive", sd / "drive.log",
                    ["log_pairs:=true", f"pair_log.dir:={pair_dir(args, seed).resolve()}",
                     f"pair_log.every_n:={args.every_n}", "pair_log.queue:=32"])


# ------------------------------------------------------------------------------------------ distil, export


def finetune_dir(args: argparse.Namespace, seed: int) -> Path:
    return seed_dir(args, seed) / "finetune"


def finetune_cmd(args: argparse.Namespace, seed: int) -> list[str]:
    mix = []
    if args.mix_per_batch != 0:
        mix = [f"data.mix.root={world_root(args)}", f"data.mix.sequences=[{A_TRAIN}]"]
        if args.mix_per_batch is not None:
            mix.append(f"data.mix.per_batch={args.mix_per_batch}")
    return [str(BIN / "xkd-train"), "--config", str(CONFIGS / "fleet_finetune.yaml"), "--preset", PRESET,
            *sets(f"data.root={pair_dir(args, seed)}", f"init_checkpoint={deployed(args, seed)}",
                  f"seed={seed}", *mix, *args.finetune_set),
            *common_sets(args, finetune_dir(args, seed), args.finetune_steps), "--no-progress"]


def stage_finetune(args: argparse.Namespace) -> None:
    def one(seed: int) -> None:
        if not (seed_dir(args, seed) / "drive" / "report.json").is_file():
            return
        train(finetune_cmd(args, seed), finetune_dir(args, seed), args.finetune_steps, args.threads)

    pool(args, one, list(args.seeds))


def guard_path(args: argparse.Namespace, seed: int) -> Path:
    return seed_dir(args, seed) / "guard.json"


def stage_export(args: argparse.Namespace) -> None:
    def one(seed: int) -> None:
        sd = seed_dir(args, seed)
        if guard_path(args, seed).is_file() or finished_step(finetune_dir(args, seed)) != args.finetune_steps:
            return
        cmd = [str(BIN / "xkd-export"), "--checkpoint", str(finetune_dir(args, seed) / "last.pt"),
               "--out", str(sd / "model.pt"), "--guard-report", str(guard_path(args, seed)),
               "--heldout", str(world_root(args)), "--heldout-sequences", A_VAL,
               "--min-agreement-ratio", str(args.min_agreement_ratio),
               "--max-miou-drop", str(args.max_miou_drop), "--guard-scans", str(args.guard_scans),
               "--description", f"fleet fine-tune on world B's drive log, seed {seed}"]
        status = run_status(cmd, sd / "export.log", args.threads)
        if status not in (0, REFUSED):
            raise RuntimeError(f"xkd-export failed with status {status}: see {sd / 'export.log'}")

    pool(args, one, list(args.seeds))


# ------------------------------------------------------------------------------------------ measure


def stage_eval(args: argparse.Namespace) -> None:
    jobs = []
    for seed in args.seeds:
        if deployed(args, seed).is_file():
            jobs += [(deployed(args, seed), before_dir(args, seed), w) for w in (*WORLDS, TEACHER_B)]
        if finished_step(finetune_dir(args, seed)) == args.finetune_steps:
            jobs += [(finetune_dir(args, seed) / "last.pt", seed_dir(args, seed), w) for w in WORLDS]
    jobs = list({(base, w): (ckpt, base, w) for ckpt, base, w in jobs}.values())

    def one(job: tuple[Path, Path, str]) -> None:
        ckpt, base, world = job
        out = eval_dir(base, world)
        if (out / "metrics.json").is_file():
            return
        root, seq = world_data(args, world)
        limit = [] if args.eval_scans is None else ["--max-scans", str(args.eval_scans)]
        branch = ["--camera-branch"] if world == TEACHER_B else []  # scored on the points it sees
        run([str(BIN / "xkd-eval"), "--checkpoint", str(ckpt), "--data", str(root), "--sequences", seq,
             "--cameras", "all", "--out", str(out), "--num-workers", "0", "--no-progress", *limit, *branch],
            base / f"eval-{world}.log", args.threads)

    pool(args, one, jobs)


def stage_redeploy(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        sd = seed_dir(args, seed)
        if not (sd / "model.pt").is_file() or (sd / "redeploy" / "report.json").is_file():
            continue  # refused (the node keeps the deployed model), not exported yet, or done
        shutil.rmtree(sd / "redeploy", ignore_errors=True)
        live_replay(args, bag_path(args, B_HELDOUT), sd / "model.pt", sd / "redeploy", sd / "redeploy.log",
                    [])


# ------------------------------------------------------------------------------------------ report


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def drive_summary(args: argparse.Namespace, seed: int) -> dict | None:
    """What the live drive logged: scans played / segmented, pair files, views per pair file."""
    from xkd_core.data.pairlog import list_pair_files, read_pair_file

    report = read_json(seed_dir(args, seed) / "drive" / "report.json")
    if report is None:
        return None
    files = list_pair_files(pair_dir(args, seed)) if pair_dir(args, seed).is_dir() else []
    views = [len(read_pair_file(files[0]).views)] if files else []
    return {"scans_published": (report.get("player") or {}).get("scans_published"),
            "scans_segmented": report["frames"]["checked"], "pair_files": len(files),
            "views_per_file": views[0] if views else None,
            "node_miou_drive": report["miou"]["full"]}


def collect(args: argparse.Namespace) -> dict:
    """Everything the report states, from the run folders; seeds not finished are left out of the pairs."""
    out: dict = {"seeds": list(args.seeds), "finetune_steps": args.finetune_steps,
                 "mix_per_batch": args.mix_per_batch, "deployed": args.deployed or "trained here",
                 "b_lidar": {"beams": args.b_beams, "height": args.b_height, "fov_up": args.b_fov_up,
                             "fov_down": args.b_fov_down},
                 "per_seed": {}, "paired": {}, "classes": {}}
    for seed in args.seeds:
        row: dict = {"drive": drive_summary(args, seed), "guard": read_json(guard_path(args, seed)),
                     "exported": (seed_dir(args, seed) / "model.pt").is_file()}
        for world in WORLDS:
            for when, base in (("before", before_dir(args, seed)), ("after", seed_dir(args, seed))):
                metrics = read_json(eval_dir(base, world) / "metrics.json")
                if metrics is not None:
                    full, iou = percent(metrics, "full")
                    row[f"{when}_{world}"] = {"full": full, "frustum": percent(metrics, "frustum")[0],
                                              "iou": iou}
        teacher = read_json(eval_dir(before_dir(args, seed), TEACHER_B) / "metrics.json")
        row["teacher_b"] = None if teacher is None else percent(teacher, "frustum")[0]
        redeploy = read_json(seed_dir(args, seed) / "redeploy" / "report.json")
        row["redeploy_node_miou_b"] = None if redeploy is None else redeploy["miou"]["full"]
        rows = read_log(finetune_dir(args, seed) / "log.jsonl")
        row["finetune_s_per_step"] = seconds_per_step(rows)
        ran = run_config(finetune_dir(args, seed))  # what the fine-tune ran with (the KL's settings)
        row["finetune_distillation"] = None if ran is None else ran["model"]["distillation"]
        row["finetune_mix_per_batch"] = None if ran is None else (
            ran["data"]["mix"]["per_batch"] if ran["data"]["mix"]["root"] else 0)
        out["per_seed"][str(seed)] = row
    ran_mix = {r["finetune_mix_per_batch"] for r in out["per_seed"].values()} - {None}
    if len(ran_mix) == 1:  # what the fine-tunes ran with (the config's value unless --mix-per-batch)
        out["mix_per_batch"] = ran_mix.pop()
    for world in WORLDS:
        done = [r for r in out["per_seed"].values() if f"before_{world}" in r and f"after_{world}" in r]
        if not done:
            continue
        after, before = [r[f"after_{world}"] for r in done], [r[f"before_{world}"] for r in done]
        for part in ("full", "frustum"):
            out["paired"][f"{world}_{part}"] = paired([a[part] for a in after], [b[part] for b in before])
        out["classes"][world] = class_changes([a["iou"] for a in after], [b["iou"] for b in before])
    return out


def _pm(d: dict) -> str:
    return f"{d['mean']:+.1f}" + ("" if d["se"] is None else f" ± {d['se']:.1f}")


def markdown(res: dict, heading: bool = True) -> str:
    """One row per seed, then the paired differences (under a heading naming the set-up, unless the page
    that shows it has its own)."""
    b = res["b_lidar"]
    kls = [r.get("finetune_distillation") or {} for r in res["per_seed"].values()]
    arbiter = ", the KL arbitrated by their labels (kd_arbiter)" if kls and all(
        k.get("kd_arbiter") for k in kls) else ""
    lines = [f"### Fleet loop: world B ({b['beams']} beams at {b['height']} m, {b['fov_up']:+g} / "
             f"{b['fov_down']:+g} degrees), {res['finetune_steps']} fine-tune steps, "
             f"{res['mix_per_batch']} labeled A scan(s) per batch{arbiter}", ""] if heading else []
    lines += ["| seed | logged scans (views) | B held-out before -> after | teacher on B | "
              "A val before -> after | agreement deployed -> fine-tuned | guard | node on B after redeploy | "
              "s/step |",
              "|---|---|---|---|---|---|---|---|---|"]

    def pair(row: dict, world: str) -> str:
        if f"before_{world}" not in row or f"after_{world}" not in row:
            return "-"
        return f"{row[f'before_{world}']['full']:.1f} -> {row[f'after_{world}']['full']:.1f}"

    for seed, row in res["per_seed"].items():
        d, g = row["drive"], row["guard"]
        logged = "-" if d is None else f"{d['pair_files']} ({d['views_per_file']})"
        agree = "-"
        verdict = "-"
        if g is not None:
            a = g.get("agreement")
            if a:
                agree = f"{a['deployed']:.1f} -> {a['candidate']:.1f}"
            verdict = "accepted" if g["ok"] else "refused: " + ", ".join(g["refused"])
        node = "-" if row["redeploy_node_miou_b"] is None else f"{row['redeploy_node_miou_b']:.1f}"
        sps = "-" if row["finetune_s_per_step"] is None else f"{row['finetune_s_per_step']:.2f}"
        teacher = "-" if row.get("teacher_b") is None else f"{row['teacher_b']:.1f}"
        lines.append(f"| {seed} | {logged} | {pair(row, 'b')} | {teacher} | {pair(row, 'a')} | {agree} | "
                     f"{verdict} | {node} | {sps} |")
    lines.append("")
    for key, d in res["paired"].items():
        world, part = key.split("_")
        lines.append(f"- {WORLDS[world]}, {part}: after - before {_pm(d)} mIoU points over "
                     f"{len(d['diffs'])} seed(s), signs {d['signs']}")
    for world, moves in res.get("classes", {}).items():
        lines.append(f"- {WORLDS[world]}, classes that change (IoU points, mean over seeds): "
                     + (", ".join(f"{c} {d['mean']:+.1f}" for c, d in moves.items()) or "none"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=(*STAGES, "all"), nargs="+", default=["all"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--deployed", default=None,
                   help="the deployed checkpoint ({seed} is replaced by the seed); default: one trained per "
                        "seed")
    p.add_argument("--teacher", type=Path, default=None,
                   help="camera teacher checkpoint for the deployed models trained here (default: trained)")
    p.add_argument("--data", type=Path, default=Path("data/fleet"))
    p.add_argument("--runs", type=Path, default=Path("runs/fleet"))
    p.add_argument("--out", type=Path, default=Path("research/results/fleet_loop.json"))
    w = p.add_argument_group("worlds")
    w.add_argument("--a-train-scans", type=int, default=120)
    w.add_argument("--a-val-scans", type=int, default=60)
    w.add_argument("--b-drive-scans", type=int, default=120)
    w.add_argument("--b-heldout-scans", type=int, default=60)
    w.add_argument("--teacher-scans", type=int, default=60, help="frames per teacher training sequence")
    w.add_argument("--teacher-val-scans", type=int, default=20)
    w.add_argument("--gap", type=float, default=0.05, help="appearance_intensity_gap of every world")
    w.add_argument("--b-beams", type=int, default=32)
    w.add_argument("--b-height", type=float, default=2.0, help="B's LiDAR height above the road (A: 1.73 m)")
    w.add_argument("--b-fov-up", type=float, default=10.0)
    w.add_argument("--b-fov-down", type=float, default=-30.0)
    w.add_argument("--synth-set", action="append", default=[], metavar="KEY=VALUE",
                   help="xkd-synth --set for every world (e.g. smaller images for a quick run)")
    t = p.add_argument_group("training")
    t.add_argument("--teacher-steps", type=int, default=2000)
    t.add_argument("--deploy-steps", type=int, default=1200, help="steps of each deployed model trained here")
    t.add_argument("--deploy-set", action="append", default=[], metavar="KEY=VALUE",
                   help="xkd-train --set for the deployed models trained here")
    t.add_argument("--finetune-steps", type=int, default=300)
    t.add_argument("--mix-per-batch", type=int, default=None,
                   help="labeled scans of A's training sequence in every fine-tune batch, beside the two "
                        "logged ones (default: fleet_finetune.yaml's, 4; 0: the log alone)")
    t.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="xkd-train --set for the fine-tune")
    t.add_argument("--ckpt-every", type=int, default=100, help="last.pt interval (resume point)")
    d = p.add_argument_group("drive, guard, evaluation")
    d.add_argument("--rate-scale", type=float, default=0.25,
                   help="live replay speed (the node on a CPU needs time for every scan it logs)")
    d.add_argument("--every-n", type=int, default=1, help="the node's pair_log.every_n")
    d.add_argument("--min-agreement-ratio", type=float, default=0.8)
    d.add_argument("--max-miou-drop", type=float, default=1.0)
    d.add_argument("--guard-scans", type=int, default=40)
    d.add_argument("--eval-scans", type=int, default=None, help="xkd-eval --max-scans (default: every scan)")
    d.add_argument("--jobs", type=int, default=2, help="trainings / evaluations at once")
    d.add_argument("--threads", type=int, default=1, help="torch threads per job")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.stages = STAGES if "all" in args.stage else tuple(s for s in STAGES if s in args.stage)
    stages = {"synth": stage_synth, "teacher": stage_teacher, "deploy": stage_deploy, "bag": stage_bag,
              "drive": stage_drive, "finetune": stage_finetune, "export": stage_export, "eval": stage_eval,
              "redeploy": stage_redeploy}
    run_stages(args, stages, collect, markdown)


if __name__ == "__main__":
    main()
