"""Render the tables of docs/performance.md from bench/results/*.json, so the doc never drifts from them.

Run: .venv/bin/python -m bench.report [--results bench/results] [--doc docs/performance.md] [--check]

The doc holds marker pairs `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`; everything between a
pair is replaced by the rendered section NAME (`run`, `stages`, `pointcloud`, `node`, `train`,
`targets`, `ab`); text outside the markers (analysis, comparisons) is left alone. A results file that
does not exist renders as "not run". `--check` changes nothing and exits 1 when the doc is stale.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS

DOC = REPO / "docs" / "performance.md"
STAGES = ("decode", "preprocess", "voxelize", "forward_3d", "gather", "encode", "overlay")
#: SPEC section 6.
TARGET_GPU_INFERENCE_MS = 15.0
TARGET_NODE_P99_MS = 50.0
TARGET_CONVERSION_MS = 2.0
TARGET_POINTS = 120_000
GPU_TARGET = "GPU inference p50 <= 15 ms, 120k points (H100)"


def _num(x: Any, unit: str = "") -> str:
    """A figure with precision that suits its size; '-' for missing values."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    x = float(x)
    text = f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
    return text + unit


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    if isinstance(m, str):
        return m
    where = m.get("gpu") or f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores)"
    return f"{where}, torch {m.get('torch', '?')}, spconv {m.get('spconv') or m.get('spconv_triton') or '?'}"


def _context(data: dict[str, Any]) -> str:
    """One line: where, with what threads, under what load, by which command."""
    parts = [_machine(data)]
    threads = data.get("torch_threads") or data.get("node_threads")
    if threads:
        parts.append(f"{threads} torch threads")
    if "load_avg_start" in data:
        parts.append(f"load average {data['load_avg_start'][0]} -> {data.get('load_avg_end', ['?'])[0]}")
    if data.get("date"):
        parts.append(data["date"])
    line = "; ".join(parts)
    if data.get("command"):
        line += f"; `{data['command']}`"
    return line


def _skipped(data: dict[str, Any]) -> str:
    rows = data.get("skipped") or []
    if not rows:
        return ""
    what = [" ".join(str(v) for k, v in r.items() if k != "reason") for r in rows]
    items = "; ".join(f"{w}: {r['reason']}" for w, r in zip(what, rows))
    return f"\n\nNot measured here: {items}."


# ----------------------------------------------------------------------------------------- sections
def section_run(results: Path) -> str:
    run = _load(results, "run_all.json")
    if run is None:
        return "_No `bench/run_all.py` summary in bench/results (scripts were run one by one)._"
    rows = [[s["name"], s["status"], _num(s.get("wall_s"), " s"), f"`{s['command']}`"] for s in run["steps"]]
    head = (f"Mode **{run['mode']}**, started {run['started']}, {_num(run['wall_s'], ' s')} in all, "
            f"load average {run['load_avg_start'][0]} at the start and {run['load_avg_end'][0]} at the end "
            f"on {run['cores']} cores.")
    if run["mode"] == "quick":
        head += (" **A quick validation run: few scans per row and short node runs; p99 figures and "
                 "rates are not meaningful. `make bench` gives the real figures.**")
    return head + "\n\n" + _table(["step", "status", "wall", "command"], rows)


def _stage_files(results: Path) -> list[str]:
    """stages_cpu.json, stages_cuda.json (always listed), then any other stages_*.json (e.g. cuda_full)."""
    names = ["stages_cpu.json", "stages_cuda.json"]
    return names + sorted(p.name for p in results.glob("stages_*.json") if p.name not in names)


def section_stages(results: Path) -> str:
    out = []
    for name in _stage_files(results):
        title = name[len("stages_"):-len(".json")].replace("_", " ").upper()
        data = _load(results, name)
        if data is None:
            device = name[len("stages_"):-len(".json")].split("_")[0]
            out.append(f"**{title}**: not run (`python -m bench.bench_stages --device {device}`).")
            continue
        block = [f"**{title}** ({data.get('checkpoint', '?')}): {_context(data)}."]
        if data.get("note"):
            block[0] += f" _{data['note']}._"
        if data["rows"]:
            header = ["backend", "prec.", "points", "voxels", *STAGES, "**total**", "inference", "share 3D"]
            if any("cuda_max_memory_mb" in r for r in data["rows"]):
                header.append("CUDA peak")
            rows = []
            for r in data["rows"]:
                st = r["stages_ms"]
                cells = [r["backend"], r["precision"], f"{r['points'] // 1000}k", r.get("voxels") or "-"]
                cells += [f"{_num(st[k]['p50'])} / {_num(st[k]['p99'])}" for k in STAGES]
                cells += [f"**{_num(st['total']['p50'])} / {_num(st['total']['p99'])}**",
                          f"{_num(st['inference']['p50'])} / {_num(st['inference']['p99'])}",
                          f"{100 * st['forward_3d']['p50'] / max(st['total']['p50'], 1e-9):.0f}%"]
                if "CUDA peak" in header:
                    cells.append(_num(r.get("cuda_max_memory_mb"), " MB"))
                rows.append(cells)
            block.append("p50 / p99 in ms over the scans of each row; `inference` is `Segmenter.segment` "
                         "(preprocess to gather), `share 3D` the sparse UNet's part of the total p50.")
            block.append(_table(header, rows))
        block[-1] += _skipped(data)
        out.append("\n\n".join(block))
    return "\n\n".join(out)


