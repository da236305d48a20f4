"""The guard rails of a fine-tune before it is deployed (`xkd-export` runs them; `docs/fleet_loop.md`).

Two checks against the model it started from (the deployed one):

- **agreement** (on the pair log it learned from, no label needed): on the points a camera sees, the
  share where the LiDAR branch gives the camera teacher's class (`xkd_core.evaluation.agreement`),
  the same teacher (the candidate's camera branch, which taught it) for both models. A fine-tune
  whose share falls below `min_agreement_ratio` times the deployed model's has collapsed
  (`agreement_collapse`): distillation from the camera should raise it, never lose most of it.
- **held-out** (when the user has labeled scans): the LiDAR branch's mIoU on them; more than
  `max_miou_drop` points below the deployed model's is `heldout_worse`. This catches what agreement
  cannot: a model that follows a wrong teacher closely. The report lists the classes that lost (what
  to look at before forcing an export).

`check_finetune` returns a plain report (schema `xkd.finetune_guard/1`, every share in percent) with
`ok` and the stable short `refused` reasons; the caller decides (xkd-export refuses unless `--force`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "xkd.finetune_guard/1"
AGREEMENT_COLLAPSE = "agreement_collapse"
HELDOUT_WORSE = "heldout_worse"
#: A held-out class whose IoU falls by at least this much (IoU points) is listed in `classes_lost`.
LOST_CLASS = 1.0


@dataclass(frozen=True)
class GuardThresholds:
    """When a fine-tune is refused; `max_scans` bounds each check's cost (evenly spaced scans)."""

    min_agreement_ratio: float = 0.8
    max_miou_drop: float = 1.0  # mIoU points
    max_scans: int | None = 50

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_agreement_ratio) and 0.0 <= self.min_agreement_ratio <= 1.0):
            raise ValueError(f"min_agreement_ratio must lie in [0, 1], got {self.min_agreement_ratio}")
        if not (math.isfinite(self.max_miou_drop) and self.max_miou_drop >= 0.0):
            raise ValueError(f"max_miou_drop must be >= 0 (mIoU points), got {self.max_miou_drop}")
        if self.max_scans is not None and self.max_scans < 1:
            raise ValueError(f"max_scans must be >= 1 (or None for all), got {self.max_scans}")


@dataclass(frozen=True)
class HeldOut:
    """Labeled SemanticKITTI-format scans the fine-tune never saw."""

    root: str
    sequences: Sequence[str] = field(default_factory=tuple)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def check_agreement(candidate: Any, deployed: Any, log: str | Path, cameras: Sequence[int | str] | str,
                    thresholds: GuardThresholds) -> dict[str, Any]:
    """The agreement check of `candidate` against `deployed` (`Segmenter`s) on pair log `log`."""
    from xkd_core.data.pairlog import PairLogDataset
    from xkd_core.evaluation.agreement import agreement, evenly_spaced, teacher_labels

    if candidate.model.image_net is None or candidate.image_hw is None:
        raise ValueError("the candidate has no camera branch to measure its agreement with")
    ds = PairLogDataset(log, cameras=cameras)
    if len(ds) == 0:
        raise ValueError(f"pair log {log} holds no pair file")
    frames = [ds[i] for i in evenly_spaced(len(ds), thresholds.max_scans)]
    labels = teacher_labels(candidate.model, frames, candidate.image_hw, candidate.cfg.distillation.kd_T)
    before = agreement(deployed, frames, labels)
    after = agreement(candidate, frames, labels)
    if before.percent is None:
        raise ValueError(f"pair log {log}: no camera sees a point of the {len(frames)} scans measured")
    ratio = None if before.percent == 0 else after.percent / before.percent
    ok = after.percent >= thresholds.min_agreement_ratio * before.percent
    return {"log": str(log), "scans": after.scans, "points": after.points, "deployed": _round(before.percent),
            "candidate": _round(after.percent), "ratio": _round(ratio),
            "min_ratio": thresholds.min_agreement_ratio, "ok": bool(ok)}


