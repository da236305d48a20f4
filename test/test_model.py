"""XModelKD and its parts on tiny random batches: shapes, finite gradients everywhere, pairing logic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import HW, paired_batch, tiny_config

from xkd_core.config import ConfigError, from_dict, to_dict
from xkd_core.data.collate import ImageBatch
from xkd_core.geometry.voxelize import voxelize
from xkd_core.losses import info_nce, kd_kl
from xkd_core.models.camera_branch import CameraBranch, build_encoder, sample_at_pixels
from xkd_core.models.model_config import REMOVED, migrate_model_dict
from xkd_core.models.sparse_unet import SparseUNet, point_rows_at_level
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


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
    batch = paired_batch(0, use_camera=False)
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
    batch = paired_batch(1)
    out = model(batch)
    n, m = len(batch.points), len(batch.pair_point)
    assert out["logits_3d"].shape == (n, 20)
    assert out["logits_2d"].shape[:2] == (3, 20) and out["logits_2d"].shape[2:] == (HW[0] // 4, HW[1] // 4)
    fused = out["fused_point"]
    assert out["logits_fused"].shape == (len(fused), 20)
    assert torch.equal(fused[out["pair_index"]], batch.pair_point)
    assert len(out["nce_pairs"]) == min(m, cfg.losses.max_pairs)
    for e3, e2 in zip(out["emb_3d"], out["emb_2d"]):
        assert e3.shape == e2.shape == (len(out["nce_pairs"]), cfg.architecture.embed_dim)
        torch.testing.assert_close(e3.norm(dim=1), torch.ones(len(e3)))
    losses = model.loss(out, batch)
    assert set(losses) == {"ce_3d", "lovasz_3d", "ce_2d", "ce_fused", "contrastive", "kd", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    w, kd = cfg.losses, cfg.distillation
    expected = (losses["ce_3d"] + w.w_lovasz * losses["lovasz_3d"] + w.w2d * losses["ce_2d"]
                + w.w_fused * losses["ce_fused"] + w.wc * losses["contrastive"] + kd.wkd * losses["kd"])
    torch.testing.assert_close(losses["total"], expected)
    losses["total"].backward()
    _assert_all_grads_finite(model)
    assert model.image_net.encoder.conv1.weight.grad.abs().sum() > 0


def test_multi_view_points_are_fused_once_and_unpaired_points_still_predicted():
    torch.manual_seed(0)
    model = XModelKD(tiny_config()).eval()
    batch = paired_batch(2)
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
    batch = paired_batch(3)
    with torch.inference_mode():
        a, b = model(batch)["nce_pairs"], model(batch)["nce_pairs"]
    assert len(a) == 64 and torch.equal(a, b)


def test_kd_moves_only_the_student_and_2d_teacher_works():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_teacher="2d")).train()
    batch = paired_batch(4)
    losses = model.loss(model(batch), batch)
    assert torch.isfinite(losses["kd"]) and losses["kd"].item() > 0
    losses["kd"].backward()
    assert all(p.grad is None for p in model.image_net.parameters())
    assert all(p.grad is None for p in model.fusion_head.parameters())
    assert model.point_head.classifier[-1].weight.grad.abs().sum() > 0


def test_fused_head_can_be_kept_off_the_3d_features():
    torch.manual_seed(0)
    batch = paired_batch(6)
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
    batch = paired_batch(7)
    terms = {}
    for average in ("paired", "all"):
        torch.manual_seed(0)
        model = XModelKD(tiny_config(kd_average=average)).train()
        out = model(batch)
        terms[average] = model.loss(out, batch)["kd"]
    paired, total = out["fused_point"].shape[0], batch.points.shape[0]
    assert 0 < paired < total  # some points have no pixel
    torch.testing.assert_close(terms["all"], terms["paired"] * paired / total)
    # by hand: the tempered KL of every paired point towards the detached fused head
    teacher = out["logits_fused"].detach()
    want = kd_kl(out["logits_3d"][out["fused_point"]], teacher, model.cfg.distillation.kd_T)
    torch.testing.assert_close(terms["all"], want * paired / total)


def test_kd_labeled_picks_the_labeled_points_the_kl_reaches():
    batch = paired_batch(7)
    labels = batch.labels.clone()
    labels[1::3] = 0  # a third of the points unlabeled
    batch = dataclasses.replace(batch, labels=labels)
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_average="all")).eval()
    out = model(batch)
    fused, total = out["fused_point"], batch.points.shape[0]
    student, teacher = out["logits_3d"][fused], out["logits_fused"].detach()
    T = model.cfg.distillation.kd_T
    unlabeled = labels[fused] == 0
    assert unlabeled.any() and (~unlabeled).any()
    for which, keep in (("all", torch.ones_like(unlabeled)), ("none", unlabeled)):
        model.cfg.distillation.kd_labeled = which
        kd = model.loss(out, batch)["kd"]
        want = kd_kl(student[keep], teacher[keep], T) * keep.sum() / total
        torch.testing.assert_close(kd, want)
    # every point labeled and kd_labeled "none": no KL at all, the LiDAR branch learns as the baseline
    dense = dataclasses.replace(batch, labels=batch.labels.clamp(min=1))
    model.cfg.distillation.kd_labeled = "none"
    terms = model.loss(model(dense), dense)
    assert terms["kd"].item() == 0.0 and torch.isfinite(terms["total"])


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


def test_camera_branch_levels_and_local_weights(tmp_path):
    torch.manual_seed(0)
    net = CameraBranch("resnet18", "none", [1, 2], 8, 20)
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
    cases = [
        ({"architecture": {"scales": [[5, 0]]}}, r"model\.architecture: scales\[0\]"),
        ({"architecture": {"unet_channels": [8, 16, 32], "unet_decoder_channels": [8]}},
         r"model\.architecture: unet_decoder_channels"),
        ({"distillation": {"kd_teacher": "lidar"}}, r"model\.distillation\.kd_teacher"),
        ({"distillation": {"kd_average": "frustum"}}, r"model\.distillation\.kd_average"),
        ({"distillation": {"kd_labeled": "agreeing"}}, r"model\.distillation\.kd_labeled"),
        ({"losses": {"w2d": -1.0}}, r"model\.losses: w2d must be >= 0"),
        ({"losses": {"tau": 0.0}}, r"model\.losses: tau must be > 0"),
        ({"architecture": {"image_pretrained": "imagenet"}},
         "fit image_backbone: efficientnet_lite0 only; got image_backbone .resnet18."),
        ({"kd_T": 2.0}, r"unknown config key.*model\.kd_T"),  # from_dict alone knows no flat keys
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            from_dict(ModelConfig, data, "model")


def test_flat_model_config_moves_into_sections_and_removed_switches_are_refused_when_on():
    """The layout of configs and checkpoints written before the sections still means the same model."""
    flat = {"num_classes": 20, "voxel_size": 0.1, "unet_channels": [16, 32, 64],
            "unet_decoder_channels": [32, 32],
            "image_pretrained": "none", "wc": 0.0, "max_pairs": 1024, "fused_detach_3d": True, "wkd": 1.0,
            "kd_average": "all", "nce_negatives": "all", "kd_groups": [], "kd_stop_step": 0}
    cfg = from_dict(ModelConfig, migrate_model_dict(flat))
    assert cfg.architecture.voxel_size == 0.1 and cfg.architecture.unet_channels == [16, 32, 64]
    assert cfg.losses.wc == 0.0 and cfg.losses.max_pairs == 1024 and cfg.losses.fused_detach_3d is True
    assert cfg.distillation.kd_average == "all" and cfg.num_classes == 20
    # today's layout passes unchanged; migration does not modify its input
    assert migrate_model_dict(to_dict(cfg)) == to_dict(cfg)
    assert "voxel_size" in flat
    for key, on in [("kd_groups", [["road", "parking"]]), ("nce_negatives", "other_class"),
                    ("kd_loss", "pseudo_label"), ("kd_stop_step", 600), ("kd_min_confidence", 0.9),
                    ("kd_blind_recall", 0.5), ("kd_ramp_steps", 300)]:
        assert key in REMOVED
        with pytest.raises(ConfigError, match=rf"model\.{key} = .*was removed.*only .* is accepted"):
            migrate_model_dict({**flat, key: on})
    assert "kd_blind_decay" not in migrate_model_dict({**flat, "kd_blind_decay": 0.5})  # it qualified recall
    with pytest.raises(ConfigError, match=r"wkd is given twice.*model\.distillation\.wkd = 1\.0"):
        migrate_model_dict({"wkd": 0.5, "distillation": {"wkd": 1.0}})
    assert migrate_model_dict({"wkd": 1.0, "distillation": {"wkd": 1.0}}) == {"distillation": {"wkd": 1.0}}


def test_2d_cross_entropy_uses_the_camera_labels_when_the_batch_has_them():
    """`data.image_labels: scan` hands the 2D CE its own labeled pixels; given exactly the pairs'
    pixels and classes it equals the default CE, and other classes change only that term."""
    torch.manual_seed(0)
    model = XModelKD(tiny_config()).train()
    batch = paired_batch(3)
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


# --------------------------------------------------------------- stages: teacher, frozen teacher, no labels


def test_a_frozen_camera_branch_only_teaches():
    """freeze_camera: eval mode under train(), no gradient, no 2D loss, BatchNorm statistics kept; the
    KL, the fused head and the projection heads still learn."""
    torch.manual_seed(0)
    model = XModelKD(tiny_config(freeze_camera=True, kd_teacher="2d", wc=0.1)).train()
    assert model.camera_frozen and not model.image_net.training and model.unet.training
    assert not any(p.requires_grad for p in model.image_net.parameters())
    stats = {k: v.clone() for k, v in model.image_net.state_dict().items()}
    batch = paired_batch(8)
    out = model(batch)
    assert not out["logits_2d"].requires_grad
    losses = model.loss(out, batch)
    assert "ce_2d" not in losses and losses["kd"] > 0
    w, kd = model.cfg.losses, model.cfg.distillation
    expected = (losses["ce_3d"] + w.w_lovasz * losses["lovasz_3d"] + w.w_fused * losses["ce_fused"]
                + w.wc * losses["contrastive"] + kd.wkd * losses["kd"])
    torch.testing.assert_close(losses["total"], expected)
    losses["total"].backward()
    assert all(p.grad is None for p in model.image_net.parameters())
    assert all(torch.equal(v, stats[k]) for k, v in model.image_net.state_dict().items())  # running stats too
    for head in (model.fusion_head, model.proj_2d, model.proj_3d, model.unet):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_the_2d_teacher_of_a_point_seen_twice_is_the_mean_of_both_distributions():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_teacher="2d", kd_average="paired")).train()
    batch = paired_batch(2)
    out = model(batch)
    kd = model.loss(out, batch)["kd"]
    T = model.cfg.distillation.kd_T
    pairs = sample_at_pixels(out["logits_2d"], batch.pair_image, batch.pair_uv, batch.image_hw).detach()
    fused = out["fused_point"].tolist()
    twice = 0
    by_hand = []
    for point in fused:  # one point at a time, its views listed by hand
        views = (batch.pair_point == point).nonzero().flatten()
        twice += len(views) == 2
        teacher = F.softmax(pairs[views] / T, dim=1).mean(0)
        student = F.log_softmax(out["logits_3d"][point].detach() / T, dim=0)
        by_hand.append((teacher * (teacher.log() - student)).sum() * T * T)
    assert twice > 0
    torch.testing.assert_close(kd.detach(), torch.stack(by_hand).mean(), rtol=1e-4, atol=1e-6)


def test_pairs_on_one_voxel_are_not_each_others_negatives():
    """The 3D embedding of a scale is its voxel's: pairs whose points share that voxel share it too, so
    InfoNCE leaves them out of each other's denominators (the other views of a point among them)."""
    torch.manual_seed(0)
    model = XModelKD(tiny_config(wc=1.0, max_pairs=4096)).eval()
    batch = paired_batch(5)
    with torch.no_grad():
        out = model(batch)
        got = model.loss(out, batch)["contrastive"]
    want, shared = 0.0, []
    tau = model.cfg.losses.tau
    for e3, e2, rows in zip(out["emb_3d"], out["emb_2d"], out["nce_rows"]):
        same = rows[:, None] == rows[None, :]
        shared.append(int(same.sum()) - len(rows))
        want = want + info_nce(e3, e2, tau, same)
        sel = batch.pair_point[out["nce_pairs"]]
        assert bool(same[sel[:, None] == sel[None, :]].all())  # the same point is always the same voxel
    assert shared[-1] > shared[0] > 0  # coarser scales hold more pairs per voxel
    torch.testing.assert_close(got, want)


