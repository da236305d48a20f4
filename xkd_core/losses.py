"""Loss functions of xModel-KD: cross-entropy, Lovasz-softmax, InfoNCE and distillation KL.

Each is written over flat rows (points or point-pixel pairs) and is safe on empty input (returns a
zero that is still attached to the graph), because a batch can hold no labelled point or no pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _zero(like: Tensor) -> Tensor:
    return like.sum() * 0.0


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 0) -> Tensor:
    """Mean CE over rows whose label is not `ignore_index`; 0 (not NaN) when there is none."""
    keep = labels != ignore_index
    if labels.numel() == 0 or not bool(keep.any()):
        return _zero(logits)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def lovasz_softmax(probs: Tensor, labels: Tensor, ignore_index: int | None = 0) -> Tensor:
    """Lovasz-softmax (Berman et al. 2018): a convex surrogate of 1 - IoU, averaged over present classes.

    `probs` (N, C) are softmax probabilities, `labels` (N,) class ids; rows labelled `ignore_index`
    are dropped. For each class the errors |[y = c] - p_c| are sorted in decreasing order and dotted
    with the gradient of the Lovasz extension of the Jaccard loss; all classes are handled at once
    by sorting along the point axis. Only classes that occur in `labels` contribute ("present").
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"lovasz_softmax: probs must be (N, C) and labels (N,), got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    if labels.numel() == 0:
        return _zero(probs)
    probs = probs.float()
    fg = F.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    errors = (fg - probs).abs()
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    fg_sorted = fg.gather(0, perm)
    gts = fg_sorted.sum(0)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    per_class = (errors_sorted * grad).sum(0)
    present = gts > 0
    return per_class[present].mean()


def info_nce(a: Tensor, b: Tensor, tau: float, positive_mask: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between rows of `a` (M, D) and `b` (M, D): row i of a matches row i of b.

    Both are L2-normalised here, similarities divided by `tau`; the loss is the mean of the
    a->b and b->a cross-entropies with the diagonal as target. `positive_mask` (M, M) bool marks
    further pairs (i, j) that are *not* negatives - e.g. the same point seen in another camera - and
    are removed from the softmax denominators (the diagonal is always the positive).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"info_nce: a and b must both be (M, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not tau > 0:
        raise ValueError(f"info_nce: tau must be > 0, got {tau}")
    m = a.shape[0]
    if m == 0:
        return _zero(a) + _zero(b)
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    logits = a @ b.T / tau
    if positive_mask is not None:
        if positive_mask.shape != (m, m):
            raise ValueError(f"info_nce: positive_mask must be ({m}, {m}), got {tuple(positive_mask.shape)}")
        eye = torch.eye(m, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(positive_mask.to(torch.bool) & ~eye, float("-inf"))
    target = torch.arange(m, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over rows.

    The teacher is detached: distillation moves the student only. The T^2 factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al. 2015).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_kl: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not T > 0:
        raise ValueError(f"kd_kl: T must be > 0, got {T}")
    return kd_kl_log_probs(student_logits, F.log_softmax(teacher_logits.detach().float() / T, dim=1), T)


def kd_kl_log_probs(student_logits: Tensor, teacher_log_probs: Tensor, T: float) -> Tensor:
    """`kd_kl` towards a teacher given as log-probabilities (already tempered), e.g. a distribution
    averaged over the views that see a point (`mean_distribution`)."""
    if student_logits.shape != teacher_log_probs.shape:
        raise ValueError(f"kd_kl: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_log_probs.shape)} differ in shape")
    if not T > 0:
        raise ValueError(f"kd_kl: T must be > 0, got {T}")
    if student_logits.shape[0] == 0:
        return _zero(student_logits)
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_t = teacher_log_probs.detach().float()
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (T * T)


def mean_distribution(logits: Tensor, index: Tensor, size: int, T: float) -> Tensor:
    """(size, C) log of the mean of softmax(logits / T) over the rows that share an `index`.

    Why the mean of distributions, not of logits: a point seen by two cameras gets a teacher that
    is a mixture of both views' beliefs (a confident view and an unsure one give a mixture that is
    still confident where both agree), and one view's extreme logits cannot outvote the other.
    Every index in [0, size) must occur at least once.
    """
    if not T > 0:
        raise ValueError(f"mean_distribution: T must be > 0, got {T}")
    probs = F.softmax(logits.detach().float() / T, dim=1)
    total = probs.new_zeros((size, probs.shape[1])).index_add_(0, index, probs)
    count = torch.bincount(index, minlength=size).clamp_min(1).to(probs.dtype)
    return torch.log((total / count[:, None]).clamp_min(1e-12))
