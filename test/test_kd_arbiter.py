"""The disagreement arbiter (`distillation.kd_arbiter`): its table, and the KL it leaves out."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_fixtures import paired_batch, tiny_config

from xkd_core.losses import kd_kl
from xkd_core.models.kd_arbiter import DECAY, KDArbiter
from xkd_core.models.xmodel_kd import XModelKD


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_the_table_counts_labeled_points_and_gives_each_pair_to_the_class_the_labels_saw_more():
    arbiter = KDArbiter(num_classes=4, ignore_index=0)
    student, teacher = torch.tensor([1, 1, 1, 2, 3]), torch.tensor([2, 2, 2, 2, 1])
    arbiter.update(student, teacher, torch.tensor([1, 1, 2, 0, 0]))  # the unlabeled (0) points count nothing
    assert arbiter.counts.sum().item() == 3
    # pair (student 1, teacher 2): the truth was 1 twice, 2 once -> the student wins it;
    # pair (3, 1) was never labeled: a tie, the teacher teaches; agreement always keeps the KL
    wins = arbiter.teacher_wins(torch.tensor([1, 3, 2, 2]), torch.tensor([2, 1, 2, 1]))
    assert wins.tolist() == [False, True, True, True]
    # the old counts fade: truth 1 at 2 * DECAY, truth 2 at DECAY + 1 after one more labeled 2
    arbiter.update(torch.tensor([1]), torch.tensor([2]), torch.tensor([2]))
    assert arbiter.counts[(1 * 4 + 2) * 4 + 1].item() == pytest.approx(2 * DECAY)
    assert arbiter.counts[(1 * 4 + 2) * 4 + 2].item() == pytest.approx(DECAY + 1)
    assert arbiter.teacher_wins(torch.tensor([1]), torch.tensor([2])).tolist() == [True]


def test_the_kl_leaves_out_unlabeled_points_whose_pair_the_student_wins_and_keeps_labeled_ones():
    batch = paired_batch(11)
    labels = batch.labels.clone()
    labels[1::2] = 0  # every other point unlabeled
    batch = dataclasses.replace(batch, labels=labels)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_arbiter=True, kd_average="all")).eval()
    c = model.cfg.num_classes
    out = model(batch)
    fused = out["fused_point"]
    out["logits_fused"] = out["logits_fused"].clone()
    out["logits_fused"][:50] = out["logits_3d"][fused[:50]]  # points where student and teacher agree
    student = out["logits_3d"][fused].detach().clone()
    teacher = out["logits_fused"].detach().clone()
    student[:, 0] = teacher[:, 0] = float("-inf")
    s, t = student.argmax(1), teacher.argmax(1)
    disagree = s != t
    assert disagree.any() and (~disagree).any()
    # a table where the student won every pair it was ever seen in
    counts = torch.zeros(c, c, c)
    counts[s, t, s] = 1.0
    model.kd_arbiter.counts.copy_(counts.flatten())
    kd = model.loss(out, batch)["kd"]
    keep = (labels[fused] != 0) | ~disagree
    assert (~keep).any()
    want = kd_kl(out["logits_3d"][fused][keep], out["logits_fused"][keep], model.cfg.distillation.kd_T)
    torch.testing.assert_close(kd, want * keep.sum() / labels.shape[0])
    # evaluation does not count; a training step does (its labeled paired points, after the decay)
    torch.testing.assert_close(model.kd_arbiter.counts, counts.flatten())
    model.train().loss(out, batch)
    labeled = int((labels[fused] != 0).sum())
    assert model.kd_arbiter.counts.sum().item() == pytest.approx(DECAY * counts.sum().item() + labeled)


def test_an_empty_table_is_the_plain_kl_and_checkpoints_do_not_carry_it():
    batch = paired_batch(12)
    batch = dataclasses.replace(batch, labels=torch.zeros_like(batch.labels))  # a log: nothing labeled
    kd = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = XModelKD(tiny_config(kd_arbiter=on)).eval()
        kd[on] = model.loss(model(batch), batch)["kd"]
    torch.testing.assert_close(kd[True], kd[False])
    assert not any("kd_arbiter" in k for k in model.state_dict())
    plain = XModelKD(tiny_config()).state_dict()
    model.load_state_dict(plain, strict=True)  # a checkpoint of a run without the arbiter loads unchanged
