"""The training loop: one process or one rank of a `torchrun` job, with exact resume.

What a step does: forward + `model.loss` under autocast (GPU only), backward (GradScaler for fp16),
optional gradient clipping, optimizer and per-step LR schedule. Every `log_every` steps rank 0 logs
losses, LR, gradient norm, seconds/step and scans/s to TensorBoard, `log.jsonl` and tqdm; every
`val_every` steps all ranks validate their shard and sum confusion matrices; `last.pt` / `best.pt`
(by val mIoU) embed the resolved config, the class map and everything an exact resume needs:
model, optimizer, scheduler, scaler, step, every rank's RNG states and the data position (the data
order is a pure function of seed and step, see `training.data`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import to_dict
from xkd_core.evaluation.metrics import ConfusionMatrix
from xkd_core.models.checkpoint import InputConvention, load_checkpoint, save_checkpoint
from xkd_core.models.heads import labels_from_logits
from xkd_core.models.xmodel_kd import XModelKD
from xkd_core.training import data as tdata
from xkd_core.training.config import DataConfig, TrainConfig, train_config_from_dict
from xkd_core.training.distributed import DistInfo, all_gather_objects, barrier, init_distributed
from xkd_core.training.schedule import build_optimizer, build_scheduler
from xkd_core.training.seeding import capture_rng_state, restore_rng_state, seed_everything

log = logging.getLogger("xkd.train")

TRAIN_STATE_VERSION = 1


@dataclass
class TrainResult:
    """What `Trainer.fit` returns: the step reached, the logged records and the best val mIoU."""

    step: int
    total_steps: int
    history: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    best_miou: float | None = None
    out_dir: Path | None = None


def input_convention(data: DataConfig) -> InputConvention:
    """The intensity convention of the training scans, recorded in every checkpoint.

    SemanticKITTI-format scans (real or xkd-synth) hold 0..1 reflectance; pair logs hold the points
    the node fed its model, already brought to that model's 0..1 convention. The fill for a missing
    intensity stays 0.0: training never shows the model one.
    """
    return InputConvention(intensity_max=1.0, intensity_fill=0.0, source=f"{data.source}: reflectance 0..1")


def adopt_init_architecture(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `model.architecture`, `model.num_classes` / `ignore_index` and `data.image_hw` of its
    `init_checkpoint` (`init_architecture: true`): the network image size belongs to the camera branch's
    training, the architecture to the weights. A LiDAR-only checkpoint has no image size: `data.image_hw`
    stays. Errors name the checkpoint."""
    from xkd_core.models.checkpoint import config_from_checkpoint

    path = cfg.init_checkpoint
    stored, hw = config_from_checkpoint(load_checkpoint(path, map_location="cpu"), path)
    model = dataclasses.replace(cfg.model, architecture=stored.architecture, num_classes=stored.num_classes,
                                ignore_index=stored.ignore_index)
    data = cfg.data if hw is None else dataclasses.replace(cfg.data, image_hw=tuple(hw))
    return dataclasses.replace(cfg, model=model, data=data)


