"""Confusion matrix, per-class IoU and mIoU against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xkd_core.classes import CLASS_NAMES, NUM_CLASSES
from xkd_core.evaluation.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou

# 4 classes: 0 = ignore, 1..3 real.
TARGET = torch.tensor([0, 1, 1, 1, 2, 2, 3, 0, 1])
PRED = torch.tensor([2, 1, 1, 2, 2, 0, 1, 3, 3])
# Pairs with target != 0, (t, p): (1,1) (1,1) (1,2) (2,2) (2,0) (3,1) (1,3)
HAND_CONF = [
    [0, 0, 0, 0],
    [0, 2, 1, 1],
    [1, 0, 1, 0],
    [0, 1, 0, 0],
]
# class 1: TP 2, FN 2, FP 1 -> 2/5; class 2: TP 1, FN 1 (predicted ignore), FP 1 -> 1/3;
# class 3: TP 0, FN 1, FP 1 -> 0.
HAND_IOU = [math.nan, 0.4, 1 / 3, 0.0]


def test_confusion_matrix_matches_hand_computed() -> None:
    conf = confusion_matrix(PRED, TARGET, num_classes=4)
    assert conf.dtype == torch.int64
    assert conf.tolist() == HAND_CONF


def test_iou_and_miou_match_hand_computed() -> None:
    conf = torch.tensor(HAND_CONF)
    np.testing.assert_allclose(iou_per_class(conf), HAND_IOU, equal_nan=True)
    assert mean_iou(conf) == pytest.approx((0.4 + 1 / 3 + 0.0) / 3)


def test_miou_averages_only_classes_present_in_ground_truth() -> None:
    # Class 4 is predicted once (for a class-3 point) but never in the ground truth.
    target = torch.cat([TARGET, torch.tensor([3])])
    pred = torch.cat([PRED, torch.tensor([4])])
    conf = confusion_matrix(pred, target, num_classes=5)
    iou = iou_per_class(conf)
    assert math.isnan(iou[4]) and math.isnan(iou[0])
    assert iou[3] == 0.0  # TP 0, FN 2, FP 1
    assert mean_iou(conf) == pytest.approx((0.4 + 1 / 3 + 0.0) / 3)


def test_accumulation_over_batches_equals_one_shot() -> None:
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED[:4], TARGET[:4])
    cm.update(PRED[4:].numpy(), TARGET[4:].numpy())
    assert cm.matrix.tolist() == HAND_CONF
    assert cm.miou() == pytest.approx((0.4 + 1 / 3) / 3)


def test_perfect_and_empty() -> None:
    cm = ConfusionMatrix()
    labels = torch.arange(NUM_CLASSES).repeat(3)
    cm.update(labels, labels)
    assert cm.miou() == 1.0
    empty = ConfusionMatrix()
    empty.update(torch.tensor([1, 2]), torch.tensor([0, 0]))  # only ignore in the truth
    assert math.isnan(empty.miou())
    assert empty.summary()["miou"] is None


def test_summary_names_classes() -> None:
    cm = ConfusionMatrix()
    cm.update(torch.tensor([1, 9, 9, 1]), torch.tensor([1, 9, 1, 0]))
    s = cm.summary()
    assert set(s["per_class_iou"]) == set(CLASS_NAMES[1:])
    assert s["per_class_iou"]["car"] == pytest.approx(0.5)  # TP 1, FN 1 (as road)
    assert s["per_class_iou"]["road"] == pytest.approx(0.5)  # TP 1, FP 1
    assert s["per_class_iou"]["person"] is None
    assert s["classes_present"] == ["car", "road"]
    assert s["num_points"] == 3
    assert len(s["confusion_matrix"]) == NUM_CLASSES
    # the unit of every report (xkd-eval's metrics.json, xkd-bag-eval): percent, four decimals
    cm.update(torch.tensor([1, 1]), torch.tensor([1, 9]))  # car: TP 2, FN 1, FP 1 -> 2/4
    p = cm.summary(percent=True)
    assert p["per_class_iou"]["car"] == 50.0 and p["per_class_iou"]["person"] is None
    cm.update(torch.tensor([9]), torch.tensor([1]))  # car 2/5, road 1/4
    p = cm.summary(percent=True)
    assert p["per_class_iou"]["car"] == 40.0 and p["per_class_iou"]["road"] == 25.0
    assert p["miou"] == round(100 * cm.miou(), 4) and p["num_points"] == 6


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(torch.tensor([25]), torch.tensor([1]))
    with pytest.raises(ValueError, match="pred has 2 labels but target has 3"):
        confusion_matrix(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=0, max_size=60))
def test_matches_a_plain_python_count(pairs: list[tuple[int, int]]) -> None:
    ref = np.zeros((6, 6), dtype=np.int64)
    for t, p in pairs:
        if t != 0:
            ref[t, p] += 1
    target = torch.tensor([t for t, _ in pairs], dtype=torch.int64)
    pred = torch.tensor([p for _, p in pairs], dtype=torch.int64)
    conf = confusion_matrix(pred, target, num_classes=6)
    np.testing.assert_array_equal(conf.numpy(), ref)
    iou = iou_per_class(conf)
    for c in range(1, 6):
        row, col = ref[c].sum(), ref[1:, c].sum()
        if row == 0:
            assert math.isnan(iou[c])
        else:
            assert iou[c] == pytest.approx(ref[c, c] / (row + col - ref[c, c]))