def section_pointcloud(results: Path) -> str:
    data = _load(results, "pointcloud.json")
    if data is None:
        return "Not run (`python -m bench.bench_pointcloud`)."
    names = {"decode_rclpy_kitti16": "decode, rclpy message, x y z i (16 B)",
             "decode_rclpy_ouster32": "decode, rclpy message, Ouster-like 32 B",
             "decode_rosbags_kitti16": "decode, rosbags message, 16 B",
             "encode_labeled_cloud_array": "encode: labeled array (28 B records)",
             "encode_to_rclpy_cloud": "encode: into an rclpy message",
             "encode_rclpy_total": "encode total (what the node does)"}
    rows = [[label, _num(data["results"][k]["p50_ms"]), _num(data["results"][k]["p99_ms"]),
             data["results"][k]["reps"]] for k, label in names.items() if k in data["results"]]
    m = data.get("machine", {})
    head = (f"{data['points'] // 1000}k points, {m.get('processor', '?')} ({m.get('cpu_count', '?')} cores), "
            f"numpy {m.get('numpy', '?')}; target {data.get('target_ms', TARGET_CONVERSION_MS)} ms each way.")
    return head + "\n\n" + _table(["case", "p50 ms", "p99 ms", "reps"], rows)


def section_node(results: Path) -> str:
    out = []
    for device in ("cpu", "cuda"):
        data = _load(results, f"node_{device}.json")
        if data is None:
            out.append(f"**{device.upper()}**: not run (`python -m bench.bench_node --device {device}`).")
            continue
        rows = []
        for r in data.get("rows", []):
            lat = r["latency_publish_to_receive_ms"]
            diag = r.get("node_diagnostics") or {}
            own = f"{_num(_float(diag.get('latency_p50_ms')))} / {_num(_float(diag.get('latency_p99_ms')))}"
            rows.append([f"{r['points_per_scan'] // 1000}k", _num(r["rate_hz"], " Hz"), r["frames_published"],
                         r["frames_out"], f"{r['drops']} ({100 * r['drop_fraction']:.0f}%)",
                         _num(r["output_rate_hz"], " Hz"), *(_num(lat[q]) for q in ("p50", "p99", "max")),
                         own])
        head = (f"**{device.upper()}**: {_context(data)}; {data.get('seconds')} s measured per row after "
                f"{data.get('warmup_s', '?')} s of warm-up, input QoS {data.get('input_qos')}, checkpoint "
                f"{data.get('checkpoint')}, Fast DDS profile {data.get('fastdds_profile', 'none')}.")
        header = ["points", "rate", "published", "out", "drops", "output rate", "e2e p50 ms", "e2e p99 ms",
                  "e2e max ms", "node's own p50 / p99 ms"]
        out.append(head + "\n\n" + _table(header, rows))
    return "\n\n".join(out)


def _float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def section_train(results: Path) -> str:
    out = []
    for device in ("cpu", "cuda"):
        data = _load(results, f"train_{device}.json")
        if data is None:
            out.append(f"**{device.upper()}**: not run (`python -m bench.bench_train --device {device}`).")
            continue
        rows = [[r["preset"], r["config"], r["batch_size"], r.get("max_points") or "all",
                 "x".join(str(v) for v in r["image_hw"]) if r["config"] != "baseline" else "-",
                 r["amp"], r["params_M"], _num(r["scans_per_s"]), _num(r["s_per_step"]),
                 _num(r["peak_rss_mb"], " MB"), _num(r.get("cuda_max_memory_mb"), " MB"), r["steps"]]
                for r in data["rows"]]
        block = f"**{device.upper()}**: {_context(data)}."
        if rows:
            block += "\n\n" + _table(["preset", "model", "batch", "points/scan", "image", "amp", "params (M)",
                                      "scans/s", "s/step", "peak RSS", "CUDA peak", "steps"], rows)
        out.append(block + _skipped(data))
    return "\n\n".join(out)


def _stage_row(data: dict[str, Any] | None, points: int) -> list[dict[str, Any]]:
    return [r for r in (data or {}).get("rows", []) if r["points"] == points]