class Trainer:
    """Owns the model, optimizer, data and bookkeeping of one run (see module docstring)."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | Path | None = None,
        progress: bool = True,
        dist_info: DistInfo | None = None,
        device: torch.device | None = None,
    ) -> None:
        if dist_info is None or device is None:
            dist_info, device = init_distributed(cfg.device)
        self.cfg = cfg
        self.info = dist_info
        self.device = device
        self.progress = progress and dist_info.is_main
        self.out_dir = Path(cfg.out_dir)
        self.amp_dtype = self._amp_dtype()

        if cfg.init_architecture:
            cfg = self.cfg = adopt_init_architecture(cfg)
        if cfg.deterministic and device.type == "cpu" and torch.get_num_threads() > 1:
            log.info("deterministic on the CPU: one torch thread instead of %d (multi-threaded kernels sum "
                     "in a varying order)", torch.get_num_threads())
            torch.set_num_threads(1)
        # Same seed on every rank for the weights (DDP also broadcasts rank 0's), then a per-rank seed.
        seed_everything(cfg.seed, cfg.deterministic)
        model = XModelKD(dataclasses.replace(cfg.model, backend=cfg.sparse_backend), device=device)
        loaded: set[str] = set()
        if cfg.init_checkpoint:
            loaded |= self._load_init_weights(model, cfg.init_checkpoint, cfg.init_modules)
        if cfg.teacher_checkpoint:
            loaded |= self._load_teacher(model, cfg.teacher_checkpoint)
        kd = cfg.model.distillation
        teaches = cfg.stage == "lidar" and model.camera_frozen and kd.wkd > 0 and kd.kd_teacher == "2d"
        if teaches and not any(k.startswith("image_net.") for k in loaded):
            raise ValueError("model.distillation.freeze_camera: no checkpoint brought the camera branch, so "
                             "it would teach from its initial weights; init_checkpoint "
                             f"{cfg.init_checkpoint} has none (a LiDAR-only model?): give "
                             "teacher_checkpoint (a camera teacher)")
        if kd.kd_arbiter and cfg.data.source == "pairlog" and cfg.data.mix.root is None:
            warnings.warn("model.distillation.kd_arbiter counts on labeled paired points and this run has "
                          "none (a pair log without data.mix): the KL applies on every point", stacklevel=2)
        if cfg.stage == "camera":  # the camera teacher: only its branch learns (and is in the optimizer)
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("image_net."))
        if dist_info.distributed and cfg.sync_batchnorm and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        seed_everything(cfg.seed + 7919 * dist_info.rank, cfg.deterministic)

        self.train_samples, self.val_samples = tdata.build_sample_datasets(cfg)
        self.steps_per_epoch = tdata.steps_per_epoch(self.train_samples, cfg, dist_info)
        o = cfg.optim
        self.total_steps = o.steps if o.steps is not None else o.epochs * self.steps_per_epoch

        self.optimizer = build_optimizer(self.model.named_parameters(), o)
        self.scheduler = build_scheduler(self.optimizer, o, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_miou: float | None = None
        self.ddp = (
            DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
            if dist_info.distributed
            else None
        )
        if resume is not None:
            self._resume(resume)
        self._tb = None
        self._log_file = None

    # ------------------------------------------------------------------ set-up helpers
    def _amp_dtype(self) -> torch.dtype | None:
        if self.cfg.amp == "none":
            return None
        if self.device.type != "cuda":
            if self.info.is_main:
                warnings.warn(f"amp: {self.cfg.amp} needs a GPU; training in float32 on the CPU",
                              stacklevel=3)
            return None
        return torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16

    def _load_init_weights(self, model: torch.nn.Module, path: str, modules: list[str] | None = None
                           ) -> set[str]:
        """Start from a checkpoint's weights (fine-tuning); parts the checkpoint lacks keep their init.

        With `modules` only the weights of those top-level modules are taken, and the checkpoint must
        hold every one of them (a camera teacher without its camera branch is an error, not a fresh
        init); the rest keep this run's seed init. Returns the names of the weights loaded.
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        state = ckpt["model"]
        if modules is not None:
            own = model.state_dict()
            for name in modules:
                want = {k for k in own if k.startswith(name + ".")}
                if not want:
                    raise ValueError(f"init_modules: this model has no {name} (model.use_camera false?)")
                lacking = sorted(want - set(state))
                if lacking:
                    raise ValueError(f"init_checkpoint {path} lacks {len(lacking)} weights of {name} "
                                     f"(e.g. {lacking[0]}): it was not trained with that module")
            state = {k: v for k, v in state.items() if k.split(".", 1)[0] in modules}
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"init_checkpoint {path} does not fit model config: {exc}") from exc
        if self.info.is_main:
            log.info("initialised from %s (%d missing, %d unexpected keys)", path,
                     len(result.missing_keys), len(result.unexpected_keys))
            if result.missing_keys:
                log.info("kept fresh: %s", ", ".join(result.missing_keys[:8]))
        return set(state) - set(result.unexpected_keys)

    def _load_teacher(self, model: XModelKD, path: str) -> set[str]:
        """Load the camera branch of checkpoint `path` (`teacher_checkpoint`), every weight of it, strictly:
        a teacher that does not fit this model's camera branch is an error naming both."""
        state = load_checkpoint(path, map_location="cpu")["model"]
        prefix = "image_net."
        teacher = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not teacher:
            raise ValueError(f"teacher_checkpoint {path} has no camera branch (image_net weights)")
        try:
            model.image_net.load_state_dict(teacher, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"teacher_checkpoint {path}: its camera branch does not fit "
                             f"model.architecture: {exc}") from exc
        if self.info.is_main:
            log.info("camera teacher from %s (%d weights)", path, len(teacher))
        return {prefix + k for k in teacher}

    def _resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        state = ckpt.get("train_state")
        if state is None:
            raise ValueError(f"{path} has no training state (not written by xkd-train); use init_checkpoint")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_miou = state["best_miou"]
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            restore_rng_state(rng[self.info.rank])
        else:
            warnings.warn(
                f"{path} was written by {len(rng)} process(es), this run has {self.info.world_size}: "
                "RNG streams restart from the seed, so the run continues but is not bit-identical",
                stacklevel=2,
            )
        same_world = state.get("world_size", 1) == self.info.world_size
        if not same_world or state.get("steps_per_epoch") != self.steps_per_epoch:
            warnings.warn(f"{path}: world size or batch size changed; the data order after resuming differs",
                          stacklevel=2)
        if self.info.is_main:
            log.info("resumed from %s at step %d / %d", path, self.step, self.total_steps)

    # ------------------------------------------------------------------ bookkeeping
    def _open_logs(self) -> None:
        if not self.info.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step or None)
        log_path = self.out_dir / "log.jsonl"
        if log_path.is_file():
            # a resumed run repeats the steps after its checkpoint: drop their old records, as
            # TensorBoard's purge_step does, so the log reads like one uninterrupted run
            lines = log_path.read_text().splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            log_path.write_text("".join(ln + "\n" for ln in kept))
        self._log_file = open(log_path, "a")  # noqa: SIM115 - closed in _close_logs

    def _close_logs(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _record(self, rec: dict) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(rec) + "\n")
            self._log_file.flush()
        if self._tb is not None:
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, rec["step"])

    def state_dict(self) -> dict:
        """Everything `_resume` needs besides the weights (collective: every rank must call it)."""
        rng = all_gather_objects(capture_rng_state(), self.info)
        return {
            "version": TRAIN_STATE_VERSION,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_miou": self.best_miou,
            "rng": rng,
            "world_size": self.info.world_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def _average_bn_statistics(self) -> None:
        """DDP keeps BatchNorm running statistics per rank; average them so every rank (and the
        checkpoint) holds the same model. Parameters are already identical (averaged gradients)."""
        if self.info.distributed:
            from timm.utils import distribute_bn

            distribute_bn(self.model, self.info.world_size, reduce=True)

    def save(self, name: str, extra: dict | None = None) -> Path | None:
        """Write `out_dir/name` (rank 0); collective, so every rank calls it."""
        self._average_bn_statistics()
        state = self.state_dict()
        path = self.out_dir / name
        if self.info.is_main:
            payload = {"train_state": state, "train_config": to_dict(self.cfg), "step": self.step}
            payload.update(extra or {})
            save_checkpoint(path, self.model, self.model.cfg, payload,
                            input_convention=input_convention(self.cfg.data))
        barrier()
        return path

    # ------------------------------------------------------------------ the loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        net = self.ddp if self.ddp is not None else self.model
        with self._autocast():
            out = net(batch)
            losses = self.model.loss(out, batch)
        loss = losses["total"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.cfg.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: v.detach() for k, v in losses.items() if torch.is_tensor(v)}, grad_norm

    def _mean_over_ranks(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss sums averaged over ranks (collective), so the log describes the global batch."""
        keys = sorted(sums)
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float32, device=self.device)
                              for k in keys])
        if self.info.distributed:
            torch.distributed.all_reduce(values)
            values /= self.info.world_size
        return dict(zip(keys, values.tolist()))

    def fit(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to `total_steps` (or stop early after step `stop_at_step`, e.g. for a time-sliced job)."""
        result = TrainResult(step=self.step, total_steps=self.total_steps, out_dir=self.out_dir)
        end = self.total_steps if stop_at_step is None else min(stop_at_step, self.total_steps)
        self._open_logs()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        window_steps, window_scans, window_t0 = 0, 0, time.perf_counter()
        self.model.train()
        try:
            while self.step < end:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                loader = tdata.train_loader(self.train_samples, self.cfg, self.info, epoch, start)
                for batch in loader:
                    batch = batch.to(self.device)
                    losses, grad_norm = self._train_step(batch)
                    self.step += 1
                    window_steps += 1
                    window_scans += int(batch.num_samples) * self.info.world_size
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v.float()
                    if grad_norm is not None:
                        sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm.float()
                    bar.update(1)
                    if self.step % self.cfg.log_every == 0 or self.step == end:
                        dt = time.perf_counter() - window_t0
                        rec = {"step": self.step, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                        for k, v in self._mean_over_ranks(sums).items():
                            key = k if k == "grad_norm" else f"loss/{k}"
                            rec[key] = v / window_steps
                        if not math.isfinite(rec["loss/total"]):
                            raise FloatingPointError(
                                f"training loss is {rec['loss/total']} at step {self.step}"
                            )
                        rec["perf/s_per_step"] = dt / window_steps
                        rec["perf/scans_per_s"] = window_scans / dt
                        rec["perf/scans_per_s_per_process"] = window_scans / dt / self.info.world_size
                        result.history.append(rec)
                        self._record(rec)
                        bar.set_postfix(loss=f"{rec['loss/total']:.3f}", sps=f"{rec['perf/scans_per_s']:.1f}")
                        if self.info.is_main and not self.progress:
                            log.info("step %d/%d loss %.4f lr %.3g %.3f s/step %.1f scans/s", self.step,
                                     self.total_steps, rec["loss/total"], rec["lr"], rec["perf/s_per_step"],
                                     rec["perf/scans_per_s"])
                        sums, window_steps, window_scans = {}, 0, 0
                        window_t0 = time.perf_counter()
                    val_due = self.cfg.val_every and self.step % self.cfg.val_every == 0
                    if self.val_samples is not None and (val_due or self.step == self.total_steps):
                        result.val.append(self._validate_and_keep_best())
                        window_t0 = time.perf_counter()
                    ckpt_due = self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0
                    if ckpt_due or self.step == end:
                        self.save("last.pt")
                        window_t0 = time.perf_counter()
                    if self.step >= end:
                        break
        finally:
            bar.close()
            self._close_logs()
        result.step = self.step
        result.best_miou = self.best_miou
        return result

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> ConfusionMatrix:
        """Confusion matrix over the validation set, summed over ranks: of the 3D branch on every
        point, or (`stage: camera`) of the camera branch on every labeled pixel."""
        if self.val_samples is None:
            raise ValueError("no validation data (data.val_sequences is empty)")
        self._average_bn_statistics()
        cfg = self.model.cfg
        cm = ConfusionMatrix(cfg.num_classes, cfg.ignore_index, device=self.device)
        self.model.eval()
        try:
            for batch in tdata.val_loader(self.val_samples, self.cfg, self.info):
                batch = batch.to(self.device)
                with self._autocast():
                    if self.cfg.stage == "camera":
                        logits = self.model.pixel_logits(batch.images).permute(0, 2, 3, 1)
                        logits, target = logits.reshape(-1, cfg.num_classes), batch.classes.reshape(-1)
                    else:
                        logits, target = self.model.predict(batch, fuse=False), batch.labels
                cm.update(labels_from_logits(logits, cfg.ignore_index), target)
        finally:
            self.model.train()
        cm.all_reduce()
        return cm

    def _validate_and_keep_best(self) -> dict:
        cm = self.validate()
        summary = cm.summary(CLASS_NAMES[: self.model.cfg.num_classes])
        miou = summary["miou"]
        rec = {"step": self.step, "val/miou": miou}
        rec.update({f"val_iou/{k}": v for k, v in summary["per_class_iou"].items() if v is not None})
        self._record(rec)
        if self.info.is_main:
            # printed in percent like every tool's report; log.jsonl / TensorBoard keep the fraction
            log.info("step %d: val mIoU %s", self.step, "n/a" if miou is None else f"{100 * miou:.2f} %")
        if miou is not None and (self.best_miou is None or miou > self.best_miou):
            self.best_miou = miou
            self.save("best.pt", {"val": summary})
        return rec


def train(cfg: TrainConfig | dict, *, resume: str | Path | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> TrainResult:
    """Build a `Trainer` and run it (the library entry point behind `xkd-train`)."""
    if isinstance(cfg, dict):
        cfg = train_config_from_dict(cfg)
    trainer = Trainer(cfg, resume=resume, progress=progress)
    return trainer.fit(stop_at_step=stop_at_step)
