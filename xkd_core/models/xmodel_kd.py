"""xModel-KD: a sparse 3D UNet taught by a camera branch through contrastive alignment and distillation.

Training uses both branches (SPEC section 3): per-point 3D logits (CE + Lovasz), 2D pixel logits at
the paired pixels (CE), a fused head on paired points (CE), symmetric InfoNCE between 3D and 2D
embeddings at several scales, and a KL that makes the 3D predictions follow the detached fused (or
2D) ones. With `use_camera: false` no camera module is built: the same 3D network is the LiDAR-only
baseline. Inference runs the 3D branch alone unless fusion is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from xkd_core.data.collate import Batch
from xkd_core.geometry.voxelize import scatter_mean, voxelize
from xkd_core.losses import class_balance_weights, cross_entropy, info_nce, kd_kl, lovasz_softmax
from xkd_core.models.heads import FusionHead, PointHead, ProjectionHead
from xkd_core.models.image_net import ImageNet, sample_at_pixels
from xkd_core.models.sparse_backend import BACKENDS, Backend, get_spconv
from xkd_core.models.sparse_unet import SparseUNet, point_rows_at_level

#: Point input of the point branch: x, y, z, intensity and the offset to the voxel centre (in voxels).
POINT_IN = 7
#: Voxel input of the UNet: mean x, y, z, intensity of the voxel's points.
VOXEL_IN = 4


@dataclass
class ModelConfig:
    """Every architecture and loss setting of xModel-KD (the `model:` section of a training config)."""

    num_classes: int = NUM_CLASSES
    ignore_index: int = IGNORE_INDEX
    voxel_size: float = 0.05
    backend: Backend = "auto"  # sparse-convolution library, see models/sparse_backend.py
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # encoder, per level
    unet_decoder_channels: list[int] = field(default_factory=lambda: [64, 96, 128])  # decoder, level 0..L-1
    unet_blocks: int = 1
    use_camera: bool = True  # False: LiDAR-only baseline, no camera module is built
    image_backbone: str = "resnet18"
    image_pretrained: str = "none"  # "none" | "hub" | /path/to/state_dict.pt
    image_out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])
    fpn_dim: int = 64
    embed_dim: int = 64
    scales: list[list[int]] = field(default_factory=lambda: [[0, 0], [1, 1], [2, 2]])  # [3d level, fpn level]
    fusion_hidden: int = 64
    w_lovasz: float = 1.0
    w2d: float = 1.0
    w_fused: float = 1.0
    wc: float = 0.1
    wkd: float = 1.0
    tau: float = 0.07
    kd_T: float = 2.0
    kd_teacher: Literal["fused", "2d"] = "fused"
    max_pairs: int = 4096
    # InfoNCE negatives: "all" other sampled pixels, or only pixels of another class ("other_class":
    # two road points are not pushed apart for lying on different pixels of the same grey asphalt)
    nce_negatives: Literal["all", "other_class"] = "all"
    fused_detach_3d: bool = False  # True: the fused head's CE does not reach the 3D features
    # KL averaged over the paired points ("paired") or over all points of the batch ("all": a point
    # weighs as much in the KL as in the 3D cross-entropy, however few points the camera sees)
    kd_average: Literal["paired", "all"] = "paired"
    # KD weight ramped linearly from 0 to wkd over the first N optimizer steps (0: full weight from
    # the start). The fused teacher learns alongside its student and predicts noise at first.
    kd_ramp_steps: int = 0
    # No distillation before this optimizer step (the ramp, if any, starts here): the teacher learns
    # from the labels alone first, within the run's own budget.
    kd_start_step: int = 0
    # No distillation from this optimizer step on (0: never stops): the student finishes on the
    # labels alone, a test of whether a teacher blind to a LiDAR-only cue holds the student back late
    # in training (docs/results.md, "The wide camera at 1200 steps": on that world it did not help).
    kd_stop_step: int = 0
    # How the teacher teaches. "kl": the KL at temperature kd_T (SPEC section 3). "pseudo_label": the
    # teacher's class becomes the label of paired points that have none, learned with the labels as
    # kd_pseudo_mix says (the limit T -> 0 of the KL, weighted like a label; docs/results.md measures
    # both).
    kd_loss: Literal["kl", "pseudo_label"] = "kl"
    # Points where the teacher's softmax maximum is below this are not taught (0: all paired points).
    kd_min_confidence: float = 0.0
    # pseudo_label only. A confidence threshold keeps more of the easy classes (road) than of the hard
    # ones (sidewalk, pole), so the pseudo-labels carry a class prior the teacher does not hold. True:
    # each class's pseudo-labelled points are reweighted so that their summed weight is in
    # proportion to how many unlabeled paired points the teacher gives that class (in the batch),
    # the total pseudo-label weight unchanged (class-balanced self-training, Zou et al., ECCV 2018).
    kd_class_balance: bool = False
    # pseudo_label only. "pooled": pseudo-labels join the labels in one 3D CE and Lovasz, a
    # pseudo-labelled point weighing wkd times a label, so with few labels they outnumber and dilute
    # the labels (and the label's class balance). "separate": the 3D CE and Lovasz see the labels
    # alone and wkd times the mean CE over the pseudo-labelled points is added, as semi-supervised
    # methods (FixMatch) add their unlabelled term.
    kd_pseudo_mix: Literal["pooled", "separate"] = "pooled"
    # Classes the teacher cannot see (thin poles and trunks in a small image) get its neighbours'
    # class with high confidence. > 0: the teacher's recall per class is tracked on the labelled
    # paired points (a running average, decay kd_blind_decay per step), and a point the student
    # assigns to a class whose recall is below this is not taught. 0: off.
    kd_blind_recall: float = 0.0
    kd_blind_decay: float = 0.99
    # Groups of class names the KL treats as one class (both distributions summed within a group,
    # `losses.merge_class_groups`): the teacher still says "ground, not building" there, the labels
    # alone say which class of the group. For classes only the camera tells apart (on the synthetic
    # world road / parking / other-ground and sidewalk / terrain). []: every class on its own.
    kd_groups: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig.{msg}")

        need(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        need(0 <= self.ignore_index < self.num_classes,
             f"ignore_index must lie in [0, num_classes), got {self.ignore_index}")
        need(self.voxel_size > 0, f"voxel_size must be > 0, got {self.voxel_size}")
        need(self.backend in BACKENDS, f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        need(len(self.unet_channels) >= 2 and min(self.unet_channels) >= 1,
             f"unet_channels needs >= 2 positive widths (level 0 + a downsampling), got {self.unet_channels}")
        need(len(self.unet_decoder_channels) == len(self.unet_channels) - 1
             and min(self.unet_decoder_channels) >= 1,
             f"unet_decoder_channels needs len(unet_channels) - 1 = {len(self.unet_channels) - 1} positive "
             f"widths, got {self.unet_decoder_channels}")
        need(self.unet_blocks >= 1, f"unet_blocks must be >= 1, got {self.unet_blocks}")
        need(bool(self.image_backbone), "image_backbone must be a timm model name")
        need(bool(self.image_pretrained), "image_pretrained must be 'none', 'hub' or a file path")
        outs = list(self.image_out_indices)
        need(len(outs) >= 1 and outs == sorted(set(outs)),
             f"image_out_indices must be increasing and non-empty, got {self.image_out_indices}")
        for name in ("fpn_dim", "embed_dim", "fusion_hidden", "max_pairs"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("w_lovasz", "w2d", "w_fused", "wc", "wkd"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.kd_ramp_steps >= 0, f"kd_ramp_steps must be >= 0, got {self.kd_ramp_steps}")
        need(self.kd_start_step >= 0, f"kd_start_step must be >= 0, got {self.kd_start_step}")
        need(self.kd_stop_step == 0 or self.kd_stop_step > self.kd_start_step,
             f"kd_stop_step must be 0 (never) or > kd_start_step ({self.kd_start_step}), "
             f"got {self.kd_stop_step}")
        need(self.tau > 0, f"tau must be > 0, got {self.tau}")
        need(self.kd_T > 0, f"kd_T must be > 0, got {self.kd_T}")
        need(self.kd_teacher in ("fused", "2d"),
             f"kd_teacher must be 'fused' or '2d', got {self.kd_teacher!r}")
        need(self.nce_negatives in ("all", "other_class"),
             f"nce_negatives must be 'all' or 'other_class', got {self.nce_negatives!r}")
        need(self.kd_average in ("paired", "all"),
             f"kd_average must be 'paired' or 'all', got {self.kd_average!r}")
        need(self.kd_loss in ("kl", "pseudo_label"),
             f"kd_loss must be 'kl' or 'pseudo_label', got {self.kd_loss!r}")
        need(0.0 <= self.kd_min_confidence < 1.0,
             f"kd_min_confidence must lie in [0, 1), got {self.kd_min_confidence}")
        need(0.0 <= self.kd_blind_recall <= 1.0,
             f"kd_blind_recall must lie in [0, 1], got {self.kd_blind_recall}")
        need(0.0 < self.kd_blind_decay < 1.0,
             f"kd_blind_decay must lie in (0, 1), got {self.kd_blind_decay}")
        need(self.kd_pseudo_mix in ("pooled", "separate"),
             f"kd_pseudo_mix must be 'pooled' or 'separate', got {self.kd_pseudo_mix!r}")
        need(self.kd_pseudo_mix == "pooled" or self.kd_loss == "pseudo_label",
             "kd_pseudo_mix: separate needs kd_loss: pseudo_label (the KL is always its own term)")
        need(not self.kd_class_balance or self.kd_loss == "pseudo_label",
             "kd_class_balance needs kd_loss: pseudo_label (it reweights pseudo-labels)")
        if self.kd_groups:
            need(self.num_classes == NUM_CLASSES,
                 f"kd_groups names classes of the class map, which has {NUM_CLASSES} (num_classes "
                 f"is {self.num_classes})")
            need(self.kd_loss == "kl", "kd_groups needs kd_loss: kl (it merges the KL's distributions)")
            known = [n for i, n in enumerate(CLASS_NAMES) if i != self.ignore_index]
            seen: set[str] = set()
            for i, group in enumerate(self.kd_groups):
                need(len(group) >= 2, f"kd_groups[{i}] = {group}: a group needs >= 2 classes")
                for name in group:
                    need(name in known, f"kd_groups[{i}]: unknown class {name!r}; known: {known}")
                    need(name not in seen, f"kd_groups[{i}]: class {name!r} is in two groups")
                    seen.add(name)
        depth = len(self.unet_channels) - 1
        for i, pair in enumerate(self.scales):
            need(len(pair) == 2, f"scales[{i}] must be [3d level, fpn level], got {pair}")
            need(0 <= pair[0] <= depth, f"scales[{i}][0] = {pair[0]}: 3D level must lie in [0, {depth}]")
            need(0 <= pair[1] < len(self.image_out_indices),
                 f"scales[{i}][1] = {pair[1]}: FPN level must lie in [0, {len(self.image_out_indices) - 1}]")


class XModelKD(nn.Module):
    """The model: `forward(batch)` -> outputs, `loss(out, batch)` -> loss terms, `predict` -> logits."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.kd_group_ids = [[CLASS_NAMES.index(n) for n in g] for g in cfg.kd_groups]
        self.unet = SparseUNet(VOXEL_IN, cfg.unet_channels, cfg.unet_decoder_channels, cfg.unet_blocks,
                               backend=cfg.backend, device=device)
        c0 = self.unet.level_channels[0]
        self.point_head = PointHead(POINT_IN, c0, cfg.num_classes)
        self.image_net: ImageNet | None = None
        if cfg.use_camera:
            self.image_net = ImageNet(cfg.image_backbone, cfg.image_pretrained, cfg.image_out_indices,
                                      cfg.fpn_dim, cfg.num_classes)
            self.proj_3d = nn.ModuleList(ProjectionHead(self.unet.level_channels[l3], cfg.embed_dim)
                                         for l3, _ in cfg.scales)
            self.proj_2d = nn.ModuleList(ProjectionHead(cfg.fpn_dim, cfg.embed_dim) for _ in cfg.scales)
            self.fusion_head = FusionHead(c0, cfg.fpn_dim, cfg.fusion_hidden, cfg.num_classes)
            if cfg.kd_blind_recall > 0:
                # running [labelled paired points, of them the teacher got right] per true class; a
                # buffer, so checkpoints and exact resume carry it (DDP broadcasts rank 0's)
                self.register_buffer("teacher_recall", torch.zeros(2, cfg.num_classes, device=device))

    @classmethod
    def from_config(cls, cfg: ModelConfig, device: torch.device | str | None = None) -> XModelKD:
        """Build the model (random init; image weights as `cfg.image_pretrained` says)."""
        return cls(cfg, device)

    def for_device(self, device: torch.device | str) -> XModelKD:
        """This model on `device`: moved, or rebuilt with the same weights where the sparse library differs.

        Why: with `backend: auto` a model built for the CPU holds spconv layers, and on a machine
        that also has spconv-triton its CUDA copy must hold spconv-triton layers (the CPU wheel has
        no CUDA kernels). Both store weights alike, so the state dict carries over unchanged.
        """
        device = torch.device(device)
        if get_spconv(self.cfg.backend, device) is self.unet.spconv:
            return self.to(device)
        model = XModelKD(replace(self.cfg, image_pretrained="none"), device)
        model.cfg = self.cfg
        model.load_state_dict(self.state_dict(), strict=True)
        return model.to(device).train(self.training)

    # ------------------------------------------------------------------------------------- forward

    def forward(self, batch: Batch, camera: bool = True) -> dict[str, Any]:
        """Run the network.

        Always: `logits_3d` (N, C), `point_feat` (N, F). When the camera is built, `camera` is True
        and the batch has images and pairs: `logits_2d` (I, C, h, w); `fused_point` (M',) the
        distinct paired points; `pair_index` (M,) the row of `fused_point` of each pair;
        `logits_fused` (M', C) from the 3D feature and the view-averaged 2D feature; `nce_pairs` (P,)
        the pairs kept for InfoNCE (at most `max_pairs`, random in training, evenly spaced in eval)
        with `emb_3d` / `emb_2d` lists (per scale) of (P, D) L2-normalised embeddings.
        """
        return self._run(batch, camera=camera, embeddings=True)

    def _run(self, batch: Batch, camera: bool, embeddings: bool) -> dict[str, Any]:
        cfg = self.cfg
        pts = batch.points
        if pts.ndim != 2 or pts.shape[1] != 4:
            raise ValueError(f"batch.points must be (N, 4), got {tuple(pts.shape)}")
        if pts.shape[0] == 0:
            raise ValueError("batch.points is empty: the 3D network needs at least one point")
        vox = voxelize(pts[:, :3], batch.batch_idx, cfg.voxel_size, batch.num_samples)
        p2v = vox.point2voxel
        vin = scatter_mean(pts, p2v, vox.num_voxels)
        levels = self.unet(vin, vox.coords, vox.spatial_shape, vox.batch_size)
        offset = (pts[:, :3] - vox.centers()[p2v].to(pts.dtype)) / cfg.voxel_size
        point_feat = self.point_head.features(levels[0].features[p2v], torch.cat([pts, offset], 1))
        out: dict[str, Any] = {"logits_3d": self.point_head(point_feat), "point_feat": point_feat}

        if (self.image_net is None or not camera or batch.images is None or batch.pair_point.numel() == 0):
            return out
        hw = batch.image_hw
        fpn, logits_2d = self.image_net(batch.images)
        out["logits_2d"] = logits_2d
        pair_point, pair_image, pair_uv = batch.pair_point, batch.pair_image, batch.pair_uv
        # fused head: one row per distinct paired point, 2D features averaged over its views
        fused_point, pair_index = torch.unique(pair_point, sorted=True, return_inverse=True)
        f2d = sample_at_pixels(fpn[0], pair_image, pair_uv, hw)
        f2d_point = scatter_mean(f2d.float(), pair_index, fused_point.shape[0])
        out["fused_point"] = fused_point
        out["pair_index"] = pair_index
        f3d_point = point_feat[fused_point]
        if cfg.fused_detach_3d:
            f3d_point = f3d_point.detach()
        out["logits_fused"] = self.fusion_head(f3d_point, f2d_point)
        if not embeddings:
            return out
        sel = self._select_pairs(pair_point.shape[0], pair_point.device)
        out["nce_pairs"] = sel
        sel_point = pair_point[sel]
        sel_coords = vox.coords[p2v[sel_point]]
        emb_3d, emb_2d = [], []
        for k, (l3, l2) in enumerate(cfg.scales):
            rows = point_rows_at_level(levels[l3].indices, sel_coords, l3)
            emb_3d.append(self.proj_3d[k](levels[l3].features[rows]))
            emb_2d.append(self.proj_2d[k](sample_at_pixels(fpn[l2], pair_image[sel], pair_uv[sel], hw)))
        out["emb_3d"] = emb_3d
        out["emb_2d"] = emb_2d
        return out

    def _select_pairs(self, m: int, device: torch.device) -> Tensor:
        """Indices of at most `max_pairs` pairs: InfoNCE costs O(P^2) memory."""
        p = self.cfg.max_pairs
        if m <= p:
            return torch.arange(m, device=device)
        if self.training:
            return torch.randperm(m, device=device)[:p].sort().values
        return torch.linspace(0, m - 1, p, device=device).round().long()

    # ---------------------------------------------------------------------------------------- loss

    def kd_scale(self, step: int) -> float:
        """Factor on `wkd` at optimizer step `step` (0-based): 0 before `kd_start_step`, then the
        `kd_ramp_steps` linear ramp, 0 again from `kd_stop_step` (if set)."""
        if self.cfg.kd_stop_step and step >= self.cfg.kd_stop_step:
            return 0.0
        step -= self.cfg.kd_start_step
        if step < 0:
            return 0.0
        ramp = self.cfg.kd_ramp_steps
        return 1.0 if ramp <= 0 else min(1.0, step / ramp)

    @torch.no_grad()
    def _update_teacher_recall(self, truth: Tensor, teacher_class: Tensor) -> Tensor:
        """Fold this batch's labelled paired points into the running teacher recall; (C,) bool of the
        classes it is blind to (recall below `kd_blind_recall`; a class never seen is not)."""
        c, decay = self.cfg.num_classes, self.cfg.kd_blind_decay
        known = truth != self.cfg.ignore_index
        seen = torch.bincount(truth[known], minlength=c).float()
        hits = torch.bincount(truth[known & (teacher_class == truth)], minlength=c).float()
        self.teacher_recall.mul_(decay).add_((1 - decay) * torch.stack([seen, hits]))
        counted, right = self.teacher_recall
        return (counted > 0) & (right < self.cfg.kd_blind_recall * counted)

    def loss(self, out: dict[str, Any], batch: Batch, kd_scale: float = 1.0) -> dict[str, Tensor]:
        """All loss terms and `total` = ce_3d + w_lovasz lovasz_3d [+ w2d ce_2d + w_fused ce_fused
        + wc contrastive + kd_scale wkd kd when the camera branch ran]. Needs `batch.labels`.
        `terms["kd"]` is the unweighted KL, whatever the scale. With `kd_loss: pseudo_label` it is the
        3D CE on the pseudo-labelled points alone: added (times kd_scale wkd) with `kd_pseudo_mix:
        separate`; logged only when pooled, where the teacher's classes join the labels of ce_3d /
        lovasz_3d."""
        cfg = self.cfg
        if batch.labels is None:
            raise ValueError("XModelKD.loss: batch.labels is None (unlabelled samples cannot be trained on)")
        labels = batch.labels
        logits_3d = out["logits_3d"]
        terms: dict[str, Tensor] = {}
        targets, target_weight = labels, None  # what the 3D CE and Lovasz learn from
        total = logits_3d.new_zeros(())
        if "logits_2d" in out:
            hw = batch.image_hw
            pair_point = batch.pair_point
            fused_point, pair_index = out["fused_point"], out["pair_index"]
            logits_2d_pairs = sample_at_pixels(out["logits_2d"], batch.pair_image, batch.pair_uv, hw).float()
            if batch.label_class is not None:  # data.image_labels: scan, the scan's labels in the views
                logits_2d_labeled = sample_at_pixels(out["logits_2d"], batch.label_image, batch.label_uv, hw)
                terms["ce_2d"] = cross_entropy(logits_2d_labeled.float(), batch.label_class, cfg.ignore_index)
            else:
                terms["ce_2d"] = cross_entropy(logits_2d_pairs, labels[pair_point], cfg.ignore_index)
            terms["ce_fused"] = cross_entropy(out["logits_fused"], labels[fused_point], cfg.ignore_index)
            contrastive = logits_3d.new_zeros(())
            if "emb_3d" in out:
                sel_point = pair_point[out["nce_pairs"]]
                same_point = sel_point[:, None] == sel_point[None, :]
                if cfg.nce_negatives == "other_class":
                    lab = labels[sel_point]
                    same_class = (lab[:, None] == lab[None, :]) & (lab != cfg.ignore_index)[:, None]
                    same_point = same_point | same_class
                for e3, e2 in zip(out["emb_3d"], out["emb_2d"]):
                    contrastive = contrastive + info_nce(e3, e2, cfg.tau, same_point)
            terms["contrastive"] = contrastive
            if cfg.kd_teacher == "fused":
                teacher = out["logits_fused"].detach().float()
            else:
                teacher = scatter_mean(logits_2d_pairs, pair_index, fused_point.shape[0]).detach()
            real = teacher.clone()
            real[:, cfg.ignore_index] = float("-inf")  # the teacher's class is a real one
            confidence, teacher_class = F.softmax(real, dim=1).max(dim=1)
            taught = confidence >= cfg.kd_min_confidence
            if cfg.kd_blind_recall > 0:
                blind = self._update_teacher_recall(labels[fused_point], teacher_class)
                taught = taught & ~blind[logits_3d[fused_point].detach().argmax(dim=1)]
            weight = kd_scale * cfg.wkd
            if cfg.kd_loss == "kl":
                kd_rows = fused_point[taught]
                kd = kd_kl(logits_3d[kd_rows], teacher[taught], cfg.kd_T, self.kd_group_ids)
                denominator = logits_3d.shape[0] if cfg.kd_average == "all" else fused_point.shape[0]
                terms["kd"] = kd * (kd_rows.shape[0] / max(denominator, 1))
                total = total + weight * terms["kd"]
            else:
                unlabeled = labels[fused_point] == cfg.ignore_index
                pseudo = taught & unlabeled
                pseudo_rows, pseudo_class = fused_point[pseudo], teacher_class[pseudo]
                balance = None
                if cfg.kd_class_balance and pseudo_rows.numel():
                    balance = class_balance_weights(teacher_class[unlabeled], pseudo_class,
                                                    logits_3d.shape[1])
                if cfg.kd_pseudo_mix == "separate":  # its own mean, added: the labels keep their weight
                    terms["kd"] = cross_entropy(logits_3d[pseudo_rows], pseudo_class, cfg.ignore_index,
                                                weight=balance)
                    total = total + weight * terms["kd"]
                else:
                    terms["kd"] = cross_entropy(logits_3d[pseudo_rows], pseudo_class,
                                                cfg.ignore_index)  # logged only: it is part of ce_3d
                    if weight > 0:
                        targets = labels.clone()
                        targets[pseudo_rows] = pseudo_class
                        target_weight = torch.ones_like(labels, dtype=torch.float32)
                        target_weight[pseudo_rows] = weight if balance is None else weight * balance
            total = (total + cfg.w2d * terms["ce_2d"] + cfg.w_fused * terms["ce_fused"]
                     + cfg.wc * terms["contrastive"])
        # pooled pseudo-labels: a pseudo-labelled point weighs wkd times a labeled one
        terms["ce_3d"] = cross_entropy(logits_3d, targets, cfg.ignore_index, weight=target_weight)
        terms["lovasz_3d"] = lovasz_softmax(F.softmax(logits_3d.float(), dim=1), targets, cfg.ignore_index)
        total = total + terms["ce_3d"] + cfg.w_lovasz * terms["lovasz_3d"]
        terms["total"] = total
        return terms

    # ----------------------------------------------------------------------------------- inference

    def predict(self, batch: Batch, fuse: bool = False) -> Tensor:
        """(N, C) logits: the 3D head, or the fused head for paired points when `fuse` and a camera
        branch and images are available. The caller picks train/eval mode and grad context."""
        out = self._run(batch, camera=fuse, embeddings=False)
        logits = out["logits_3d"]
        if fuse and "logits_fused" in out:
            logits = logits.index_copy(0, out["fused_point"], out["logits_fused"].to(logits.dtype))
        return logits
