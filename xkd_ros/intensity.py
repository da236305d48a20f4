"""Bring a cloud's intensity to the model's convention, whatever the driver publishes.

Drivers disagree on what `intensity` holds: Velodyne, Livox and Hesai publish float32 0..255,
Ouster's `intensity` is the signal in photon counts (range-dependent) beside a calibrated 8-bit
`reflectivity` (uint16), some drivers send 16-bit counts, KITTI-style tools 0..1. The model was
trained on the checkpoint's convention (`xkd_core.models.checkpoint.InputConvention`: 0..1
reflectance for SemanticKITTI and xkd-synth); the shipped model fed a 0..255 cloud raw gives other
labels on ~3/4 of the points. `IntensityNormalizer` reads the chosen field raw
(`cloud_to_xyzi(msg, intensity_field=...)`), multiplies it by a factor that brings it to 0..1,
clips to 0..1 and maps that onto the convention's `0..intensity_max`. Field `none` (or a cloud
without the chosen field) gives every point the convention's `intensity_fill`, as does a NaN value.

The factor is explicit, or `auto`: a scale among `unit` (0..1, x 1), `8bit` (0..255, x 1/255) and
`16bit` (counts, x 1/65535), decided from the field's datatype and `hi`, the 99th percentile of the
frame's finite, positive values (zeros say nothing about scale; with the percentile up to 1 % of
the points can be outliers, however large, without moving the decision, where the maximum would
flip a 0..1 cloud to 0..255 for a single 1.02):

- int8 / uint8 fields: `8bit`;
- other integer fields (e.g. Ouster's uint16 reflectivity): `8bit` if hi <= 256, else `16bit`;
- float fields: `unit` if hi <= 1.5, `8bit` if hi <= 256, else `16bit`.

1.5 sits far from both neighbours: a 0..1 cloud with hi > 1.5 has over 1 % of its points well above
its range, and a 0..255 scene whose 99th percentile is below 1.5 would be black (< 0.6 %). A frame
with fewer than `MIN_SAMPLES` positive values is not evidence (the datatype's default, `8bit` for
integers and `unit` for floats, applies). The first frame with evidence decides (no frame waits);
during the first `auto_frames` evidence frames a frame that needs a larger range revises the scale
upward (never downward); then the decision is locked.

An explicit factor is used as given. During the first `auto_frames` evidence frames, a factor that
contradicts the data (the scaled 99th percentile outside [1.5 / 255, 1.5]: e.g. 1/255 on 0..1
data, or 1 on 0..255 data) is reported once as a mismatch, not changed.

The decision (`IntensityDecision`) is for the log and diagnostics; each call returns the events
that happened on that frame (`IntensityEvent`, keys in `EVENT_KEYS`) for the node to count. Numpy
only (no ROS import); not thread-safe: one normalizer per cloud stream, fed in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xkd_ros.pointcloud import (
    DATATYPE_NAMES,
    FLOAT32,
    FLOAT64,
    INT8,
    UINT8,
    cloud_to_xyzi,
    field_datatype,
)

if TYPE_CHECKING:  # only the attributes intensity_max / intensity_fill / source are read
    from xkd_core.models.checkpoint import InputConvention

IntensityField = Literal["intensity", "reflectivity", "none"]
INTENSITY_FIELDS: tuple[str, ...] = ("intensity", "reflectivity", "none")

#: Scale name -> factor bringing raw values to 0..1.
SCALE_FACTORS: dict[str, float] = {"unit": 1.0, "8bit": 1.0 / 255.0, "16bit": 1.0 / 65535.0}
_RANK = {"unit": 0, "8bit": 1, "16bit": 2}
_RANGE_TEXT = {"unit": "0..1", "8bit": "0..255", "16bit": "0..65535"}
_FACTOR_TEXT = {"unit": "1", "8bit": "1/255", "16bit": "1/65535"}

QUANTILE = 0.99  #: the robust "high value" of a frame
UNIT_MAX = 1.5  #: float data with hi up to this are 0..1
BYTE_MAX = 256.0  #: data with hi up to this are 0..255 (255 plus rounding)
MIN_SAMPLES = 64  #: positive values a frame needs to count as evidence
_MAX_SAMPLES = 32768  #: the statistics read at most this many values (an even stride through the cloud)

EVENT_DECIDED = "intensity.decided"  #: info: the first decision of `auto` (log the decision text)
EVENT_REVISED = "intensity.scale_revised"  #: warn: `auto` moved to a larger range
EVENT_LOCKED = "intensity.locked"  #: info: `auto` saw its frames; the decision no longer changes
EVENT_MISMATCH = "intensity.mismatch"  #: warn: an explicit factor contradicts the data (once)
EVENT_FIELD_MISSING = "intensity.field_missing"  #: warn: this cloud lacks the chosen field (every frame)
EVENT_KEYS: tuple[str, ...] = (EVENT_DECIDED, EVENT_REVISED, EVENT_LOCKED, EVENT_MISMATCH,
                               EVENT_FIELD_MISSING)


@dataclass(frozen=True)
class IntensityEvent:
    """Something the node should count (`key`, stable) and log (`message`) at `level`."""

    key: str
    level: Literal["info", "warn"]
    message: str


@dataclass(frozen=True)
class IntensityDecision:
    """How intensity is read now; `text` is the one line for the log and diagnostics."""

    field: str  #: "intensity" | "reflectivity" | "none"
    #: "unit" | "8bit" | "16bit" | "explicit"; "pending" before `auto` saw evidence, "none" for field none
    scale: str
    factor: float  #: raw value x factor = 0..1 (then x the convention's intensity_max)
    frames_seen: int  #: frames that gave evidence (auto) or were checked (explicit)
    locked: bool
    text: str

    def diagnostics(self) -> dict[str, str]:
        """Key/value strings for a `diagnostic_msgs/DiagnosticStatus`."""
        return {"intensity.field": self.field, "intensity.scale": self.scale,
                "intensity.factor": f"{self.factor:.9g}", "intensity.frames_seen": str(self.frames_seen),
                "intensity.locked": str(self.locked).lower(), "intensity.decision": self.text}


def parse_intensity_scale(value: str | float) -> float | None:
    """The `intensity.scale` parameter: None for "auto", else the positive factor it names.

    Accepts a number (0.00392156...) or a string holding one or a fraction ("1/255").
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return None
        try:
            factor = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"intensity.scale must be 'auto' or a positive factor such as 1/255,"
                             f" got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        factor = float(value)
    else:
        raise ValueError(f"intensity.scale must be 'auto' or a positive factor, got {value!r}")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"intensity.scale must be 'auto' or a positive finite factor, got {value!r}")
    return factor


