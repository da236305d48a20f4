"""Loss functions against values computed by hand on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from xkd_core.losses import cross_entropy, info_nce, kd_kl, kd_kl_log_probs, lovasz_softmax, mean_distribution


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
    assert loss.item() == pytest.approx(kl2, abs=1e-6)
    loss.backward()
    assert teacher.grad is None  # the teacher is detached
    assert student.grad is not None and student.grad[0, 0] < 0  # student moves toward class 0
    assert float(kd_kl(teacher.detach(), teacher.detach(), 3.0)) == pytest.approx(0.0, abs=1e-7)


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


def test_mean_distribution_averages_probabilities_not_logits():
    # point 0 seen by two views that disagree, point 1 by one view
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    index = torch.tensor([0, 0, 1])
    T = 2.0
    got = mean_distribution(logits, index, 2, T).exp()
    s = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])[0]
    assert got[0].tolist() == pytest.approx([(s + 0.5) / 2, (1 - s + 0.5) / 2], abs=1e-6)
    one = 1 / (1 + math.exp(-1.0))  # softmax([0, 2] / T)[1]
    assert got[1].tolist() == pytest.approx([1 - one, one], abs=1e-6)
    # (the mean of logits, [2, 0] / T, would give softmax([1, 0])[0] = 0.73 for point 0, not 0.69)
    assert got[0, 0].item() < one - 0.03
    with pytest.raises(ValueError, match="T must be > 0"):
        mean_distribution(logits, index, 2, 0.0)


def test_kd_kl_towards_log_probabilities_matches_kd_kl_for_one_view():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    one_view = mean_distribution(teacher, torch.arange(6), 6, 3.0)
    want = float(kd_kl(student, teacher, 3.0))
    assert float(kd_kl_log_probs(student, one_view, 3.0)) == pytest.approx(want, rel=1e-5)
    assert float(kd_kl_log_probs(torch.zeros(0, 5), torch.zeros(0, 5), 3.0)) == 0.0
