"""xModel-KD: a sparse 3D UNet taught by a camera branch through contrastive alignment and distillation.

Training uses both branches (SPEC section 3): per-point 3D logits (CE + Lovasz), 2D pixel logits at
the paired pixels (CE), a fused head on paired points (CE), symmetric InfoNCE between 3D and 2D
embeddings at several scales, and a KL that makes the 3D predictions follow the detached fused (or
2D) ones. With `use_camera: false` no camera module is built: the same 3D network is the LiDAR-only
baseline. Inference runs the 3D branch alone unless fusion is asked for. Two stages besides the joint
training: the camera branch alone on images with dense labels (an `ImageBatch`: the camera teacher),
and a frozen camera branch (`distillation.freeze_camera`) that only teaches. A batch with no labeled
point (unlabeled paired scans) trains through the camera terms alone. Its settings, `ModelConfig`
(sections `architecture`, `losses`, `distillation`), live in `models/model_config.py` and are
re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xkd_core.data.collate import Batch, ImageBatch
from xkd_core.geometry.voxelize import scatter_mean, voxelize
from xkd_core.losses import cross_entropy, info_nce, kd_kl_log_probs, lovasz_softmax, mean_distribution
from xkd_core.models.camera_branch import CameraBranch, sample_at_pixels
from xkd_core.models.heads import FusionHead, PointHead, ProjectionHead, labels_from_logits
from xkd_core.models.kd_arbiter import KDArbiter
from xkd_core.models.model_config import ArchitectureConfig, DistillationConfig, LossConfig, ModelConfig
from xkd_core.models.sparse_backend import get_spconv
from xkd_core.models.sparse_unet import SparseUNet, point_rows_at_level

#: Point input of the point branch: x, y, z, intensity and the offset to the voxel centre (in voxels).
POINT_IN = 7
#: Voxel input of the UNet: mean x, y, z, intensity of the voxel's points.
VOXEL_IN = 4

__all__ = ["POINT_IN", "VOXEL_IN", "ArchitectureConfig", "DistillationConfig", "LossConfig", "ModelConfig",
           "XModelKD"]


class XModelKD(nn.Module):
    """The model: `forward(batch)` -> outputs, `loss(out, batch)` -> loss terms, `predict` -> logits."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str | None = None,
                 load_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        arch = cfg.architecture
        self.unet = SparseUNet(VOXEL_IN, arch.unet_channels, arch.unet_decoder_channels, arch.unet_blocks,
                               backend=cfg.backend, device=device)
        c0 = self.unet.level_channels[0]
        self.point_head = PointHead(POINT_IN, c0, cfg.num_classes)
        # the attribute keeps its name: it prefixes the checkpoints' weight names ("image_net.")
        self.image_net: CameraBranch | None = None
        self.kd_arbiter: KDArbiter | None = None
        if cfg.use_camera:
            self.image_net = CameraBranch(arch.image_backbone, arch.image_pretrained, arch.image_out_indices,
                                          arch.fpn_dim, cfg.num_classes, load_weights=load_weights)
            self.proj_3d = nn.ModuleList(ProjectionHead(self.unet.level_channels[l3], arch.embed_dim)
                                         for l3, _ in arch.scales)
            self.proj_2d = nn.ModuleList(ProjectionHead(arch.fpn_dim, arch.embed_dim) for _ in arch.scales)
            self.fusion_head = FusionHead(c0, arch.fpn_dim, arch.fusion_hidden, cfg.num_classes)
            if cfg.distillation.freeze_camera:
                self.image_net.requires_grad_(False)
            if cfg.distillation.kd_arbiter:
                self.kd_arbiter = KDArbiter(cfg.num_classes, cfg.ignore_index)

    @property
    def camera_frozen(self) -> bool:
        """Whether the camera branch is a fixed teacher (`distillation.freeze_camera`)."""
        return self.image_net is not None and self.cfg.distillation.freeze_camera

    def train(self, mode: bool = True) -> XModelKD:
        """As `nn.Module.train`, but a frozen camera branch stays in eval mode (its BatchNorm statistics
        are the teacher's, not this run's)."""
        super().train(mode)
        if self.camera_frozen:
            self.image_net.eval()
        return self

    @classmethod
    def from_config(cls, cfg: ModelConfig, device: torch.device | str | None = None,
                    load_weights: bool = True) -> XModelKD:
        """Build the model: random init, image encoder weights as `architecture.image_pretrained` says
        (`load_weights=False`: random there too, for a model whose checkpoint brings every weight; the
        camera branch still normalises images as those weights expect)."""
        return cls(cfg, device, load_weights)

    def for_device(self, device: torch.device | str) -> XModelKD:
        """This model on `device`: moved, or rebuilt with the same weights where the sparse library differs.

        Why: with `backend: auto` a model built for the CPU holds spconv layers, and on a machine
        that also has spconv-triton its CUDA copy must hold spconv-triton layers (the CPU wheel has
        no CUDA kernels). Both store weights alike, so the state dict carries over unchanged.
        """
        device = torch.device(device)
        if get_spconv(self.cfg.backend, device) is self.unet.spconv:
            return self.to(device)
        model = XModelKD(self.cfg, device, load_weights=False)
        model.load_state_dict(self.state_dict(), strict=True)
        return model.to(device).train(self.training)

    # ------------------------------------------------------------------------------------- forward

    def forward(self, batch: Batch | ImageBatch, camera: bool = True) -> dict[str, Any]:
        """Run the network. An `ImageBatch` runs the camera branch alone: `logits_2d` (I, C, H, W) at
        the input resolution (`pixel_logits`). A `Batch`:

        Always: `logits_3d` (N, C), `point_feat` (N, F). When the camera is built, `camera` is True
        and the batch has images and pairs: `logits_2d` (I, C, h, w); `fused_point` (M',) the
        distinct paired points; `pair_index` (M,) the row of `fused_point` of each pair;
        `logits_fused` (M', C) from the 3D feature and the view-averaged 2D feature; `nce_pairs` (P,)
        the pairs kept for InfoNCE (at most `max_pairs`, random in training, evenly spaced in eval)
        with `emb_3d` / `emb_2d` lists (per scale) of (P, D) L2-normalised embeddings and `nce_rows`
        (per scale) the voxel row of each kept pair's point at that scale's 3D level.
        """
        if isinstance(batch, ImageBatch):
            return {"logits_2d": self.pixel_logits(batch.images)}
        return self._run(batch, camera=camera, embeddings=True)

    def _camera(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        if self.image_net is None:
            raise ValueError("this model has no camera branch (use_camera: false)")
        if self.camera_frozen:
            with torch.no_grad():
                return self.image_net(images)
        return self.image_net(images)

    def pixel_logits(self, images: Tensor) -> Tensor:
        """(I, C, H, W) logits of the camera branch at every input pixel: the finest level's logits
        upsampled with the convention of `sample_at_pixels` (pixel centres on feature centres), so a
        pixel's value here is what a point projected onto that pixel centre reads."""
        logits = self._camera(images)[1]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)

    def _run(self, batch: Batch, camera: bool, embeddings: bool) -> dict[str, Any]:
        cfg = self.cfg
        pts = batch.points
        if pts.ndim != 2 or pts.shape[1] != 4:
            raise ValueError(f"batch.points must be (N, 4), got {tuple(pts.shape)}")
        if pts.shape[0] == 0:
            raise ValueError("batch.points is empty: the 3D network needs at least one point")
        voxel_size = cfg.architecture.voxel_size
        vox = voxelize(pts[:, :3], batch.batch_idx, voxel_size, batch.num_samples)
        p2v = vox.point2voxel
        vin = scatter_mean(pts, p2v, vox.num_voxels)
        levels = self.unet(vin, vox.coords, vox.spatial_shape, vox.batch_size)
        offset = (pts[:, :3] - vox.centers()[p2v].to(pts.dtype)) / voxel_size
        point_feat = self.point_head.features(levels[0].features[p2v], torch.cat([pts, offset], 1))
        out: dict[str, Any] = {"logits_3d": self.point_head(point_feat), "point_feat": point_feat}

        if (self.image_net is None or not camera or batch.images is None or batch.pair_point.numel() == 0):
            return out
        hw = batch.image_hw
        fpn, logits_2d = self._camera(batch.images)
        out["logits_2d"] = logits_2d
        pair_point, pair_image, pair_uv = batch.pair_point, batch.pair_image, batch.pair_uv
        # fused head: one row per distinct paired point, 2D features averaged over its views
        fused_point, pair_index = torch.unique(pair_point, sorted=True, return_inverse=True)
        f2d = sample_at_pixels(fpn[0], pair_image, pair_uv, hw)
        f2d_point = scatter_mean(f2d.float(), pair_index, fused_point.shape[0])
        out["fused_point"] = fused_point
        out["pair_index"] = pair_index
        f3d_point = point_feat[fused_point]
        if cfg.losses.fused_detach_3d:
            f3d_point = f3d_point.detach()
        out["logits_fused"] = self.fusion_head(f3d_point, f2d_point)
        if not embeddings or (self.training and cfg.losses.wc == 0):  # no InfoNCE to feed: skip its cost
            return out
        sel = self._select_pairs(pair_point.shape[0], pair_point.device)
        out["nce_pairs"] = sel
        sel_point = pair_point[sel]
        sel_coords = vox.coords[p2v[sel_point]]
        emb_3d, emb_2d, nce_rows = [], [], []
        for k, (l3, l2) in enumerate(cfg.architecture.scales):
            rows = point_rows_at_level(levels[l3].indices, sel_coords, l3)
            nce_rows.append(rows)
            emb_3d.append(self.proj_3d[k](levels[l3].features[rows]))
            emb_2d.append(self.proj_2d[k](sample_at_pixels(fpn[l2], pair_image[sel], pair_uv[sel], hw)))
        out["emb_3d"] = emb_3d
        out["emb_2d"] = emb_2d
        out["nce_rows"] = nce_rows
        return out

    def _select_pairs(self, m: int, device: torch.device) -> Tensor:
        """Indices of at most `max_pairs` pairs: InfoNCE costs O(P^2) memory."""
        p = self.cfg.losses.max_pairs
        if m <= p:
            return torch.arange(m, device=device)
        if self.training:
            return torch.randperm(m, device=device)[:p].sort().values
        return torch.linspace(0, m - 1, p, device=device).round().long()

    # ---------------------------------------------------------------------------------------- loss

    def loss(self, out: dict[str, Any], batch: Batch | ImageBatch) -> dict[str, Tensor]:
        """All loss terms and `total` = ce_3d + w_lovasz lovasz_3d [+ w2d ce_2d + w_fused ce_fused
        + wc contrastive + wkd kd when the camera branch ran]. `terms["kd"]` is the unweighted KL
        (T^2-scaled, averaged as `distillation.kd_average` says). Points labeled `ignore_index` (or a
        batch without labels) add nothing to the supervised terms, which are then 0, not NaN; a
        frozen camera branch has no `ce_2d`. An `ImageBatch` gives the camera teacher's dense pixel
        cross-entropy (`ce_2d` = `total`)."""
        cfg, losses, kd = self.cfg, self.cfg.losses, self.cfg.distillation
        if isinstance(batch, ImageBatch):
            ce = cross_entropy(out["logits_2d"].permute(0, 2, 3, 1).reshape(-1, cfg.num_classes),
                               batch.classes.reshape(-1), cfg.ignore_index)
            return {"ce_2d": ce, "total": ce}
        logits_3d = out["logits_3d"]
        labels = batch.labels
        if labels is None:  # unlabeled paired scans: only the camera terms teach
            labels = torch.full((logits_3d.shape[0],), cfg.ignore_index, dtype=torch.long,
                                device=logits_3d.device)
        terms: dict[str, Tensor] = {}
        total = logits_3d.new_zeros(())
        if "logits_2d" in out:
            hw = batch.image_hw
            pair_point = batch.pair_point
            fused_point, pair_index = out["fused_point"], out["pair_index"]
            logits_2d_pairs = sample_at_pixels(out["logits_2d"], batch.pair_image, batch.pair_uv, hw).float()
            if not self.camera_frozen:
                if batch.label_class is not None:  # data.image_labels: scan, the scan's labels in the views
                    logits_2d_labeled = sample_at_pixels(out["logits_2d"], batch.label_image, batch.label_uv,
                                                         hw)
                    terms["ce_2d"] = cross_entropy(logits_2d_labeled.float(), batch.label_class,
                                                   cfg.ignore_index)
                else:
                    terms["ce_2d"] = cross_entropy(logits_2d_pairs, labels[pair_point], cfg.ignore_index)
                total = total + losses.w2d * terms["ce_2d"]
            terms["ce_fused"] = cross_entropy(out["logits_fused"], labels[fused_point], cfg.ignore_index)
            contrastive = logits_3d.new_zeros(())
            if "emb_3d" in out:
                for e3, e2, rows in zip(out["emb_3d"], out["emb_2d"], out["nce_rows"]):
                    # pairs on one voxel of this scale share their 3D embedding: not each other's negatives
                    contrastive = contrastive + info_nce(e3, e2, losses.tau, rows[:, None] == rows[None, :])
            terms["contrastive"] = contrastive
            if kd.kd_teacher == "fused":
                teacher = F.log_softmax(out["logits_fused"].detach().float() / kd.kd_T, dim=1)
            else:  # every view that sees the point: the mean of their distributions
                teacher = mean_distribution(logits_2d_pairs, pair_index, fused_point.shape[0], kd.kd_T)
            student = logits_3d[fused_point]
            keep = self._kd_points(student, teacher, labels[fused_point])
            if keep is not None:
                student, teacher = student[keep], teacher[keep]
            kl = kd_kl_log_probs(student, teacher, kd.kd_T)
            denominator = logits_3d.shape[0] if kd.kd_average == "all" else fused_point.shape[0]
            terms["kd"] = kl * (student.shape[0] / max(denominator, 1))
            total = (total + kd.wkd * terms["kd"] + losses.w_fused * terms["ce_fused"]
                     + losses.wc * terms["contrastive"])
        terms["ce_3d"] = cross_entropy(logits_3d, labels, cfg.ignore_index)
        terms["lovasz_3d"] = lovasz_softmax(F.softmax(logits_3d.float(), dim=1), labels, cfg.ignore_index)
        total = total + terms["ce_3d"] + losses.w_lovasz * terms["lovasz_3d"]
        terms["total"] = total
        return terms

    def _kd_points(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor | None:
        """(N,) bool, the paired points the KL reaches (None: every one): `distillation.kd_labeled`
        on the labeled points, the arbiter's choice on the unlabeled ones."""
        keep = labels == self.cfg.ignore_index if self.cfg.distillation.kd_labeled == "none" else None
        if self.kd_arbiter is not None:
            arbiter = self._arbitrate(student, teacher, labels)
            keep = arbiter if keep is None else keep & arbiter
        return keep

    def _arbitrate(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """(N,) bool, the paired points the KL keeps (`distillation.kd_arbiter`): every labeled one, and
        the unlabeled ones whose (student, teacher) class pair the teacher wins; a training step first
        counts its labeled points into the table."""
        s = labels_from_logits(student, self.cfg.ignore_index)
        t = labels_from_logits(teacher, self.cfg.ignore_index)
        if self.training:
            self.kd_arbiter.update(s, t, labels)
        return (labels != self.cfg.ignore_index) | self.kd_arbiter.teacher_wins(s, t)

    # ----------------------------------------------------------------------------------- inference

    def predict(self, batch: Batch, fuse: bool = False) -> Tensor:
        """(N, C) logits: the 3D head, or the fused head for paired points when `fuse` and a camera
        branch and images are available. The caller picks train/eval mode and grad context."""
        out = self._run(batch, camera=fuse, embeddings=False)
        logits = out["logits_3d"]
        if fuse and "logits_fused" in out:
            logits = logits.index_copy(0, out["fused_point"], out["logits_fused"].to(logits.dtype))
        return logits
