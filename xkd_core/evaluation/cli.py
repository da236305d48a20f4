"""`xkd-eval`: mIoU, per-class IoU and confusion matrices of a checkpoint on SemanticKITTI-format data.

    xkd-eval --checkpoint runs/xkd/best.pt --data /data/semantickitti --split val --out eval/xkd
    xkd-eval --checkpoint best.pt --data synth --sequences 08 --out eval/ --fuse --device cuda

Writes `OUT/metrics.json` (full scan and camera-frustum subset; mIoU and IoU in percent, as
xkd-bag-eval reports them), `OUT/confusion_full.png`, `OUT/confusion_frustum.png` and
`OUT/iou_per_class.png`. A surround rig's views are selected by name or `--cameras all` (the default
when every sequence has a `views.yaml`).
`--camera-branch` scores the camera branch on the points the cameras see (a camera teacher's quality
where it teaches the LiDAR branch); the full-scan rows then stay empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch.utils.data import DataLoader, Subset

from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.semantickitti import SPLITS, DataFormatError, sequence_dir
from xkd_core.data.views import camera_selectors, default_cameras
from xkd_core.models.sparse_backend import BACKENDS


def _first(items: list):
    """Collate of a batch of one frame: the frame itself (the Segmenter takes one scan at a time)."""
    return items[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xkd-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint written by xkd-train (best.pt / last.pt)")
    p.add_argument("--data", required=True, help="SemanticKITTI-format root (holding sequences/)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", choices=sorted(SPLITS), help="official split")
    which.add_argument("--sequences", nargs="+", help="sequence ids, e.g. 08")
    p.add_argument("--out", required=True, help="output folder for metrics.json and PNGs")
    p.add_argument("--fuse", action="store_true", help="use the camera (fused head) inside the frustum")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="sparse-convolution library")
    p.add_argument("--fp16", action="store_true", help="half-precision inference (GPU)")
    p.add_argument("--cameras", nargs="+", default=None,
                   help="views for the frustum subset and fusion: KITTI cameras (2 3), view names "
                        "(CAM_FRONT ...) or all (default: all when every sequence has a views.yaml rig, "
                        "else 2)")
    p.add_argument("--camera-branch", action="store_true",
                   help="score the camera branch (e.g. a camera teacher) instead of the LiDAR branch, on the "
                        "points the --cameras see: per point the mean of its views' distributions, the "
                        "target of the kd_teacher 2d KL")
    p.add_argument("--max-scans", type=int, default=None, help="evaluate only the first N scans")
    p.add_argument("--num-workers", type=int, default=2, help="scan-loading worker processes (0 = inline)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xkd_core.evaluation.evaluate import evaluate, evaluate_camera
    from xkd_core.evaluation.plots import plot_confusion, plot_iou_bars
    from xkd_core.inference import Segmenter
    from xkd_core.models.checkpoint import model_from_checkpoint

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        print(f"xkd-eval: error: checkpoint not found: {ckpt}", file=sys.stderr)
        return 2
    if args.max_scans is not None and args.max_scans < 1:
        print("xkd-eval: error: --max-scans must be >= 1", file=sys.stderr)
        return 2
    if args.num_workers < 0:
        print("xkd-eval: error: --num-workers must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.cameras is None:
            ids = args.sequences if args.sequences is not None else SPLITS[args.split]
            cameras = default_cameras([sequence_dir(args.data, s) for s in ids])
        else:
            cameras = camera_selectors([int(c) if c.isdigit() else c for c in args.cameras])
        dataset = SemanticKittiDataset(args.data, split=args.split, sequences=args.sequences,
                                       cameras=tuple(cameras), with_labels=True)
        if args.camera_branch:
            if args.fuse:
                raise ValueError("--camera-branch scores the camera branch alone: drop --fuse")
            model, cfg, image_hw = model_from_checkpoint(ckpt, device=args.device, backend=args.backend)
            if model.image_net is None or image_hw is None:
                raise ValueError(f"{ckpt} has no camera branch (a LiDAR-only model)")
        else:
            seg = Segmenter.from_checkpoint(ckpt, device=args.device, fp16=args.fp16, backend=args.backend,
                                            fuse=args.fuse)
    except (DataFormatError, ValueError, ImportError, RuntimeError) as exc:
        print(f"xkd-eval: error: {exc}", file=sys.stderr)
        return 2
    n = len(dataset) if args.max_scans is None else min(args.max_scans, len(dataset))
    if n == 0:
        print(f"xkd-eval: error: no scans found under {args.data}", file=sys.stderr)
        return 2
    frames = dataset if n == len(dataset) else Subset(dataset, range(n))
    loader = DataLoader(frames, batch_size=1, collate_fn=_first, num_workers=args.num_workers)
    if args.camera_branch:
        result = evaluate_camera(model, loader, image_hw, cfg.distillation.kd_T,
                                 progress=not args.no_progress, total=n)
    else:
        seg.warmup()
        result = evaluate(seg, loader, fuse=args.fuse, progress=not args.no_progress, total=n)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "checkpoint": str(ckpt),
        "data": str(args.data),
        "sequences": sorted({seq for seq, _ in dataset.frames()[:n]}),
        "fuse": args.fuse,
        "branch": "camera" if args.camera_branch else "lidar",
        "device": args.device,
        "fp16": args.fp16,
        "cameras": cameras,
        **result.to_json(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion(result.full.matrix.cpu().numpy(), out / "confusion_full.png", "full scan")
    plot_confusion(result.frustum.matrix.cpu().numpy(), out / "confusion_frustum.png", "camera frustum")
    plot_iou_bars({"full scan": result.full.iou(), "camera frustum": result.frustum.iou()},
                  out / "iou_per_class.png")
    full, fr = metrics["full"]["miou"], metrics["frustum"]["miou"]
    print(f"{n} scans: mIoU full scan {'n/a' if full is None else f'{full:.2f} %'}, "
          f"camera frustum {'n/a' if fr is None else f'{fr:.2f} %'}; wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