def test_a_batch_without_labels_trains_through_the_camera_terms_alone():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(kd_teacher="2d")).train()
    batch = paired_batch(9)
    for unlabeled in (dataclasses.replace(batch, labels=None),
                      dataclasses.replace(batch, labels=torch.zeros_like(batch.labels))):
        model.zero_grad(set_to_none=True)
        losses = model.loss(model(unlabeled), unlabeled)
        assert all(torch.isfinite(v) for v in losses.values())
        for k in ("ce_3d", "lovasz_3d", "ce_2d", "ce_fused"):
            assert losses[k].item() == 0.0
        assert losses["kd"] > 0 and losses["contrastive"] > 0
        losses["total"].backward()
        assert model.unet.stem[0].weight.grad.abs().sum() > 0


def test_without_infonce_weight_training_skips_the_embeddings():
    torch.manual_seed(0)
    model = XModelKD(tiny_config(wc=0.0)).train()
    batch = paired_batch(1)
    assert "emb_3d" not in model(batch) and model.loss(model(batch), batch)["contrastive"].item() == 0.0
    with torch.no_grad():
        assert "emb_3d" in model.eval()(batch)  # evaluation still reports them


def test_an_image_batch_runs_the_camera_branch_alone_with_dense_labels():
    torch.manual_seed(0)
    model = XModelKD(tiny_config()).train()
    images = torch.randn(3, 3, *HW)
    classes = torch.randint(0, 20, (3, *HW))
    batch = ImageBatch(images, classes)
    out = model(batch)
    logits = out["logits_2d"]
    assert set(out) == {"logits_2d"} and logits.shape == (3, 20, *HW)
    # a pixel's logit is what a point projected on that pixel centre reads from the coarse logits
    coarse = model.image_net(images)[1]
    uv = torch.tensor([[0.0, 0.0], [HW[1] - 1.0, HW[0] - 1.0], [17.0, 9.0]])
    img = torch.tensor([0, 1, 2])
    at = sample_at_pixels(coarse, img, uv, HW)
    torch.testing.assert_close(logits[img, :, uv[:, 1].long(), uv[:, 0].long()], at)
    losses = model.loss(out, batch)
    flat, target = logits.permute(0, 2, 3, 1).reshape(-1, 20), classes.reshape(-1)
    keep = target != 0
    torch.testing.assert_close(losses["ce_2d"], F.cross_entropy(flat[keep], target[keep]))
    assert losses["total"] is losses["ce_2d"]
    losses["total"].backward()
    assert model.image_net.encoder.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.unet.parameters())
