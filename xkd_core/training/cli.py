"""`xkd-train`: train xModel-KD or the LiDAR-only baseline from a config file and preset.

    xkd-train --config config/train/xmodel_kd.yaml --preset synth_small --set optim.steps=200 \
        --set model.distillation.wkd=0.5
    xkd-train --resume runs/xkd/last.pt                      # exact continuation
    torchrun --nproc_per_node 8 -m xkd_core.training.cli --config ... --preset semantickitti
"""

from __future__ import annotations

import argparse
import logging
import sys

from xkd_core.config import ConfigError
from xkd_core.data.semantickitti import DataFormatError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xkd-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--config", help="training config YAML (config/train/*.yaml)")
    p.add_argument("--preset", help="preset inside the config file (e.g. semantickitti, synth_small)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one config value (YAML), e.g. model.distillation.wkd=0.5; repeatable")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue exactly from a last.pt (with its embedded config unless --config)")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop (writing last.pt) after this global step, e.g. to fit a job time slot")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def _config(args: argparse.Namespace):
    from xkd_core.models.checkpoint import load_checkpoint
    from xkd_core.training.config import load_train_config, train_config_from_dict

    if args.config:
        return load_train_config(args.config, args.preset, args.overrides)
    if not args.resume:
        raise ConfigError("give --config FILE [--preset NAME], or --resume CKPT")
    if args.preset:
        raise ConfigError("--preset needs --config (a resumed run uses the config stored in the checkpoint)")
    ckpt = load_checkpoint(args.resume, map_location="cpu")
    if "train_config" not in ckpt:
        raise ConfigError(f"{args.resume} holds no training config (not written by xkd-train)")
    try:  # a checkpoint written before the model config had sections holds the flat layout: migrated
        return train_config_from_dict(ckpt["train_config"], args.overrides)
    except ConfigError as exc:
        raise ConfigError(f"{args.resume} (embedded config): {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xkd_core.training.distributed import init_distributed, shutdown
    from xkd_core.training.trainer import Trainer

    try:
        cfg = _config(args)
        info, device = init_distributed(cfg.device)
    except (ConfigError, DataFormatError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"xkd-train: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {info.rank}] %(name)s: %(message)s")
    try:
        trainer = Trainer(
            cfg, resume=args.resume, progress=not args.no_progress, dist_info=info, device=device
        )
        result = trainer.fit(stop_at_step=args.stop_at_step)
    except (ConfigError, DataFormatError, FileNotFoundError) as exc:
        print(f"xkd-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if info.is_main:
        best = "n/a" if result.best_miou is None else f"{100 * result.best_miou:.2f} %"
        logging.getLogger("xkd.train").info(
            "done: step %d / %d, best val mIoU %s, checkpoints in %s", result.step, result.total_steps, best,
            result.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
