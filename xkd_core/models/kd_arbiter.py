"""Whom to believe where the LiDAR student and the camera teacher disagree, as the labels have seen it.

Why: a frozen camera teacher has confusions of its own (thin signs painted as the building behind,
trucks as cars). Distilled on unlabeled scans, the KL teaches those confusions wherever the student was
right, and the student carries them back to the data it knew (measured in the fleet loop: A's sign
points called "building" after a fine-tune on B's log). The labeled points of the same run show, for
each pair (student's class s, teacher's class t), which of the two the truth usually was; the KL is
kept off an unlabeled point whose pair the student usually wins.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Per training step the table is multiplied by this: it weighs about the last hundred steps, so it
#: follows a student that changes while it learns.
DECAY = 0.99


class KDArbiter(nn.Module):
    """A (C, C, C) table of counts (student class, teacher class, label) on labeled paired points.

    The table is a non-persistent buffer: checkpoints do not carry it (older ones load unchanged) and a
    resumed run counts it anew, which takes one step.
    """

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.register_buffer("counts", torch.zeros(num_classes ** 3), persistent=False)

    @torch.no_grad()
    def update(self, student: Tensor, teacher: Tensor, labels: Tensor) -> None:
        """Decay the table and add the points whose label is known (every rank's, under DDP)."""
        c = self.num_classes
        known = labels != self.ignore_index
        index = (student[known] * c + teacher[known]) * c + labels[known]
        added = torch.bincount(index, minlength=c ** 3).to(self.counts.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(added)
        self.counts.mul_(DECAY).add_(added)

    @torch.no_grad()
    def teacher_wins(self, student: Tensor, teacher: Tensor) -> Tensor:
        """(N,) bool: the classes agree, or the label was the teacher's class at least as often as the
        student's for this pair (a pair never counted is a tie: the teacher teaches)."""
        c = self.num_classes
        pair = (student * c + teacher) * c
        return (student == teacher) | (self.counts[pair + teacher] >= self.counts[pair + student])
