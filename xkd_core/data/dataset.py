"""SemanticKITTI-format sequences as a torch `Dataset` of `Frame`s.

The index (scans, label files, images, calibration) is checked when the dataset is built, so a
missing file fails at start-up with its path rather than hours into training; only a label count
that disagrees with its scan needs the files read and is reported when the frame is loaded.
`ViewImageDataset` serves the camera images of the same sequences one view at a time with their
per-pixel class ids (`class_<view>/`), the dense 2D labels a camera teacher trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from xkd_core.classes import to_learning
from xkd_core.data.frame import CameraView, Frame
from xkd_core.data.semantickitti import (
    SPLITS,
    DataFormatError,
    frame_ids,
    label_path,
    read_class_image,
    read_image,
    read_labels,
    read_points,
    scan_path,
    sequence_dir,
)
from xkd_core.data.views import ViewCalib, camera_selectors, select_views


class SemanticKittiDataset(Dataset):
    """Frames of SemanticKITTI sequences with labels mapped to learning ids and calibrated views.

    `sequences` (any ids present under `root/sequences`, e.g. synthetic data) takes precedence over
    `split` (the official `SPLITS`). `cameras` selects views (`xkd_core.data.views`): KITTI indices
    2 / 3 (views `image_2` / `image_3` from `calib.txt`), view names from a sequence's `views.yaml`
    (e.g. `CAM_FRONT`), or `"all"` (every view of each sequence, so sequences may differ in count).
    Each frame gets one `CameraView` per selected view, named after it.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        sequences: Sequence[str] | None = None,
        cameras: str | Sequence[int | str] = (2,),
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
        self.cameras = tuple(camera_selectors(cameras))
        self.with_labels = with_labels

        self._views: dict[str, list[ViewCalib]] = {}
        self._dirs: dict[str, Path] = {}
        self._index: list[tuple[str, str]] = []
        for seq in sequences:
            seq_dir = sequence_dir(self.root, seq)
            if not seq_dir.is_dir():
                raise DataFormatError(f"missing sequence folder: {seq_dir}")
            name = seq_dir.name
            self._dirs[name] = seq_dir
            self._views[name] = select_views(seq_dir, self.cameras)  # errors name calib.txt / views.yaml
            for fid in frame_ids(seq_dir):
                for path in self._companions(seq_dir, name, fid):
                    if not path.is_file():
                        raise DataFormatError(
                            f"missing file: {path} (companion of {seq_dir / 'velodyne' / (fid + '.bin')})"
                        )
                self._index.append((name, fid))

    def _companions(self, seq_dir: Path, seq: str, fid: str) -> list[Path]:
        paths = [view.image_path(seq_dir, fid) for view in self._views[seq]]
        if self.with_labels:
            paths.insert(0, label_path(seq_dir, fid))
        return paths

    def __len__(self) -> int:
        return len(self._index)

    def frames(self) -> list[tuple[str, str]]:
        """(sequence, frame_id) of every item, in index order."""
        return list(self._index)

    def views(self, sequence: str) -> list[ViewCalib]:
        """The selected views of a sequence (in the order of each frame's `views`)."""
        return list(self._views[f"{int(sequence):02d}"])

    def __getitem__(self, index: int) -> Frame:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} frames")
        seq, fid = self._index[index]
        seq_dir = self._dirs[seq]
        points = read_points(scan_path(seq_dir, fid))
        labels = instance = None
        if self.with_labels:
            semantic, instance = read_labels(label_path(seq_dir, fid), num_points=len(points))
            labels = to_learning(semantic).astype(np.int64)
        views = []
        for view in self._views[seq]:
            path = view.image_path(seq_dir, fid)
            image = read_image(path)
            if view.hw is not None and image.shape[:2] != view.hw:
                raise DataFormatError(f"image {path} is {image.shape[1]}x{image.shape[0]} but its view "
                                      f"{view.name} is calibrated for {view.width}x{view.height}")
            views.append(CameraView(image, view.K.copy(), view.T.copy(), view.name))
        return Frame(points, labels, instance, views, seq, fid)


@dataclass
class LabeledImage:
    """One camera image with its per-pixel learning ids (0 = ignore: sky, haze, unlabeled)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    classes: np.ndarray  # (H, W) uint8 learning ids
    sequence: str
    frame_id: str
    view: str


class ViewImageDataset(Dataset):
    """Every (frame, view) image of SemanticKITTI-format sequences whose views have class images.

    Items are `LabeledImage`s: the raw ids of `class_<view>/` mapped to learning ids. A selected view
    without class images (`class_dir` in `views.yaml`) is an error at construction, as is a missing
    image or class image.
    """

    def __init__(self, root: str | Path, sequences: Sequence[str], cameras: str | Sequence[int | str] = "all"
                 ) -> None:
        if isinstance(sequences, (str, int)) or not sequences:
            raise ValueError(f"ViewImageDataset needs a non-empty list of sequence ids, got {sequences!r}")
        self.root = Path(root)
        self._index: list[tuple[Path, str, str, ViewCalib]] = []
        for seq in sequences:
            seq_dir = sequence_dir(self.root, seq)
            if not seq_dir.is_dir():
                raise DataFormatError(f"missing sequence folder: {seq_dir}")
            views = select_views(seq_dir, camera_selectors(cameras))
            unlabeled = [v.name for v in views if v.class_dir is None]
            if unlabeled:
                raise DataFormatError(f"{seq_dir}: view(s) {unlabeled} have no class images (class_dir in "
                                      "views.yaml); generate them with xkd-synth --class-images")
            for fid in frame_ids(seq_dir):
                for view in views:
                    for path in (view.image_path(seq_dir, fid), view.class_path(seq_dir, fid)):
                        if not path.is_file():
                            raise DataFormatError(f"missing file: {path}")
                    self._index.append((seq_dir, seq_dir.name, fid, view))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> LabeledImage:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        seq_dir, seq, fid, view = self._index[index]
        image = read_image(view.image_path(seq_dir, fid))
        class_path = view.class_path(seq_dir, fid)
        ids = read_class_image(class_path)
        if ids.shape != image.shape[:2]:
            raise DataFormatError(f"class image {class_path} is {ids.shape[1]}x{ids.shape[0]} but its image "
                                  f"is {image.shape[1]}x{image.shape[0]}")
        return LabeledImage(image, to_learning(ids).astype(np.uint8), seq, fid, view.name)
