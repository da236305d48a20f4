"""XModelKD and its parts on tiny random batches: shapes, finite gradients everywhere, pairing logic."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import camera, random_frame, tiny_config

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError, from_dict
from xkd_core.data.collate import collate, prepare_sample
from xkd_core.geometry.voxelize import voxelize
from xkd_core.losses import class_balance_weights, kd_kl, lovasz_softmax
from xkd_core.models.image_net import ImageNet, build_encoder, sample_at_pixels
from xkd_core.models.sparse_unet import SparseUNet, point_rows_at_level
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD

HW = (32, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _batch(seed: int, use_camera: bool = True):
    """Sample 0: two overlapping cameras (multi-view); sample 1: one camera looking backwards."""
    rng = np.random.default_rng(seed)
    frames = [random_frame(rng, 1500, [camera(rng, (40, 80), 0.0, "a"), camera(rng, (40, 80), 40.0, "b")]),
              random_frame(rng, 1200, [camera(rng, (40, 80), 180.0, "c")])]
    samples = [prepare_sample(f, train=False, rng=None, point_aug=None, image_aug=None, image_hw=HW,
                              use_camera=use_camera) for f in frames]
    return collate(samples)


def _assert_all_grads_finite(model: torch.nn.Module):
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


def test_baseline_builds_no_camera_module_and_trains():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(use_camera=False)).train()
    assert model.image_net is None
    assert not any(k.startswith(("image_net", "proj_", "fusion_head")) for k in model.state_dict())
    batch = _batch(0, use_camera=False)
    out = model(batch)
    assert out["logits_3d"].shape == (2700, 20) and torch.isfinite(out["logits_3d"]).all()
    assert "logits_2d" not in out
    losses = model.loss(out, batch)
    assert set(losses) == {"ce_3d", "lovasz_3d", "total"}
    losses["total"].backward()
    _assert_all_grads_finite(model)


def test_xmodel_kd_forward_shapes_and_gradients_of_every_module():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = XModelKD(cfg).train()
    batch = _batch(1)
    out = model(batch)
    n, m = len(batch.points), len(batch.pair_point)
    assert out["logits_3d"].shape == (n, 20)
    assert out["logits_2d"].shape[:2] == (3, 20) and out["logits_2d"].shape[2:] == (HW[0] // 4, HW[1] // 4)
    fused = out["fused_point"]
    assert out["logits_fused"].shape == (len(fused), 20)
    assert torch.equal(fused[out["pair_index"]], batch.pair_point)
    assert len(out["nce_pairs"]) == min(m, cfg.max_pairs)
    for e3, e2 in zip(out["emb_3d"], out["emb_2d"]):
        assert e3.shape == e2.shape == (len(out["nce_pairs"]), cfg.embed_dim)
        torch.testing.assert_close(e3.norm(dim=1), torch.ones(len(e3)))
    losses = model.loss(out, batch)
    assert set(losses) == {"ce_3d", "lovasz_3d", "ce_2d", "ce_fused", "contrastive", "kd", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    expected = (losses["ce_3d"] + cfg.w_lovasz * losses["lovasz_3d"] + cfg.w2d * losses["ce_2d"]
                + cfg.w_fused * losses["ce_fused"] + cfg.wc * losses["contrastive"] + cfg.wkd * losses["kd"])
    torch.testing.assert_close(losses["total"], expected)
    losses["total"].backward()
    _assert_all_grads_finite(model)
    assert model.image_net.encoder.conv1.weight.grad.abs().sum() > 0


def test_multi_view_points_are_fused_once_and_unpaired_points_still_predicted():
    torch.manual_seed(0)
    model = XModelKD(tiny_config()).eval()
    batch = _batch(2)
    pp = batch.pair_point
    views_per_point = torch.bincount(pp, minlength=len(batch.points))
    assert (views_per_point == 2).any(), "the two overlapping cameras should share points"
    unpaired = views_per_point == 0
    assert unpaired.any()
    with torch.inference_mode():
        out = model(batch)
        assert len(out["fused_point"]) == int((views_per_point > 0).sum())
        plain = model.predict(batch, fuse=False)
        fused = model.predict(batch, fuse=True)
    assert plain.shape == fused.shape == (len(batch.points), 20)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused[unpaired], plain[unpaired])
    torch.testing.assert_close(fused[out["fused_point"]], out["logits_fused"])
    assert not torch.allclose(fused[~unpaired], plain[~unpaired])


def test_in_eval_the_kept_pairs_are_deterministic_and_bounded():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(max_pairs=64)).eval()
    batch = _batch(3)
    with torch.inference_mode():
        a, b = model(batch)["nce_pairs"], model(batch)["nce_pairs"]
    assert len(a) == 64 and torch.equal(a, b)


def test_kd_moves_only_the_student_and_2d_teacher_works():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_teacher="2d")).train()
    batch = _batch(4)
    losses = model.loss(model(batch), batch)
    assert torch.isfinite(losses["kd"]) and losses["kd"].item() > 0
    losses["kd"].backward()
    assert all(p.grad is None for p in model.image_net.parameters())
    assert all(p.grad is None for p in model.fusion_head.parameters())
    assert model.point_head.classifier[-1].weight.grad.abs().sum() > 0


def test_class_aware_negatives_leave_nothing_to_contrast_within_one_class():
    """With `nce_negatives: other_class` pixels of the point's own class are no negatives: if every
    sampled point has the same label, each softmax holds only its positive and InfoNCE is exactly 0;
    with one other class present it is positive and smaller than with all negatives."""
    torch.manual_seed(0)
    batch = _batch(5)
    model = XModelKD(tiny_config(nce_negatives="other_class")).train()
    out = model(batch)
    batch.labels = torch.full_like(batch.labels, 3)
    assert model.loss(out, batch)["contrastive"].item() == pytest.approx(0.0, abs=1e-6)
    batch.labels[batch.pair_point[out["nce_pairs"]][::2]] = 5
    class_aware = model.loss(out, batch)["contrastive"].item()
    model.cfg.nce_negatives = "all"
    assert 0.0 < class_aware < model.loss(out, batch)["contrastive"].item()


def test_fused_head_can_be_kept_off_the_3d_features():
    torch.manual_seed(0)
    batch = _batch(6)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = XModelKD(tiny_config(fused_detach_3d=detach)).train()
        model.loss(model(batch), batch)["ce_fused"].backward()
        grads[detach] = [p.grad for p in model.unet.parameters()]
        assert model.fusion_head.net[0].weight.grad.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads[False])
    assert all(g is None or g.abs().sum() == 0 for g in grads[True])


def test_kd_averaged_over_all_points_weighs_each_point_like_the_cross_entropy():
    batch = _batch(7)
    terms = {}
    for average in ("paired", "all"):
        torch.manual_seed(0)
        model = XModelKD(tiny_config(kd_average=average)).train()
        out = model(batch)
        terms[average] = model.loss(out, batch)["kd"]
    paired, total = out["fused_point"].shape[0], batch.points.shape[0]
    assert 0 < paired < total  # some points have no pixel
    torch.testing.assert_close(terms["all"], terms["paired"] * paired / total)


def test_kd_groups_keep_the_kl_out_of_the_choice_within_a_group():
    """With road / parking merged for the KL, moving logit mass between the two classes changes the
    plain KL but not the grouped one; classes outside the group are still taught."""
    batch = _batch(9)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_groups=[["road", "parking"]])).train()
    out = model(batch)
    road, parking = CLASS_NAMES.index("road"), CLASS_NAMES.index("parking")
    grouped = model.loss(out, batch)["kd"].item()
    shifted = dict(out, logits_3d=out["logits_3d"].detach().clone())
    mass = torch.logsumexp(shifted["logits_3d"][:, [road, parking]], dim=1)
    shifted["logits_3d"][:, road] = mass + math.log(0.9)
    shifted["logits_3d"][:, parking] = mass + math.log(0.1)
    assert model.loss(shifted, batch)["kd"].item() == pytest.approx(grouped, rel=1e-4)
    plain = XModelKD(tiny_config()).train()
    assert plain.loss(shifted, batch)["kd"].item() != pytest.approx(plain.loss(out, batch)["kd"].item(),
                                                                     rel=1e-3)
    assert grouped > 0


@pytest.mark.parametrize(("groups", "message"), [
    ([["road"]], "needs >= 2 classes"),
    ([["road", "tarmac"]], "unknown class 'tarmac'"),
    ([["road", "unlabeled"]], "unknown class 'unlabeled'"),
    ([["road", "parking"], ["parking", "sidewalk"]], "'parking' is in two groups"),
])
def test_kd_groups_are_validated(groups, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(kd_groups=groups)
    with pytest.raises(ValueError, match="needs kd_loss: kl"):
        tiny_config(kd_groups=[["road", "parking"]], kd_loss="pseudo_label")


def test_kd_ramp_scales_only_the_distillation_term():
    batch = _batch(8)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_ramp_steps=40, wkd=2.0)).train()
    assert [model.kd_scale(s) for s in (0, 10, 40, 400)] == [0.0, 0.25, 1.0, 1.0]
    assert XModelKD(tiny_config()).kd_scale(0) == 1.0  # no ramp: full weight from the first step
    out = model(batch)
    full, quarter = model.loss(out, batch), model.loss(out, batch, kd_scale=0.25)
    assert full["kd"].item() > 0
    torch.testing.assert_close(quarter["kd"], full["kd"])  # the logged term is the unweighted KL
    torch.testing.assert_close(full["total"] - quarter["total"], 0.75 * 2.0 * full["kd"])
    with pytest.raises(ValueError, match="kd_ramp_steps"):
        tiny_config(kd_ramp_steps=-1)
    delayed = XModelKD(tiny_config(kd_start_step=100, kd_ramp_steps=40))
    assert [delayed.kd_scale(s) for s in (0, 99, 100, 110, 140, 400)] == [0.0, 0.0, 0.0, 0.25, 1.0, 1.0]
    assert XModelKD(tiny_config(kd_start_step=100)).kd_scale(99) == 0.0
    assert XModelKD(tiny_config(kd_start_step=100)).kd_scale(100) == 1.0
    with pytest.raises(ValueError, match="kd_start_step"):
        tiny_config(kd_start_step=-1)
    stopped = XModelKD(tiny_config(kd_ramp_steps=40, kd_stop_step=600))
    assert [stopped.kd_scale(s) for s in (0, 20, 599, 600, 1199)] == [0.0, 0.5, 1.0, 0.0, 0.0]
    assert XModelKD(tiny_config()).kd_scale(10**6) == 1.0  # 0: distillation never stops
    for start, stop in ((0, -1), (100, 100), (100, 50)):
        with pytest.raises(ValueError, match="kd_stop_step"):
            tiny_config(kd_start_step=start, kd_stop_step=stop)


def test_sample_at_pixels_reads_the_right_place_in_every_image():
    H, W, h, w = 33, 65, 9, 17
    jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                            indexing="xy")
    fmap = torch.stack([jj * (W - 1) / (w - 1), ii * (H - 1) / (h - 1), torch.zeros(h, w)])  # image u, v
    fmap = fmap[None].repeat(3, 1, 1, 1)
    fmap[:, 2] = torch.arange(3.0)[:, None, None] * 1000  # which image
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(50, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])
    image = torch.randint(0, 3, (50,), generator=g)
    got = sample_at_pixels(fmap, image, uv, (H, W))
    torch.testing.assert_close(got[:, :2], uv, atol=1e-4, rtol=0)
    torch.testing.assert_close(got[:, 2], image.float() * 1000)
    assert sample_at_pixels(fmap, image[:0], uv[:0], (H, W)).shape == (0, 3)


def test_unet_levels_and_point_rows():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    xyz = torch.from_numpy(rng.uniform(-4, 4, (800, 3)).astype(np.float32))
    batch = torch.from_numpy(np.repeat([0, 1], 400))
    vox = voxelize(xyz, batch, 0.3)
    unet = SparseUNet(3, [4, 8, 8], [4, 8], blocks=2)
    feats = torch.zeros(vox.num_voxels, 3)
    levels = unet(feats.index_add(0, vox.point2voxel, xyz), vox.coords, vox.spatial_shape, 2)
    assert [lv.features.shape[1] for lv in levels] == unet.level_channels == [4, 8, 8]
    point_coords = vox.coords[vox.point2voxel]
    for s, lv in enumerate(levels):
        expect = torch.unique(torch.cat([vox.coords[:, :1], vox.coords[:, 1:] >> s], 1), dim=0)
        got = torch.unique(lv.indices, dim=0)
        assert torch.equal(got, expect)
        rows = point_rows_at_level(lv.indices, point_coords, s)
        want = torch.cat([point_coords[:, :1], point_coords[:, 1:] >> s], 1)
        assert torch.equal(lv.indices[rows], want)
    with pytest.raises(RuntimeError, match="no voxel"):
        point_rows_at_level(levels[1].indices, point_coords + 1000, 1)


def test_image_net_levels_and_local_weights(tmp_path):
    torch.manual_seed(0)
    net = ImageNet("resnet18", "none", [1, 2], 8, 20)
    feats, logits = net(torch.randn(2, 3, 32, 64))
    assert [f.shape for f in feats] == [(2, 8, 8, 16), (2, 8, 4, 8)] and net.reductions == [4, 8]
    assert logits.shape == (2, 20, 8, 16)
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in net.encoder.state_dict().items()}}, path)
    loaded = build_encoder("resnet18", str(path), [1, 2])
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match=r"enc\.pt.*does not match backbone 'resnet34'"):
        build_encoder("resnet34", str(path), [1, 2])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_encoder("resnet18", str(tmp_path / "nope.pt"), [1, 2])


def test_model_config_is_validated_with_named_fields():
    assert from_dict(ModelConfig, {"use_camera": False}).use_camera is False
    with pytest.raises(ConfigError, match=r"scales\[0\]"):
        from_dict(ModelConfig, {"scales": [[5, 0]]})
    with pytest.raises(ConfigError, match="unet_decoder_channels"):
        from_dict(ModelConfig, {"unet_channels": [8, 16, 32], "unet_decoder_channels": [8]})
    with pytest.raises(ConfigError, match="kd_teacher"):
        from_dict(ModelConfig, {"kd_teacher": "lidar"})
    with pytest.raises(ConfigError, match="nce_negatives"):
        from_dict(ModelConfig, {"nce_negatives": "same_class"})
    with pytest.raises(ConfigError, match="kd_average"):
        from_dict(ModelConfig, {"kd_average": "frustum"})
    with pytest.raises(ConfigError, match="w2d"):
        from_dict(ModelConfig, {"w2d": -1.0})


def test_kd_min_confidence_leaves_unsure_teacher_points_out_of_the_kl():
    batch = _batch(9)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_average="all")).train()
    out = model(batch)
    teacher = out["logits_fused"].detach().float()
    real = teacher.clone()
    real[:, 0] = float("-inf")
    conf = torch.softmax(real, dim=1).max(dim=1).values
    thr = float(conf.median())
    taught = conf >= thr
    assert 0 < int(taught.sum()) < len(conf)
    model.cfg.kd_min_confidence = thr
    got = model.loss(out, batch)["kd"]
    rows = out["fused_point"][taught]
    want = kd_kl(out["logits_3d"][rows], teacher[taught], model.cfg.kd_T) * len(rows) / len(batch.points)
    torch.testing.assert_close(got, want)
    model.cfg.kd_min_confidence = 0.0
    all_rows = model.loss(out, batch)["kd"]
    want_all = kd_kl(out["logits_3d"][out["fused_point"]], teacher, model.cfg.kd_T)
    torch.testing.assert_close(all_rows, want_all * len(out["fused_point"]) / len(batch.points))
    with pytest.raises(ValueError, match="kd_min_confidence"):
        tiny_config(kd_min_confidence=1.0)
    with pytest.raises(ValueError, match="kd_loss"):
        tiny_config(kd_loss="mse")


def test_pseudo_labels_fill_the_unlabeled_paired_points_and_weigh_wkd():
    batch = _batch(10)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_loss="pseudo_label", wkd=0.5, w_lovasz=0.0)).train()
    out = model(batch)
    fused_point_any = out["fused_point"]
    labels = batch.labels.clone()
    labels[fused_point_any[::2]] = 0  # half the paired points lose their label
    labels[:5] = 0  # and a few others
    batch.labels = labels
    terms = model.loss(out, batch)
    teacher = out["logits_fused"].detach().float().clone()  # the loss reads it again
    teacher[:, 0] = float("-inf")
    pseudo = labels[fused_point_any] == 0
    targets = labels.clone()
    targets[fused_point_any[pseudo]] = teacher.argmax(dim=1)[pseudo]
    weight = torch.ones(len(labels))
    weight[fused_point_any[pseudo]] = 0.5
    ce = F.cross_entropy(out["logits_3d"].float(), targets, ignore_index=0, reduction="none")
    keep = targets != 0
    torch.testing.assert_close(terms["ce_3d"], (ce * weight)[keep].sum() / weight[keep].sum())
    torch.testing.assert_close(terms["kd"], ce[fused_point_any[pseudo]].mean())
    expected = (terms["ce_3d"] + model.cfg.w2d * terms["ce_2d"] + model.cfg.w_fused * terms["ce_fused"]
                + model.cfg.wc * terms["contrastive"])  # kd is logged, not added again
    torch.testing.assert_close(terms["total"], expected)
    terms["kd"].backward()  # the teacher's classes are targets: nothing flows back into the teacher
    assert all(p.grad is None for p in model.fusion_head.parameters())
    assert model.point_head.classifier[-1].weight.grad.abs().sum() > 0
    # a confident-only teacher: a threshold no point reaches leaves the plain labels
    model.zero_grad()
    model.cfg.kd_min_confidence = 0.999999
    plain = model.loss(out, batch)
    plain_ce = F.cross_entropy(out["logits_3d"].float(), labels, ignore_index=0)
    torch.testing.assert_close(plain["ce_3d"], plain_ce)
    # off at weight 0 (e.g. the first step of a KD ramp)
    model.cfg.kd_min_confidence = 0.0
    torch.testing.assert_close(model.loss(out, batch, kd_scale=0.0)["ce_3d"], plain["ce_3d"])


def test_kd_class_balance_reweights_pseudo_labels_to_the_teachers_class_frequencies():
    batch = _batch(10)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_loss="pseudo_label", kd_class_balance=True, wkd=0.5,
                                 w_lovasz=0.0)).train()
    out = model(batch)
    fp = out["fused_point"]
    labels = batch.labels.clone()
    labels[fp] = 0  # every paired point is a pseudo-label candidate
    batch.labels = labels
    teacher = out["logits_fused"].detach().float().clone()  # the loss reads it again
    teacher[:, 0] = float("-inf")
    conf, cls = torch.softmax(teacher, dim=1).max(dim=1)
    thr = float(conf.median())
    model.cfg.kd_min_confidence = thr
    sel = conf >= thr
    assert 0 < int(sel.sum()) < len(conf)
    # by hand: class c's rows share wkd * #selected * n_pred(c) / (n_pred summed over selected classes)
    n_pred = torch.bincount(cls, minlength=20).float()
    n_sel = torch.bincount(cls[sel], minlength=20).float()
    share = n_pred[n_sel > 0].sum()
    targets = labels.clone()
    targets[fp[sel]] = cls[sel]
    weight = torch.ones(len(labels))
    weight[fp[sel]] = 0.5 * (n_pred / n_sel.clamp(min=1))[cls[sel]] * int(sel.sum()) / share
    torch.testing.assert_close(weight[fp[sel]].sum(), torch.tensor(0.5 * int(sel.sum())))
    assert weight[fp[sel]].std() > 0.01  # the threshold did skew the classes: balancing changes weights
    ce = F.cross_entropy(out["logits_3d"].float(), targets, ignore_index=0, reduction="none")
    keep = targets != 0
    want = (ce * weight)[keep].sum() / weight[keep].sum()
    torch.testing.assert_close(model.loss(out, batch)["ce_3d"], want)
    with pytest.raises(ValueError, match="kd_class_balance"):
        tiny_config(kd_class_balance=True)  # the default kd_loss is the KL


def test_kd_blind_recall_tracks_the_teachers_recall_and_keeps_its_blind_classes_from_the_student():
    model = XModelKD(tiny_config(kd_loss="pseudo_label", kd_blind_recall=0.5, kd_blind_decay=0.5))
    assert model.teacher_recall.shape == (2, 20) and "teacher_recall" in model.state_dict()
    truth, teacher = torch.tensor([1, 1, 2, 2, 0]), torch.tensor([1, 3, 3, 3, 1])
    blind = model._update_teacher_recall(truth, teacher)
    torch.testing.assert_close(model.teacher_recall[:, 1:4], torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert blind.nonzero().flatten().tolist() == [2]  # class 1 at recall 0.5 is not; 3 was never labelled
    blind = model._update_teacher_recall(torch.tensor([2, 2]), torch.tensor([2, 2]))
    # class 2: counted 0.5 * 2 + 0.5 * 2 = 2, right 0 + 0.5 * 2 = 1 -> recall 0.5, no longer blind
    assert not bool(blind.any())
    assert not hasattr(XModelKD(tiny_config()), "teacher_recall")  # off: no buffer, checkpoints as before
    with pytest.raises(ValueError, match="kd_blind_recall"):
        tiny_config(kd_blind_recall=1.5)

    # in the loss: unlabelled paired points the student gives a blind class get no pseudo-label
    batch = _batch(11)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_loss="pseudo_label", kd_blind_recall=0.5, kd_blind_decay=1e-6,
                                 w_lovasz=0.0)).train()
    out = model(batch)
    fp = out["fused_point"]
    labels = batch.labels.clone()
    labels[fp[1::2]] = 0  # half the paired points are pseudo-label candidates
    batch.labels = labels
    student = out["logits_3d"][fp].detach().argmax(dim=1)
    teacher = out["logits_fused"].detach().float().clone()  # the loss reads it again
    teacher[:, 0] = float("-inf")
    teacher_class = teacher.argmax(dim=1)
    known = labels[fp] != 0
    # the teacher's recall on this batch decides (decay ~0): pick the student class it is worst at
    seen = torch.bincount(labels[fp][known], minlength=20).float()
    hits = torch.bincount(labels[fp][known & (teacher_class == labels[fp])], minlength=20).float()
    blind = (seen > 0) & (hits < 0.5 * seen)
    cand = labels[fp] == 0
    assert bool(blind[student[cand]].any()) and not bool(blind[student[cand]].all())
    pseudo = cand & ~blind[student]
    targets = labels.clone()
    targets[fp[pseudo]] = teacher_class[pseudo]
    weight = torch.ones(len(labels))
    weight[fp[pseudo]] = model.cfg.wkd
    ce = F.cross_entropy(out["logits_3d"].float(), targets, ignore_index=0, reduction="none")
    keep = targets != 0
    want = (ce * weight)[keep].sum() / weight[keep].sum()
    torch.testing.assert_close(model.loss(out, batch)["ce_3d"], want)


def test_kd_pseudo_mix_separate_keeps_the_labels_own_mean_and_adds_the_pseudo_label_ce():
    batch = _batch(10)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_loss="pseudo_label", kd_pseudo_mix="separate", wkd=0.5)).train()
    out = model(batch)
    fp = out["fused_point"]
    labels = batch.labels.clone()
    labels[fp[::2]] = 0
    batch.labels = labels
    terms = model.loss(out, batch)
    teacher = out["logits_fused"].detach().float().clone()  # not in place: the loss reads it again
    teacher[:, 0] = float("-inf")
    pseudo = labels[fp] == 0
    logits = out["logits_3d"].float()
    # the labels alone in ce_3d and lovasz_3d, as without a teacher
    torch.testing.assert_close(terms["ce_3d"], F.cross_entropy(logits, labels, ignore_index=0))
    torch.testing.assert_close(terms["lovasz_3d"], lovasz_softmax(F.softmax(logits, dim=1), labels, 0))
    want_kd = F.cross_entropy(logits[fp[pseudo]], teacher.argmax(dim=1)[pseudo])
    torch.testing.assert_close(terms["kd"], want_kd)
    expected = (terms["ce_3d"] + model.cfg.w_lovasz * terms["lovasz_3d"] + 0.5 * want_kd
                + model.cfg.w2d * terms["ce_2d"] + model.cfg.w_fused * terms["ce_fused"]
                + model.cfg.wc * terms["contrastive"])
    torch.testing.assert_close(terms["total"], expected)
    # kd_scale 0 (before kd_start_step) leaves the labels' loss alone
    plain = model.loss(out, batch, kd_scale=0.0)
    torch.testing.assert_close(plain["total"], expected - 0.5 * want_kd)
    # with a threshold and class balance, the pseudo-label CE is the balanced mean over the taught
    conf, cls = torch.softmax(teacher, dim=1).max(dim=1)
    thr = float(conf[pseudo].median())
    model.cfg.kd_min_confidence, model.cfg.kd_class_balance = thr, True
    taught = pseudo & (conf >= thr)
    w = class_balance_weights(cls[pseudo], cls[taught], 20)
    assert w.std() > 0.01
    rows = F.cross_entropy(logits[fp[taught]], cls[taught], reduction="none")
    torch.testing.assert_close(model.loss(out, batch)["kd"], (rows * w).sum() / w.sum())
    with pytest.raises(ValueError, match="kd_pseudo_mix"):
        tiny_config(kd_pseudo_mix="mean")
    with pytest.raises(ValueError, match="kd_pseudo_mix: separate needs"):
        tiny_config(kd_pseudo_mix="separate")  # the default kd_loss is the KL


def test_2d_cross_entropy_uses_the_camera_labels_when_the_batch_has_them():
    """`data.image_labels: scan` hands the 2D CE its own labeled pixels; given exactly the pairs'
    pixels and classes it equals the default CE, and other classes change only that term."""
    torch.manual_seed(0)
    model = XModelKD(tiny_config()).train()
    batch = _batch(3)
    out = model(batch)
    base = model.loss(out, batch)
    own = dataclasses.replace(batch, label_image=batch.pair_image, label_uv=batch.pair_uv,
                              label_class=batch.labels[batch.pair_point])
    same = model.loss(out, own)
    assert torch.allclose(same["ce_2d"], base["ce_2d"]) and torch.allclose(same["total"], base["total"])
    shifted = dataclasses.replace(own, label_class=(own.label_class % 19) + 1)
    moved = model.loss(out, shifted)
    assert not torch.allclose(moved["ce_2d"], base["ce_2d"])
    for k in ("ce_3d", "ce_fused", "kd"):
        assert torch.equal(moved[k], base[k])
    # only some pixels labeled: the mean runs over those alone
    few = dataclasses.replace(own, label_image=own.label_image[:50], label_uv=own.label_uv[:50],
                              label_class=own.label_class[:50])
    logits = sample_at_pixels(out["logits_2d"], few.label_image, few.label_uv, batch.image_hw).float()
    keep = few.label_class != 0
    assert 0 < int(keep.sum()) < 50 or bool(keep.all())
    expected = F.cross_entropy(logits[keep], few.label_class[keep])
    assert torch.allclose(model.loss(out, few)["ce_2d"], expected)