def section_targets(results: Path) -> str:
    rows = []

    def verdict(value: float | None, target: float) -> str:
        if value is None:
            return "unmeasured"
        if value <= target:
            return f"**met** ({_num(target - value)} ms under, {value / target:.0%} of the budget)"
        return f"**not met** ({_num(value - target)} ms over, {value / target:.1f}x the budget)"

    gpu_files = [n for n in _stage_files(results) if n.startswith("stages_cuda")]
    for name in gpu_files:
        data = _load(results, name)
        cuda = _stage_row(data, TARGET_POINTS)
        if cuda:
            best = min(cuda, key=lambda r: r["stages_ms"]["inference"]["p50"])
            v = best["stages_ms"]["inference"]["p50"]
            where = f"{_num(v)} ms ({best['backend']} {best['precision']}, {data.get('checkpoint', '?')})"
            rows.append([f"{GPU_TARGET} on {_machine(data).split(',')[0]}", where,
                         verdict(v, TARGET_GPU_INFERENCE_MS)])
    if not rows:
        cpu = _stage_row(_load(results, "stages_cpu.json"), TARGET_POINTS)
        seen = "-"
        if cpu:
            seen = f"CPU: {_num(cpu[0]['stages_ms']['inference']['p50'])} ms (not the target's device)"
        rows.append([GPU_TARGET, seen, "unmeasured: no GPU in this run"])

    for device in ("cuda", "cpu"):
        node = _load(results, f"node_{device}.json")
        for r in (node or {}).get("rows", []):
            if r["rate_hz"] != 10:
                continue
            p99 = r["latency_publish_to_receive_ms"]["p99"]
            ok = r["drops"] == 0 and p99 <= TARGET_NODE_P99_MS
            gap = verdict(p99, TARGET_NODE_P99_MS).replace("**met**", "latency met").replace(
                "**not met**", "latency not met")
            what = (f"node e2e p99 <= 50 ms at 10 Hz, zero drops ({device.upper()}, "
                    f"{r['points_per_scan'] // 1000}k points)")
            rows.append([what, f"p99 {_num(p99)} ms, {r['drops']} drops",
                         ("**met**" if ok else "**not met**") + f": {gap}, {r['drops']} drops"])
    if not any(r[0].startswith("node") for r in rows):
        rows.append(["node e2e p99 <= 50 ms at 10 Hz, zero drops", "-", "unmeasured"])

    pc = _load(results, "pointcloud.json")
    if pc is not None:
        for key, label in (("decode_rclpy_kitti16", "PointCloud2 -> numpy"),
                           ("encode_rclpy_total", "numpy -> PointCloud2")):
            r = pc["results"].get(key)
            if r:
                rows.append([f"{label} <= 2 ms, {pc['points'] // 1000}k points, CPU",
                             f"p50 {_num(r['p50_ms'])} / p99 {_num(r['p99_ms'])} ms",
                             verdict(r["p99_ms"], TARGET_CONVERSION_MS) + " (judged at p99)"])
    return _table(["target (SPEC section 6)", "measured", "verdict"], rows)


def section_transport(results: Path) -> str:
    data = _load(results, "transport.json")
    if data is None:
        return "Not run (`python -m bench.bench_transport`)."
    rows = [[f"{r['points'] // 1000}k", _num(r["bytes"] / 2**20, " MiB"), r["reliability"].replace("_", " "),
             r["profile"], f"{r['received']}/{r['sent']}",
             *(_num(r["latency_ms"][q]) for q in ("p50", "p99", "max"))] for r in data["rows"]]
    head = (f"{_context(data)}; {data['rounds']} round(s) of {data['messages_per_round']} clouds at "
            f"{_num(data['rate_hz'], ' Hz')} per row and profile, the profiles' rounds alternating; "
            f"{data['rmw']}.")
    header = ["points", "message", "QoS", "Fast DDS profile", "received", "p50 ms", "p99 ms", "max ms"]
    return head + "\n\n" + _table(header, rows)


def section_ab(results: Path) -> str:
    data = _load(results, "ab_per_frame.json")
    if data is None:
        return "Not run (`python -m bench.ab_per_frame`)."
    rows = [[r["what"], _num(r["before_ms"]), _num(r["after_ms"]), f"x{r['speedup']:.2f}",
             "yes" if r["identical"] else "**NO**", r["reps"]] for r in data["rows"]]
    head = (f"{data['points'] // 1000}k points, before = revision `{data['rev_before']}`, after = this tree; "
            f"{_context(data)}. Medians of interleaved calls.")
    return head + "\n\n" + _table(["what", "before ms", "after ms", "speed-up", "same output", "calls"], rows)


SECTIONS: dict[str, Callable[[Path], str]] = {
    "run": section_run, "stages": section_stages, "pointcloud": section_pointcloud, "node": section_node,
    "train": section_train, "targets": section_targets, "ab": section_ab, "transport": section_transport,
}


def render_doc(text: str, results: Path) -> str:
    """`text` with every marked section replaced by its rendering from `results`."""
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in SECTIONS:
            raise ValueError(f"docs marker <!-- bench:{name} --> names no section; known: {sorted(SECTIONS)}")
        return f"<!-- bench:{name} -->\n{SECTIONS[name](results)}\n<!-- /bench:{name} -->"

    return re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", replace, text, flags=re.DOTALL)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--check", action="store_true", help="exit 1 if the doc differs from the results")
    args = p.parse_args(argv)
    if not args.doc.is_file():
        p.error(f"--doc {args.doc} does not exist")
    old = args.doc.read_text()
    new = render_doc(old, args.results)
    if args.check:
        if new != old:
            print(f"{args.doc} is stale: run python -m bench.report", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(new)
    print(f"rendered {args.doc} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
