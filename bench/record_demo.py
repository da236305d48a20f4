"""Record what the last `make demo` measured into bench/results/demo.json, the file the README's demo
figures are rendered from (`python -m bench.report`).

Run after `make demo`: .venv/bin/python -m bench.record_demo [--report demo_out/eval/report.json]

Keeps the figures the README quotes (scans scored, mIoU full scan / camera frustum, latency
percentiles, replay rate, model), the report's date and this machine, and copies the two pictures the
README shows into docs/img/ (the node's labels in the camera image, the bird's-eye prediction / error).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine_info, write_json

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
#: demo output (relative to the demo folder) -> the README's picture
PICTURES = {"overlay.png": "demo_overlay.png", "eval/bev.png": "demo_bev.png"}


def demo_record(report: dict[str, Any], date: str) -> dict[str, Any]:
    """The README's demo figures out of an `xkd-demo` report (eval/report.json with its `demo` section);
    the machine is the caller's to add."""
    if "demo" not in report:
        raise ValueError("not an xkd-demo report: no 'demo' section (an xkd-bag-eval report?)")
    lat = report["latency_ms"]
    return {
        "what": "make demo: synthetic drive replayed live through segment_node, scored against ground truth",
        "command": "make demo", "date": date,
        "device": str((report.get("node_diagnostics") or {}).get("device", "?")),
        "checkpoint": Path(report["checkpoint"]).name,
        "frames": {k: report["frames"][k] for k in ("scored", "with_ground_truth", "dropped")},
        "replay_hz": report["demo"]["replay_hz"],
        "miou": {k: report["miou"][k] for k in ("full", "frustum")},
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99")},
        "latency_definition": report.get("latency_definition", "?"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=Path, default=Path("demo_out/eval/report.json"))
    p.add_argument("--out", type=Path, default=RESULTS / "demo.json")
    p.add_argument("--note", default="", help="printed beside the figures, e.g. what else loaded the machine")
    args = p.parse_args(argv)
    if not args.report.is_file():
        p.error(f"--report: no file {args.report} (run `make demo` first)")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(args.report.stat().st_mtime))
    record = demo_record(json.loads(args.report.read_text()), date)
    record["machine"] = machine_info(record["device"])  # the GPU's name too when the node ran on one
    if args.note:
        record["note"] = args.note
    write_json(args.out, record)
    demo_dir = args.report.parent.parent
    for src, dst in PICTURES.items():
        if (demo_dir / src).is_file():
            shutil.copyfile(demo_dir / src, IMG / dst)
            print(f"copied {demo_dir / src} to {IMG / dst}")
    print(f"wrote {args.out}; now run python -m bench.report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
