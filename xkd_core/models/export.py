"""`xkd-export`: a training checkpoint -> a deployment checkpoint for the node (training state dropped).

    xkd-export --checkpoint runs/xmodel_kd/last.pt --out model.pt --description "..." [--lidar-only]
    xkd-export --checkpoint runs/fleet/finetune/last.pt --out model.pt \\
        [--heldout data/source --heldout-sequences 01] [--force]

A fine-tune on a pair log (`data.source: pairlog`, config/train/fleet_finetune.yaml) is checked before
it is written (`xkd_core.evaluation.finetune_guard`, docs/fleet_loop.md) against the model it started
from (its `init_checkpoint`, or `--deployed`): its agreement with the camera teacher on the log
(`--log`, default the log it trained on) must not collapse, and with `--heldout` its mIoU on those
labeled scans must not fall. Any checkpoint gets the checks that `--log` / `--heldout` ask for. A
refused model is not written (exit status 3) unless `--force`; the guard's report goes to
`--guard-report` (default: beside `--out`, `<name>.guard.json`) and into the exported checkpoint
(`guard`). Exit status 2: bad input, or a guard that cannot run (without `--force`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xkd_core.models.checkpoint import CheckpointError, export_checkpoint, load_checkpoint

#: Exit status of a fine-tune the guard refused (not written).
REFUSED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xkd-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt / best.pt)")
    p.add_argument("--out", required=True, help="deployment checkpoint to write")
    p.add_argument("--description", default="", help="what the model is and what it was trained on")
    p.add_argument("--lidar-only", action="store_true",
                   help="drop the camera branch (a vehicle without cameras, or a smaller file): the LiDAR "
                        "branch predicts the same, fusion is no longer possible")
    g = p.add_argument_group("guard (fine-tunes; docs/fleet_loop.md)")
    g.add_argument("--deployed", default=None,
                   help="the model the fine-tune must not be worse than (default: its init_checkpoint)")
    g.add_argument("--log", default=None,
                   help="pair log to measure the agreement with the camera teacher on (default: the log a "
                        "fine-tune on a pair log trained on)")
    g.add_argument("--heldout", default=None, metavar="ROOT",
                   help="labeled SemanticKITTI-format scans the fine-tune never saw: its mIoU must not fall")
    g.add_argument("--heldout-sequences", nargs="+", default=[], metavar="SEQ",
                   help="sequences of --heldout (default: the official val split)")
    g.add_argument("--min-agreement-ratio", type=float, default=0.8,
                   help="refused when its agreement is below this times the deployed model's (default 0.8)")
    g.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="refused when its held-out mIoU is more than this many points lower (default 1.0)")
    g.add_argument("--guard-scans", type=int, default=50,
                   help="at most this many scans per check, evenly spaced (default 50)")
    g.add_argument("--guard-report", default=None, help="where to write the guard's report (JSON)")
    g.add_argument("--force", action="store_true",
                   help="write the model even when the guard refuses it or cannot run (the report says so)")
    return p


def guard_inputs(ckpt: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """What the guard checks against (deployed model, pair log, held-out set, cameras), or None when the
    checkpoint is no fine-tune on a pair log and no check was asked for."""
    train_cfg = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    data = train_cfg.get("data") if isinstance(train_cfg.get("data"), dict) else {}
    on_log = data.get("source") == "pairlog"
    if not (on_log or args.log or args.heldout):
        return None
    return {"deployed": args.deployed or train_cfg.get("init_checkpoint"),
            "log": args.log or (data.get("root") if on_log else None),
            "heldout": args.heldout, "sequences": [str(s) for s in args.heldout_sequences],
            "cameras": data.get("cameras", "all") if on_log and not args.log else "all"}


def run_guard(src: str, inputs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The guard's report; a guard that cannot run raises ValueError / FileNotFoundError naming why."""
    from xkd_core.data.semantickitti import DataFormatError
    from xkd_core.evaluation.finetune_guard import GuardThresholds, HeldOut, check_finetune

    deployed = inputs["deployed"]
    if not deployed:
        raise ValueError("no deployed model to compare the fine-tune with (no init_checkpoint): give "
                         "--deployed")
    if not Path(deployed).is_file():
        raise FileNotFoundError(f"deployed checkpoint {deployed} not found: give --deployed")
    log = inputs["log"]
    if log is not None and not Path(log).expanduser().is_dir():
        raise FileNotFoundError(f"pair log {log} not found: give --log")
    thresholds = GuardThresholds(args.min_agreement_ratio, args.max_miou_drop, args.guard_scans)
    heldout = None if not inputs["heldout"] else HeldOut(inputs["heldout"], tuple(inputs["sequences"]))
    try:
        return check_finetune(src, deployed, log, heldout, thresholds, cameras=inputs["cameras"])
    except DataFormatError as exc:
        raise ValueError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    from xkd_core.evaluation.finetune_guard import summary_lines

    args = build_parser().parse_args(argv)
    try:
        inputs = guard_inputs(load_checkpoint(args.checkpoint), args)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"xkd-export: {exc}", file=sys.stderr)
        return 2
    report = None
    if inputs is not None:
        report_path = Path(args.guard_report or Path(args.out).with_suffix(".guard.json"))
        try:
            report = run_guard(args.checkpoint, inputs, args)
        except (ValueError, FileNotFoundError, CheckpointError) as exc:
            if not args.force:
                print(f"xkd-export: the fine-tune guard cannot run: {exc} (--force exports unchecked)",
                      file=sys.stderr)
                return 2
            report = {"schema": "xkd.finetune_guard/1", "candidate": args.checkpoint, "ok": False,
                      "refused": [], "skipped": str(exc)}
        report["forced"] = bool(args.force and not report["ok"])
        for line in summary_lines(report):
            print(line)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1) + "\n")
        if not report["ok"] and not args.force:
            print(f"xkd-export: refused ({', '.join(report['refused'])}): {args.out} not written; the "
                  f"guard's report is {report_path} (--force writes it anyway)", file=sys.stderr)
            return REFUSED
        if not report["ok"]:
            why = ", ".join(report["refused"]) or f"guard skipped: {report.get('skipped')}"
            print(f"xkd-export: WARNING: exporting a fine-tune the guard did not pass ({why}): --force")
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.description,
                                extra=None if report is None else {"guard": report},
                                lidar_only=args.lidar_only)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"xkd-export: {exc}", file=sys.stderr)
        return 2
    size = Path(args.checkpoint).stat().st_size, out.stat().st_size
    print(f"wrote {out} ({size[1] / 1e6:.1f} MB; training checkpoint {size[0] / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
