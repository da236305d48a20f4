"""Loss functions of xModel-KD: cross-entropy, Lovasz-softmax, InfoNCE and distillation KL.

Each is written over flat rows (points or point-pixel pairs) and is safe on empty input (returns a
zero that is still attached to the graph), because a batch can hold no labelled point or no pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _zero(like: Tensor) -> Tensor:
    return like.sum() * 0.0


def cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = 0, weight: Tensor | None = None
) -> Tensor:
    """Mean CE over rows whose label is not `ignore_index`, each row weighted by `weight` (N,) when
    given (a pseudo-label that counts less than a label); 0 (not NaN) when there is none."""
    keep = labels != ignore_index
    if labels.numel() == 0 or not bool(keep.any()):
        return _zero(logits)
    if weight is None:
        return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    rows = F.cross_entropy(logits.float()[keep], labels[keep], reduction="none")
    return (rows * weight[keep]).sum() / weight[keep].sum()


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


def merge_class_groups(log_probs: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """(N, C) log-probabilities -> (N, C') over the classes outside `groups`, then one column per
    group holding the group's summed probability (a logsumexp of its columns).

    Why: a distillation target should only ask the student for decisions its own modality can make
    (the "modality focusing" reading of failed cross-modal KD, Xue et al. 2023); classes the LiDAR
    cannot tell apart are taught as one class, the choice inside the group left to the labels.
    """
    if not groups:
        return log_probs
    grouped = {c for g in groups for c in g}
    singles = [c for c in range(log_probs.shape[1]) if c not in grouped]
    parts = [log_probs[:, singles]]
    parts += [torch.logsumexp(log_probs[:, list(g)], dim=1, keepdim=True) for g in groups]
    return torch.cat(parts, dim=1)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, T: float,
          groups: Sequence[Sequence[int]] = ()) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over classes, mean over rows.

    The teacher is detached: distillation moves the student only. The T^2 factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al. 2015). With `groups` (lists of class
    ids) both distributions are first summed within each group (`merge_class_groups`, at T = 1) and
    the merged ones tempered: the KL then says nothing about which class of a group a point is.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_kl: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not T > 0:
        raise ValueError(f"kd_kl: T must be > 0, got {T}")
    if student_logits.shape[0] == 0:
        return _zero(student_logits)
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    if groups:  # merged at T = 1, tempered after: nothing inside a group changes the KL, at any T
        student = merge_class_groups(F.log_softmax(student, dim=1), groups)
        teacher = merge_class_groups(F.log_softmax(teacher, dim=1), groups)
    log_s = F.log_softmax(student / T, dim=1)
    log_t = F.log_softmax(teacher / T, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (T * T)


def class_balance_weights(predicted: Tensor, selected: Tensor, num_classes: int) -> Tensor:
    """Per-row weights of the `selected` pseudo-labels (class ids) that give each class a summed
    weight in proportion to its count among all `predicted` rows, the total kept at len(selected).

    Why: a confidence threshold passes more of the easy classes than of the hard ones; reweighting
    gives the student the teacher's class frequencies back, not the threshold's. Classes predicted
    but never selected get nothing (no row to carry them); their share goes to the others.
    """
    if selected.numel() == 0:
        return torch.ones(0, device=selected.device)
    n_pred = torch.bincount(predicted, minlength=num_classes).float()
    n_sel = torch.bincount(selected, minlength=num_classes).float()
    present = n_sel > 0
    per_class = torch.zeros_like(n_pred)
    per_class[present] = n_pred[present] / n_sel[present]
    share = n_pred[present].sum()
    if share <= 0:  # selected rows whose classes were never predicted: leave them as they are
        return torch.ones(selected.shape[0], device=selected.device)
    return per_class[selected] * (selected.shape[0] / share)
