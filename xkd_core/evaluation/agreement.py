"""Teacher-student agreement: on the points a camera sees, the share where the LiDAR branch's class equals
the camera teacher's.

Why: a fine-tune on a pair log has no label to be scored against on the vehicle, but it was taught by
the camera, so how closely the LiDAR branch follows the teacher on the log is measurable. A model that
collapses (one class everywhere, a diverged run) follows it far less than the deployed model did,
and `xkd-export` refuses it (`xkd_core.evaluation.finetune_guard`). The teacher's class of a point is
the target of the `kd_teacher: 2d` KL (`evaluate.camera_point_labels`: the argmax of the mean of the
tempered distributions of every view that sees it); the student's is what the node publishes with the
LiDAR branch alone (`Segmenter.segment`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xkd_core.data.frame import Frame
from xkd_core.evaluation.evaluate import camera_point_labels

if TYPE_CHECKING:
    from xkd_core.inference import Segmenter
    from xkd_core.models.xmodel_kd import XModelKD


@dataclass(frozen=True)
class TeacherLabels:
    """The camera teacher's class of every point a view of one frame sees: (indices, classes)."""

    points: np.ndarray  # (M,) int64 indices into the frame's points
    classes: np.ndarray  # (M,) int64 learning ids


@dataclass
class Agreement:
    """Counts over the scans measured; `percent` is None when no camera saw a point."""

    scans: int = 0
    points: int = 0
    agree: int = 0

    @property
    def percent(self) -> float | None:
        return None if self.points == 0 else 100.0 * self.agree / self.points


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """At most `k` of the indices 0..n-1, first and last included, spread evenly (all when k is None)."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def teacher_labels(teacher: XModelKD, frames: Iterable[Frame], image_hw: tuple[int, int], T: float
                   ) -> list[TeacherLabels]:
    """The teacher's class of the seen points of every frame (computed once, for any number of students)."""
    teacher.eval()
    return [TeacherLabels(*camera_point_labels(teacher, frame, image_hw, T)) for frame in frames]


def agreement(student: Segmenter, frames: Sequence[Frame], labels: Sequence[TeacherLabels]) -> Agreement:
    """How often `student` (the LiDAR branch alone, as the node runs it) gives the teacher's class."""
    if len(frames) != len(labels):
        raise ValueError(f"agreement: {len(frames)} frames but teacher labels of {len(labels)}")
    out = Agreement()
    for frame, teach in zip(frames, labels):
        pred = np.asarray(student.segment(frame.points).labels).astype(np.int64)
        out.scans += 1
        out.points += len(teach.points)
        out.agree += int(np.count_nonzero(pred[teach.points] == teach.classes))
    return out
