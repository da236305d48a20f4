"""SemanticKITTI-format sequences as a torch `Dataset` of `Frame`s.

The index (scans, label files, images, calibration) is checked when the dataset is built, so a
missing file fails at start-up with its path rather than hours into training; only a label count
that disagrees with its scan needs the files read and is reported when the frame is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from xkd_core.classes import to_learning
from xkd_core.data.frame import CameraView, Frame
from xkd_core.data.semantickitti import (
    IMAGE_DIRS,
    SPLITS,
    DataFormatError,
    frame_ids,
    read_calib,
    read_image,
    read_labels,
    read_points,
    sequence_dir,
)


class SemanticKittiDataset(Dataset):
    """Frames of SemanticKITTI sequences with labels mapped to learning ids and calibrated views.

    `sequences` (any ids present under `root/sequences`, e.g. synthetic data) takes precedence over
    `split` (the official `SPLITS`). `cameras` are KITTI camera indices (2 and/or 3); each frame gets
    one `CameraView` per camera, named after its image folder (`image_2`, `image_3`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        sequences: Sequence[str] | None = None,
        cameras: Sequence[int] = (2,),
        with_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        if sequences is None:
            if split is None:
                raise ValueError("SemanticKittiDataset needs a split or a list of sequences")
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; known splits: {sorted(SPLITS)}")
            sequences = SPLITS[split]
        elif isinstance(sequences, (str, int)):
            raise ValueError(f"sequences must be a list of ids, got the single value {sequences!r}")
        bad = [c for c in cameras if c not in IMAGE_DIRS]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}; cameras must be among {sorted(IMAGE_DIRS)}")
        self.cameras = tuple(int(c) for c in cameras)
        self.with_labels = with_labels

        self._calib: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._dirs: dict[str, Path] = {}
        self._index: list[tuple[str, str]] = []
        for seq in sequences:
            seq_dir = sequence_dir(self.root, seq)
            if not seq_dir.is_dir():
                raise DataFormatError(f"missing sequence folder: {seq_dir}")
            name = seq_dir.name
            self._dirs[name] = seq_dir
            calib_path = seq_dir / "calib.txt"
            calib = read_calib(calib_path) if self.cameras else None
            try:
                self._calib[name] = [calib.camera(c) for c in self.cameras] if calib else []
            except DataFormatError as exc:
                raise DataFormatError(f"{calib_path}: {exc}") from exc
            for fid in frame_ids(seq_dir):
                for path in self._companions(seq_dir, fid):
                    if not path.is_file():
                        raise DataFormatError(
                            f"missing file: {path} (companion of {seq_dir / 'velodyne' / (fid + '.bin')})"
                        )
                self._index.append((name, fid))

    def _companions(self, seq_dir: Path, fid: str) -> list[Path]:
        paths = [seq_dir / IMAGE_DIRS[c] / f"{fid}.png" for c in self.cameras]
        if self.with_labels:
            paths.insert(0, seq_dir / "labels" / f"{fid}.label")
        return paths

    def __len__(self) -> int:
        return len(self._index)

    def frames(self) -> list[tuple[str, str]]:
        """(sequence, frame_id) of every item, in index order."""
        return list(self._index)

    def __getitem__(self, index: int) -> Frame:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} frames")
        seq, fid = self._index[index]
        seq_dir = self._dirs[seq]
        points = read_points(seq_dir / "velodyne" / f"{fid}.bin")
        labels = instance = None
        if self.with_labels:
            semantic, instance = read_labels(seq_dir / "labels" / f"{fid}.label", num_points=len(points))
            labels = to_learning(semantic).astype(np.int64)
        views = []
        for cam, (K, T) in zip(self.cameras, self._calib[seq]):
            image = read_image(seq_dir / IMAGE_DIRS[cam] / f"{fid}.png")
            views.append(CameraView(image, K.copy(), T.copy(), IMAGE_DIRS[cam]))
        return Frame(points, labels, instance, views, seq, fid)