def classify(hi: float, datatype: int) -> str:
    """The scale `auto` picks for a frame whose 99th percentile of positive values is `hi`."""
    if datatype in (INT8, UINT8):
        return "8bit"
    if hi <= UNIT_MAX and datatype in (FLOAT32, FLOAT64):
        return "unit"
    return "8bit" if hi <= BYTE_MAX else "16bit"


def high_value(values: np.ndarray) -> float | None:
    """The 99th percentile of the finite, positive `values`; None with fewer than `MIN_SAMPLES`."""
    step = max(1, len(values) // _MAX_SAMPLES)
    v = values[::step]
    v = v[(v > 0) & (v < np.inf)]
    if len(v) < MIN_SAMPLES:
        return None
    return float(np.quantile(v, QUANTILE))


def _type_name(datatype: int | None) -> str:
    return DATATYPE_NAMES.get(datatype, "?") if datatype is not None else "?"


class IntensityNormalizer:
    """One cloud stream's intensity policy: `field`, `scale` ("auto" or a factor), the model's convention.

    `convention` is the checkpoint's `InputConvention` (`Segmenter.input_convention`); None means
    0..1 with fill 0. `auto_frames` is the number of evidence frames after which `auto` locks (and
    an explicit factor stops being checked).
    """

    def __init__(self, field: str = "intensity", scale: str | float = "auto",
                 convention: InputConvention | None = None, auto_frames: int = 10) -> None:
        if field not in INTENSITY_FIELDS:
            raise ValueError(f"intensity.field must be one of {list(INTENSITY_FIELDS)}, got {field!r}")
        if isinstance(auto_frames, bool) or not isinstance(auto_frames, int) or auto_frames < 1:
            raise ValueError(f"auto_frames must be an integer >= 1, got {auto_frames!r}")
        self.field = field
        self.explicit = parse_intensity_scale(scale)
        self.auto_frames = auto_frames
        self.intensity_max = 1.0 if convention is None else float(convention.intensity_max)
        self.intensity_fill = 0.0 if convention is None else float(convention.intensity_fill)
        self.convention_source = "default 0..1" if convention is None else str(convention.source)
        self._scale = "pending"  # auto's scale ("unit" / "8bit" / "16bit" once a frame carried the field)
        self._datatype: int | None = None
        self._frames = 0
        self._hi = 0.0  # the largest evidence seen (auto) / the evidence of the mismatch (explicit)
        self._revised_from: list[str] = []
        self._mismatch = ""
        self._hint = ""

    # ------------------------------------------------------------------ state
    @property
    def factor(self) -> float:
        """Raw value x factor = 0..1; for `auto` before any frame, 1."""
        if self.explicit is not None:
            return self.explicit
        return SCALE_FACTORS.get(self._scale, 1.0)

    @property
    def locked(self) -> bool:
        return self.field == "none" or self.explicit is not None or self._frames >= self.auto_frames

    @property
    def decision(self) -> IntensityDecision:
        """The current decision (changes only on an `EVENT_DECIDED` / `EVENT_REVISED` frame)."""
        if self.field == "none":
            return IntensityDecision("none", "none", 0.0, 0, True, self._text())
        scale = "explicit" if self.explicit is not None else self._scale
        return IntensityDecision(self.field, scale, self.factor, self._frames, self.locked, self._text())

    def _text(self) -> str:
        model = (f"model range 0..{self.intensity_max:g}, fill {self.intensity_fill:g}"
                 f" ({self.convention_source})")
        if self.field == "none":
            return f"intensity: none (intensity.field none): every point gets the fill value; {model}"
        head = f"intensity: '{self.field}' {_type_name(self._datatype)}"
        if self.explicit is not None:
            text = f"{head} x {self.explicit:.6g} (explicit)"
            if self._mismatch:
                text += f"; MISMATCH: {self._mismatch}"
            return f"{text}; {model}"
        if self._scale == "pending":
            return f"{head}: auto scale pending (no frame with {MIN_SAMPLES}+ positive values yet); {model}"
        scale = f"{_RANGE_TEXT[self._scale]} ({self._scale}), x {_FACTOR_TEXT[self._scale]}"
        if self._frames == 0:
            text = (f"{head} -> {scale}: the datatype's default, no frame with {MIN_SAMPLES}+ positive"
                    " values yet")
        else:
            state = (f"locked after {self._frames} frames" if self.locked
                     else f"deciding ({self._frames}/{self.auto_frames} frames)")
            text = f"{head}, 99th percentile {self._hi:.4g} -> {scale}; {state}"
        if self._revised_from:
            text += f" (revised from {', '.join(self._revised_from)})"
        if self._hint:
            text += f"; {self._hint}"
        return f"{text}; {model}"

    # ------------------------------------------------------------------ per frame
    def normalize_cloud(self, msg: Any) -> tuple[np.ndarray, list[IntensityEvent]]:
        """Decode a PointCloud2 (rclpy or rosbags) into `(N, 4)` float32 x, y, z, intensity in the
        model's convention, and the events of this frame. `CloudFormatError` as `cloud_to_xyzi`."""
        src = None if self.field == "none" else self.field
        points = cloud_to_xyzi(msg, intensity_field=src)
        datatype = None if src is None else field_datatype(msg, src)
        names = [str(f.name) for f in msg.fields]
        return points, self.normalize(points, datatype, names)

    def normalize(self, points: np.ndarray, datatype: int | None,
                  field_names: Sequence[str] = ()) -> list[IntensityEvent]:
        """Bring column 3 of `points` ((N, 4) float32, raw values of the chosen field) to the model's
        convention in place. `datatype` is the field's PointField datatype, None when the cloud lacks
        it; `field_names` (the cloud's) let the decision text name a better field."""
        if points.ndim != 2 or points.shape[1] != 4 or points.dtype != np.float32:
            raise ValueError(f"points must be (N, 4) float32, got {points.dtype} {points.shape}")
        col = points[:, 3]
        if self.field == "none":
            col[:] = self.intensity_fill
            return []
        if datatype is None:
            col[:] = self.intensity_fill
            others = [n for n in ("intensity", "reflectivity") if n != self.field and n in field_names]
            advice = f"set intensity.field: {others[0]} or none" if others else "set intensity.field: none"
            return [IntensityEvent(
                EVENT_FIELD_MISSING, "warn",
                f"cloud has no '{self.field}' field (fields: {', '.join(field_names)}): every point gets"
                f" the fill value {self.intensity_fill:g}; {advice}")]
        events: list[IntensityEvent] = []
        if self._frames < self.auto_frames:
            events = self._observe(col, datatype, field_names)
        self._scale_column(col)
        return events

    def _observe(self, col: np.ndarray, datatype: int, field_names: Sequence[str]) -> list[IntensityEvent]:
        """Update the decision from one frame's raw values (first `auto_frames` evidence frames only)."""
        self._datatype = datatype
        if self.explicit is None and self._scale == "pending":
            self._scale = classify(0.0, datatype)  # until evidence: the datatype's default
        hi = high_value(col)
        if hi is None:
            return []
        self._frames += 1
        if self.explicit is not None:
            return self._check_explicit(hi, datatype)
        scale = classify(hi, datatype)
        events: list[IntensityEvent] = []
        if self._frames == 1:
            self._scale, self._hi = scale, hi
            self._set_hint(field_names)
            events.append(IntensityEvent(EVENT_DECIDED, "info", self._text()))
        else:
            self._hi = max(self._hi, hi)
            if _RANK[scale] > _RANK[self._scale]:
                old = self._scale
                self._revised_from.append(old)
                self._scale = scale
                self._set_hint(field_names)
                events.append(IntensityEvent(
                    EVENT_REVISED, "warn",
                    f"intensity scale revised {old} -> {scale} at evidence frame {self._frames}: 99th"
                    f" percentile {hi:.4g} does not fit {_RANGE_TEXT[old]}; earlier frames were scaled"
                    f" x {_FACTOR_TEXT[old]}. Now: {self._text()}"))
        if self._frames >= self.auto_frames:
            events.append(IntensityEvent(EVENT_LOCKED, "info", self._text()))
        return events

    def _check_explicit(self, hi: float, datatype: int) -> list[IntensityEvent]:
        scaled = hi * self.explicit
        if self._mismatch or UNIT_MAX / 255.0 <= scaled <= UNIT_MAX:
            return []
        auto = classify(hi, datatype)
        self._hi = hi
        self._mismatch = (f"99th percentile {hi:.4g} x {self.explicit:.6g} = {scaled:.4g}, outside"
                          f" [{UNIT_MAX / 255.0:.3g}, {UNIT_MAX:g}]: the data look like {_RANGE_TEXT[auto]}"
                          f" ({auto}, x {_FACTOR_TEXT[auto]}); kept x {self.explicit:.6g} as configured")
        return [IntensityEvent(EVENT_MISMATCH, "warn", self._text())]

    def _set_hint(self, field_names: Sequence[str]) -> None:
        self._hint = ""
        if self.field == "intensity" and self._scale == "16bit" and "reflectivity" in field_names:
            self._hint = ("the cloud also has 'reflectivity': this 'intensity' is probably Ouster's signal"
                          " (photon counts, range-dependent), set intensity.field: reflectivity")

    def _scale_column(self, col: np.ndarray) -> None:
        """x factor, clip to 0..1, x intensity_max, NaN -> fill; in place."""
        factor = self.factor
        if factor != 1.0:
            np.multiply(col, factor, out=col)
        np.clip(col, 0.0, 1.0, out=col)
        if self.intensity_max != 1.0:
            np.multiply(col, self.intensity_max, out=col)
        nan = np.isnan(col)
        if nan.any():
            col[nan] = self.intensity_fill
