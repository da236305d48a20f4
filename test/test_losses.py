"""Loss functions against values computed by hand on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from xkd_core.losses import (
    class_balance_weights,
    cross_entropy,
    info_nce,
    kd_kl,
    lovasz_softmax,
    merge_class_groups,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand; -inf entries contribute nothing."""
    denom = sum(math.exp(v) for v in logits if v != -math.inf)
    return -(logits[target] - math.log(denom))


def test_info_nce_two_orthogonal_pairs():
    a = torch.eye(2)
    loss = info_nce(a, a.clone(), tau=1.0)
    expected = math.log(1 + math.exp(-1))  # each row: logits [1, 0], target 0
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # rows are L2-normalised inside: scale does not matter
    assert float(info_nce(3 * a, 0.5 * a, tau=1.0)) == pytest.approx(expected, abs=1e-6)


def test_info_nce_with_a_second_view_of_the_same_point_removed_from_negatives():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # rows 0 and 2: the same point, two views
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    tau = 0.5
    ninf = -math.inf
    # a @ b.T / tau by hand, with (0, 2) and (2, 0) masked
    rows = [_ce([2.0, 0.0, ninf], 0), _ce([0.0, 2.0, 1.6], 1), _ce([ninf, 0.0, 1.2], 2)]
    cols = [_ce([2.0, 0.0, ninf], 0), _ce([0.0, 2.0, 0.0], 1), _ce([ninf, 1.6, 1.2], 2)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert float(info_nce(a, b, tau, same)) == pytest.approx(expected, abs=1e-5)
    # without the mask the other view counts as a negative and the loss is larger
    assert float(info_nce(a, b, tau)) > expected + 0.1


def test_info_nce_gradient_and_edge_cases():
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4, requires_grad=True)
    info_nce(a, b, 0.1).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert float(info_nce(torch.zeros(0, 4), torch.zeros(0, 4), 0.1)) == 0.0
    with pytest.raises(ValueError, match="tau"):
        info_nce(a, b, 0.0)
    with pytest.raises(ValueError, match="positive_mask"):
        info_nce(a, b, 0.1, torch.ones(4, 4, dtype=torch.bool))


