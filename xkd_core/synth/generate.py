"""Write synthetic sequences in the SemanticKITTI on-disk format (through `xkd_core.data.semantickitti`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xkd_core.data.semantickitti import (
    label_path,
    scan_path,
    sequence_dir,
    write_calib,
    write_class_image,
    write_image,
    write_labels,
    write_points,
    write_poses,
)
from xkd_core.data.views import VIEWS_FILE, write_views
from xkd_core.synth.config import SynthConfig
from xkd_core.synth.sequence import SyntheticSequence, sequence_number

SCAN_PERIOD = 0.1  # seconds between scans (10 Hz), for times.txt

# Files a previous run may have left in a sequence folder (removed with overwrite=True).
_FRAME_GLOBS = ("velodyne/*.bin", "labels/*.label", "image_2/*.png", "image_3/*.png", "image_CAM_*/*.png",
                "class_*/*.png", VIEWS_FILE)


def _prepare(seq_dir: Path, overwrite: bool) -> None:
    """Refuse to mix frames with an earlier run's; with `overwrite`, delete only generator outputs."""
    old = [p for g in _FRAME_GLOBS for p in seq_dir.glob(g)]
    if not old:
        return
    if not overwrite:
        raise FileExistsError(
            f"{seq_dir} already holds {len(old)} frame files; "
            "pass overwrite=True (--overwrite) to replace them"
        )
    for p in old:
        p.unlink()
    for folder in sorted({p.parent for p in old} - {seq_dir}):
        if not any(folder.iterdir()):
            folder.rmdir()  # an emptied camera folder would still look like a view of the sequence


def generate(
    out_dir: str | Path,
    sequences: Sequence[str | int],
    scans: int,
    seed: int,
    config: SynthConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Write `scans` frames of each sequence under `out_dir/sequences/NN/`.

    Per frame: `velodyne/NNNNNN.bin`, `labels/NNNNNN.label` (raw ids | instance << 16) and one PNG per
    camera of the rig (`image_2/`, or `image_<name>/` for the surround ring), with `class_images` also
    its per-pixel class ids (`class_<...>/`, 16-bit PNG); per sequence: `calib.txt`, `poses.txt`,
    `times.txt`, and `views.yaml` for the surround rig or with class images. The same arguments always
    give byte-identical files; each sequence has its own world (sub-seed from its number).
    """
    cfg = config or SynthConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a folder")
    numbers = [sequence_number(s) for s in sequences]
    if not numbers:
        raise ValueError("sequences must name at least one sequence")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"sequences has duplicates: {list(sequences)}")
    if isinstance(scans, bool) or not isinstance(scans, (int, np.integer)) or scans < 1:
        raise ValueError(f"scans must be a positive integer, got {scans!r}")
    bar = tqdm(total=len(numbers) * scans, desc="xkd-synth", unit="scan", disable=not progress)
    for num in numbers:
        seq = SyntheticSequence(cfg, seed, num, scans)
        seq_dir = sequence_dir(out, num)
        _prepare(seq_dir, overwrite)
        bar.set_postfix_str(f"sequence {seq.name}")
        write_calib(seq_dir / "calib.txt", seq.calib)  # also for the surround rig: Tr gives poses.txt meaning
        if cfg.camera.rig == "surround" or cfg.camera.class_images:
            write_views(seq_dir / VIEWS_FILE, seq.views)
        write_poses(seq_dir / "poses.txt", seq.poses())
        np.savetxt(seq_dir / "times.txt", np.arange(scans) * SCAN_PERIOD, fmt="%.6e")
        for frame in range(scans):
            name = f"{frame:06d}"
            points, sem, inst = seq.scan(frame)
            write_points(scan_path(seq_dir, name), points)
            write_labels(label_path(seq_dir, name), sem, inst)
            for view in seq.views:
                rgb, classes = seq.image(frame, view.name)
                write_image(view.image_path(seq_dir, name), rgb)
                if view.class_dir is not None:
                    write_class_image(view.class_path(seq_dir, name), classes)
            bar.update(1)
    bar.close()
