"""`xkd-synth`: write synthetic SemanticKITTI-format sequences.

Settings are layered: `SynthConfig` defaults < `--config FILE` < `--set key=value` < explicit flags
(`--beams` etc.), and the result is validated by `xkd_core.config.from_dict`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from xkd_core.config import ConfigError, apply_overrides, from_dict, load_yaml
from xkd_core.synth.config import SynthConfig
from xkd_core.synth.generate import generate
from xkd_core.synth.stats import collect, format_stats

# Flag destination -> dotted config key.
_FLAGS = {
    "beams": "lidar.beams",
    "columns": "lidar.columns",
    "fov_up": "lidar.fov_up",
    "fov_down": "lidar.fov_down",
    "max_range": "lidar.max_range",
    "noise": "lidar.noise",
    "image_width": "camera.image_width",
    "image_height": "camera.image_height",
    "cameras": "camera.cameras",
    "focal_scale": "camera.focal_scale",
    "rig": "camera.rig",
    "surround_cameras": "camera.surround.count",
    "surround_hfov": "camera.surround.hfov",
    "class_images": "camera.class_images",
    "appearance_intensity_gap": "appearance_intensity_gap",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xkd-synth",
        description="Generate synthetic driving sequences (LiDAR, labels, camera images, calibration, "
        "poses) in the SemanticKITTI format.",
    )
    p.add_argument("--out", required=True, help="data set root; sequences go to OUT/sequences/NN")
    p.add_argument("--sequences", nargs="+", default=["00"], help="sequence ids, e.g. 00 01 08")
    p.add_argument("--scans", type=int, default=100, help="frames per sequence")
    p.add_argument("--seed", type=int, default=0, help="master seed (each sequence derives its own)")
    p.add_argument("--config", help="YAML file with SynthConfig fields (see config/synth.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set world.trees=12 (repeatable)")
    p.add_argument("--beams", type=int, help="LiDAR beams (default 64)")
    p.add_argument("--columns", type=int, help="LiDAR azimuth steps per revolution (default 2048)")
    p.add_argument("--fov-up", type=float, help="elevation of the top beam, degrees (default 2)")
    p.add_argument("--fov-down", type=float, help="elevation of the bottom beam, degrees (default -24.8)")
    p.add_argument("--max-range", type=float, help="LiDAR range, metres (default 80)")
    p.add_argument("--noise", type=float, help="LiDAR range noise std, metres (default 0.02)")
    p.add_argument("--rig", choices=["kitti", "surround"],
                   help="cameras: KITTI's front camera(s) (default) or a 360-degree ring (views.yaml)")
    p.add_argument("--image-width", type=int, help="camera image width (default 620; surround rig 320)")
    p.add_argument("--image-height", type=int, help="camera image height (default 188; surround rig 180)")
    p.add_argument("--cameras", type=int, nargs="+",
                   help="kitti rig: colour cameras to render, 2 and/or 3 (default 2)")
    p.add_argument("--focal-scale", type=float,
                   help="kitti rig: focal length times KITTI's; 0.5 = ~120 degree wide lens (default 1)")
    p.add_argument("--surround-cameras", type=int,
                   help="surround rig: number of cameras, yaws evenly spaced (default 6, nuScenes' names)")
    p.add_argument("--surround-hfov", type=float,
                   help="surround rig: horizontal field of view of each camera, degrees (default 70)")
    p.add_argument("--class-images", action=argparse.BooleanOptionalAction, default=None,
                   help="also write each camera's per-pixel class ids (class_<view>/, 16-bit PNG) and "
                   "views.yaml (default: with the surround rig only)")
    p.add_argument("--appearance-intensity-gap", type=float,
                   help="LiDAR intensity offset of parking/other-ground/terrain (default 0 = none)")
    p.add_argument("--overwrite", action="store_true", help="replace frames of an earlier run")
    p.add_argument("--stats", action="store_true", help="print points per scan, class shares and timing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """Defaults < --config < --set < explicit flags, validated strictly."""
    data = load_yaml(args.config) if args.config else {}
    apply_overrides(data, args.set)
    for dest, key in _FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            *sections, name = key.split(".")
            node = data
            for depth, section in enumerate(sections):
                node = node.setdefault(section, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"'{'.'.join(sections[:depth + 1])}' must be a mapping to set {key}")
            node[name] = value
    where = f"{args.config}: " if args.config else ""
    try:
        return from_dict(SynthConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        start = time.perf_counter()
        generate(args.out, args.sequences, args.scans, args.seed, cfg, progress=not args.quiet,
                 overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
    except (ConfigError, ValueError, FileExistsError, NotADirectoryError) as exc:
        parser.exit(2, f"xkd-synth: error: {exc}\n")
    if args.stats:
        stats = collect(args.out, args.sequences)
        print(format_stats(stats, elapsed / max(stats.scans, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
