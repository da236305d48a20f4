"""`xkd-export`: a training checkpoint -> a deployment checkpoint for the node (training state dropped).

    xkd-export --checkpoint runs/xmodel_kd/last.pt --out model.pt --description "trained on ..."
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from xkd_core.models.checkpoint import CheckpointError, export_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xkd-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt / best.pt)")
    p.add_argument("--out", required=True, help="deployment checkpoint to write")
    p.add_argument("--description", default="", help="what the model is and what it was trained on")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.description)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"xkd-export: {exc}", file=sys.stderr)
        return 2
    size = Path(args.checkpoint).stat().st_size, out.stat().st_size
    print(f"wrote {out} ({size[1] / 1e6:.1f} MB; training checkpoint {size[0] / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
