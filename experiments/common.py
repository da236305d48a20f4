"""What every experiment runner needs: where the tools are, how one runs, paired differences, the report."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(cmd: list[str], log: Path | None, threads: int, append: bool = False) -> None:
    """Run one tool with `threads` intra-op threads; its output goes to `log` (appended to it when an
    interrupted run resumes into the same log)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a" if append else "w") as f:
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def paired(values: list[float], ref: list[float]) -> dict:
    """Per-seed differences against the baseline: mean, standard error, and every seed's sign. Both
    runs of a seed share the data order and the 3D network's initialisation, so differences by seed
    cancel what the seed adds."""
    diffs = [a - b for a, b in zip(values, ref, strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"mean": statistics.fmean(diffs), "se": se, "diffs": diffs,
            "signs": "".join("+" if d > 0 else "-" if d < 0 else "0" for d in diffs)}


def run_config(rd: Path) -> dict | None:
    """The config a training run ran with (the `config.yaml` xkd-train writes into its folder), so a report
    states the recipe it measured even after a preset changes; None before the run started."""
    import yaml

    path = rd / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def write_report(res: dict, out: Path, markdown: str) -> None:
    """The results JSON to `out`, its tables to stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown)
    print(f"wrote {out}")


def run_stages(args, stages: dict[str, Callable], collect: Callable, markdown: Callable[[dict], str]) -> None:
    """Run `args.stages` in order: a named stage runs its function, `report` collects the results and
    writes them to `args.out` (JSON) and stdout (tables)."""
    for name in args.stages:
        if name in stages:
            stages[name](args)
            continue
        res = collect(args)
        write_report(res, args.out, markdown(res))