def check_heldout(candidate: Any, deployed: Any, heldout: HeldOut, thresholds: GuardThresholds
                  ) -> dict[str, Any]:
    """The held-out check: mIoU (LiDAR branch, full scans) of both `Segmenter`s on labeled scans."""
    from xkd_core.data.dataset import SemanticKittiDataset
    from xkd_core.evaluation.agreement import evenly_spaced
    from xkd_core.evaluation.evaluate import evaluate

    sequences = list(heldout.sequences) or None
    ds = SemanticKittiDataset(heldout.root, split="val", sequences=sequences, cameras=())
    if len(ds) == 0:
        raise ValueError(f"held-out set {heldout.root} (sequences {list(heldout.sequences)}) holds no scan")
    frames = [ds[i] for i in evenly_spaced(len(ds), thresholds.max_scans)]
    dep = evaluate(deployed, frames, progress=False).to_json()["full"]
    cand = evaluate(candidate, frames, progress=False).to_json()["full"]
    before, after = dep["miou"], cand["miou"]
    if before is None or after is None:
        raise ValueError(f"held-out set {heldout.root}: no labeled point in the {len(frames)} scans measured")
    # what a refusal is about: the classes that lost at least a point, most first
    drops = {c: dep["per_class_iou"][c] - v for c, v in cand["per_class_iou"].items()
             if v is not None and dep["per_class_iou"][c] is not None}
    lost = sorted(((c, d) for c, d in drops.items() if d >= LOST_CLASS), key=lambda cd: -cd[1])
    return {"root": str(heldout.root), "sequences": list(heldout.sequences), "scans": len(frames),
            "deployed_miou": _round(before), "candidate_miou": _round(after), "drop": _round(before - after),
            "classes_lost": {c: _round(d) for c, d in lost},
            "max_drop": thresholds.max_miou_drop, "ok": bool(before - after <= thresholds.max_miou_drop)}


def check_finetune(candidate: str | Path, deployed: str | Path, log: str | Path | None = None,
                   heldout: HeldOut | None = None, thresholds: GuardThresholds | None = None,
                   cameras: Sequence[int | str] | str = "all", device: str = "cpu") -> dict[str, Any]:
    """Run the checks that have their data (agreement with `log`, held-out with `heldout`) on checkpoint
    `candidate` against checkpoint `deployed`; the report says which failed (`refused`)."""
    from xkd_core.inference import Segmenter

    if log is None and heldout is None:
        raise ValueError("the guard needs a pair log (agreement) or a labeled held-out set, or both")
    thresholds = thresholds or GuardThresholds()
    cand = Segmenter.from_checkpoint(candidate, device=device)
    dep = Segmenter.from_checkpoint(deployed, device=device)
    report: dict[str, Any] = {"schema": SCHEMA, "candidate": str(candidate), "deployed": str(deployed),
                              "agreement": None, "heldout": None}
    refused = []
    if log is not None:
        report["agreement"] = check_agreement(cand, dep, log, cameras, thresholds)
        if not report["agreement"]["ok"]:
            refused.append(AGREEMENT_COLLAPSE)
    if heldout is not None:
        report["heldout"] = check_heldout(cand, dep, heldout, thresholds)
        if not report["heldout"]["ok"]:
            refused.append(HELDOUT_WORSE)
    report["refused"] = refused
    report["ok"] = not refused
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the guard measured and decided, for people."""
    lines = []
    a = report.get("agreement")
    if a:
        lines.append(f"agreement with the camera teacher on {a['scans']} logged scans ({a['points']} points "
                     f"seen): deployed {a['deployed']:.1f} %, fine-tuned {a['candidate']:.1f} % (refused "
                     f"below {a['min_ratio']:.2f} x the deployed): {'ok' if a['ok'] else AGREEMENT_COLLAPSE}")
    h = report.get("heldout")
    if h:
        lines.append(f"held-out mIoU on {h['scans']} labeled scans of {h['root']}: deployed "
                     f"{h['deployed_miou']:.1f} %, fine-tuned {h['candidate_miou']:.1f} % (refused more than "
                     f"{h['max_drop']:.1f} points lower): {'ok' if h['ok'] else HELDOUT_WORSE}")
        lost = list(h.get("classes_lost", {}).items())[:5]
        if lost:
            lines.append("  classes that lost most on it (IoU points): "
                         + ", ".join(f"{c} -{d:.1f}" for c, d in lost))
    return lines