def test_kd_kl_by_hand():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    # T = 1: teacher (3/4, 1/4), student (1/2, 1/2)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(student, teacher, 1.0).item() == pytest.approx(kl1, abs=1e-6)
    # T = 2: teacher softmax(log(3)/2, 0) = (sqrt3, 1) / (1 + sqrt3); scaled by T^2
    p = math.sqrt(3) / (1 + math.sqrt(3))
    kl2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    loss = kd_kl(student, teacher, 2.0)
    assert float(loss) == pytest.approx(kl2, abs=1e-6)
    loss.backward()
    assert teacher.grad is None  # the teacher is detached
    assert student.grad is not None and student.grad[0, 0] < 0  # student moves toward class 0
    assert float(kd_kl(teacher.detach(), teacher.detach(), 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_kd_kl_over_class_groups_by_hand():
    """Classes 1 and 2 merged: the teacher (1/2, 1/4, 1/4) becomes (1/2, 1/2), the uniform student
    (1/3, 2/3); a student that differs from the teacher only inside the group is left alone."""
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    kl = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    loss = kd_kl(student, teacher, 1.0, [[1, 2]])
    assert loss.item() == pytest.approx(kl, abs=1e-6)
    loss.backward()
    g = student.grad[0]
    assert g[0] < 0 and g[1] == pytest.approx(g[2].item(), abs=1e-7)  # toward class 0, group as one
    inside = torch.log(torch.tensor([[0.5, 0.45, 0.05]])).requires_grad_(True)
    loss = kd_kl(inside, teacher, 2.0, [[1, 2]])
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl(inside, teacher, 2.0).item() > 0.05  # the plain KL does ask for the split
    loss.backward()
    assert inside.grad.abs().max() < 1e-6
    log_p = torch.log_softmax(torch.randn(4, 5), dim=1)
    merged = merge_class_groups(log_p, [[3, 1], [0, 4]])
    assert merged.shape == (4, 3)
    torch.testing.assert_close(merged.exp(), torch.stack(
        [log_p[:, 2].exp(), log_p[:, [3, 1]].exp().sum(1), log_p[:, [0, 4]].exp().sum(1)], dim=1))
    assert merge_class_groups(log_p, []) is log_p


def test_lovasz_softmax_by_hand_and_ignore_index():
    probs = torch.tensor([[0.0, 0.8, 0.2], [0.0, 0.4, 0.6], [0.0, 0.3, 0.7]])
    labels = torch.tensor([1, 1, 2])
    # class 1: errors sorted (.6, .3, .2), fg (1, 0, 1), Jaccard gradient (1/2, 1/6, 1/3)
    # class 2: errors sorted (.6, .3, .2), fg (0, 1, 0), Jaccard gradient (1/2, 1/2, 0)
    expected = 0.5 * ((0.6 / 2 + 0.3 / 6 + 0.2 / 3) + (0.6 / 2 + 0.3 / 2))
    assert float(lovasz_softmax(probs, labels, ignore_index=0)) == pytest.approx(expected, abs=1e-6)
    # an ignored point changes nothing
    probs_x = torch.cat([probs, torch.tensor([[0.1, 0.1, 0.8]])])
    labels_x = torch.cat([labels, torch.tensor([0])])
    assert float(lovasz_softmax(probs_x, labels_x, ignore_index=0)) == pytest.approx(expected, abs=1e-6)
    # a perfect prediction costs nothing; nothing labelled costs 0 (not NaN)
    perfect = torch.nn.functional.one_hot(labels, 3).float()
    assert float(lovasz_softmax(perfect, labels)) == pytest.approx(0.0, abs=1e-7)
    assert float(lovasz_softmax(probs, torch.zeros(3, dtype=torch.long))) == 0.0


def test_cross_entropy_ignores_label_zero_and_never_returns_nan():
    logits = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 0])
    expected = _ce([0.0, 2.0, 0.0], 1)
    assert float(cross_entropy(logits, labels)) == pytest.approx(expected, abs=1e-6)
    empty = cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    assert float(empty) == 0.0
    empty.backward()  # still attached to the graph
    assert logits.grad is not None


def test_class_balance_weights_by_hand():
    # the teacher predicts classes 1 and 2 four times each; the threshold keeps three 1s and one 2
    predicted = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2])
    selected = torch.tensor([1, 1, 1, 2])
    w = class_balance_weights(predicted, selected, 4)
    # each class gets half of the total weight 4: 2 over three class-1 rows, 2 on the class-2 row
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    torch.testing.assert_close(w.sum(), torch.tensor(4.0))
    # class 3 predicted but never selected: its share goes to the others, the total stays
    w3 = class_balance_weights(torch.tensor([1, 1, 2, 2, 3, 3]), torch.tensor([1, 2, 2]), 4)
    torch.testing.assert_close(w3, torch.tensor([1.5, 0.75, 0.75]))
    # selection in the teacher's own proportions changes nothing
    torch.testing.assert_close(class_balance_weights(predicted, torch.tensor([1, 2]), 4), torch.ones(2))
    assert class_balance_weights(predicted, torch.tensor([], dtype=torch.long), 4).numel() == 0


def test_cross_entropy_weighted_rows_by_hand():
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 2, 0])  # the last row is ignored, whatever its weight
    weight = torch.tensor([1.0, 0.25, 9.0])
    row = [-torch.log_softmax(logits[i].detach(), 0)[labels[i]] for i in range(2)]
    want = (1.0 * row[0] + 0.25 * row[1]) / 1.25
    torch.testing.assert_close(cross_entropy(logits, labels, 0, weight=weight), want)
    unit = cross_entropy(logits, labels, 0, weight=torch.ones(3))
    torch.testing.assert_close(unit, cross_entropy(logits, labels, 0))
    empty = cross_entropy(logits, torch.zeros(3, dtype=torch.long), 0, weight=weight)
    assert float(empty) == 0.0
