"""Every benchmark in one go (`make bench`), then the tables of docs/performance.md from the results.

Run: .venv/bin/python -m bench.run_all [--quick] [--threads N] [--skip node train ...]

Steps, each in its own process so that no benchmark inherits another's threads, caches or memory:
PointCloud2 <-> numpy (`bench_pointcloud`), one DDS hop of a large cloud with and without the Fast DDS
profile (`bench_transport`), per-stage latency against scan size (`bench_stages`),
the node end to end at 10 and 20 Hz (`bench_node`, at the synthetic scan's ~128k points and at 30k,
a size a 2-core CPU sustains), training throughput (`bench_train`), and `report`. On a machine
with CUDA the GPU rows run too (spconv and spconv-triton, fp32 and fp16); without it the GPU
stage and training scripts still run, to record in their results why nothing was measured.
Sized for ~10 minutes on a quiet 2-core CPU; `--quick` is a validation run of about 3 minutes whose
figures are not meaningful (few scans, short node runs). `--threads` caps torch and the BLAS/OpenMP
pools of every step (use 1 on a machine that other jobs load: oversubscribed thread pools spin and
make everything several times slower). Writes bench/results/run_all.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import IMAGES, REPO, RESULTS, THREAD_ENV, load_average, now_utc, write_json

STEPS = ("pointcloud", "transport", "stages", "node", "train")


def plan(quick: bool, threads: int, cuda: bool) -> list[tuple[str, list[str]]]:
    """(name, module arguments) of every step, full or quick."""
    t = ["--threads", str(threads)]
    stages = ["--scans", "10", "--warmup", "2"] if quick else ["--scans", "200", "--warmup", "5"]
    node = ["--seconds", "5", "--warmup", "2"] if quick else ["--seconds", "30", "--warmup", "3"]
    train = ["--steps", "2", "--warmup-steps", "1"] if quick else ["--steps", "12", "--warmup-steps", "3"]
    cuda_stages = ["bench.bench_stages", "--device", "cuda", "--backends", "spconv", "spconv_triton",
                   "--precisions", "fp32", "fp16", *stages]
    steps = [
        ("pointcloud", ["bench.bench_pointcloud", "--reps", "200" if quick else "300"]),
        ("transport", ["bench.bench_transport", *(["--messages", "20", "--rounds", "1"] if quick else [])]),
        ("stages", ["bench.bench_stages", "--device", "cpu", *stages, *t]),
        ("stages", cuda_stages),
        ("node", ["bench.bench_node", "--device", "cpu", "--rates", "10", "20", "--points", "0", "30000",
                  *node, "--threads", str(threads or 2)]),
        ("train", ["bench.bench_train", "--device", "cpu", *train, *t]),
        ("train", ["bench.bench_train", "--device", "cuda", *train]),
    ]
    if cuda:  # the deployable size too (random weights: same cost), and the node on the GPU
        steps.insert(4, ("stages", [*cuda_stages, "--checkpoint", "random-full", "--plot",
                                    str(IMAGES / "stage_latency_cuda_full.png"),
                                    "--out", str(RESULTS / "stages_cuda_full.json")]))
        steps.insert(6, ("node", ["bench.bench_node", "--device", "cuda", "--rates", "10", "20",
                                  "--points", "0", *node, "--out", str(RESULTS / "node_cuda.json")]))
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short validation run (figures not meaningful)")
    p.add_argument("--threads", type=int, default=0, help="torch + BLAS threads per step; 0 = defaults")
    p.add_argument("--skip", nargs="*", default=[], choices=list(STEPS), help="steps to leave out")
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    env = dict(os.environ)
    if args.threads > 0:
        env.update({k: str(args.threads) for k in THREAD_ENV})
    summary: dict[str, Any] = {"mode": "quick" if args.quick else "full", "started": now_utc(),
                               "cores": os.cpu_count(), "cuda": cuda, "threads": args.threads,
                               "load_avg_start": load_average(), "steps": []}
    t_all = time.perf_counter()
    failed = False
    for name, cmd in plan(args.quick, args.threads, cuda):
        command = " ".join(["python -m", *cmd]).replace(f"{REPO}/", "")
        if name in args.skip:
            summary["steps"].append({"name": name, "status": "skipped (--skip)", "command": command})
            continue
        print(f"\n=== {name}: {command}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env=env).returncode
        status = "ok" if rc == 0 else f"failed (exit {rc})"
        failed |= rc != 0
        summary["steps"].append({"name": name, "status": status, "command": command,
                                 "wall_s": round(time.perf_counter() - t, 1)})
    summary["wall_s"] = round(time.perf_counter() - t_all, 1)
    summary["load_avg_end"] = load_average()
    write_json(RESULTS / "run_all.json", summary)

    from bench.report import main as report

    rc = report([])
    print(f"\nbench: {summary['wall_s']:.0f} s, {'some steps FAILED' if failed else 'all steps ok'}")
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
