"""The SemanticKITTI class map: the one place that knows raw ids, learning ids, names and colours.

Raw ids are what `.label` files hold (lower 16 bits); learning ids are the 19 training classes
plus 0 = ignore/unlabeled, as in the official `semantic-kitti.yaml`.
"""

from __future__ import annotations

import numpy as np

#: raw id -> learning id (official learning_map; moving classes fold into their static class).
LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
    40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
    80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}

#: learning id -> raw id (official learning_map_inv).
LEARNING_MAP_INV: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44,
    11: 48, 12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}

#: learning id -> name.
CLASS_NAMES: tuple[str, ...] = (
    "unlabeled", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person",
    "bicyclist", "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building",
    "fence", "vegetation", "trunk", "terrain", "pole", "traffic-sign",
)

NUM_CLASSES = len(CLASS_NAMES)  # 20, including 0 = ignore
IGNORE_INDEX = 0

#: raw id -> BGR colour (official color_map).
RAW_COLOR_BGR: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0), 1: (0, 0, 255), 10: (245, 150, 100), 11: (245, 230, 100), 13: (250, 80, 100),
    15: (150, 60, 30), 16: (255, 0, 0), 18: (180, 30, 80), 20: (255, 0, 0), 30: (30, 30, 255),
    31: (200, 40, 255), 32: (90, 30, 150), 40: (255, 0, 255), 44: (255, 150, 255),
    48: (75, 0, 75), 49: (75, 0, 175), 50: (0, 200, 255), 51: (50, 120, 255), 52: (0, 150, 255),
    60: (170, 255, 150), 70: (0, 175, 0), 71: (0, 60, 135), 72: (80, 240, 150), 80: (150, 240, 255),
    81: (0, 0, 255), 99: (255, 255, 50), 252: (245, 150, 100), 253: (200, 40, 255),
    254: (30, 30, 255), 255: (90, 30, 150), 256: (255, 0, 0), 257: (250, 80, 100),
    258: (180, 30, 80), 259: (255, 0, 0),
}

#: learning id -> RGB uint8 colour, shape (NUM_CLASSES, 3).
PALETTE_RGB: np.ndarray = np.array(
    [RAW_COLOR_BGR[LEARNING_MAP_INV[i]][::-1] for i in range(NUM_CLASSES)], dtype=np.uint8
)

# Lookup tables over the full 16-bit raw range, so mapping a scan is one gather.
_LUT = np.zeros(1 << 16, dtype=np.uint16)
for _raw, _learn in LEARNING_MAP.items():
    _LUT[_raw] = _learn
_INV_LUT = np.array([LEARNING_MAP_INV[i] for i in range(NUM_CLASSES)], dtype=np.uint16)

# Packed float32 "rgb" values for RViz (0x00RRGGBB reinterpreted as float32), per learning id.
PALETTE_PACKED_RGB: np.ndarray = (
    (PALETTE_RGB[:, 0].astype(np.uint32) << 16)
    | (PALETTE_RGB[:, 1].astype(np.uint32) << 8)
    | PALETTE_RGB[:, 2].astype(np.uint32)
).view(np.float32)


def to_learning(raw_semantic: np.ndarray) -> np.ndarray:
    """Map raw semantic ids (any int array; upper instance bits must already be stripped) to learning ids."""
    raw = np.asarray(raw_semantic)
    if raw.size and (raw.min() < 0 or raw.max() >= 1 << 16):
        raise ValueError("raw semantic ids must lie in [0, 65535]; strip the instance bits first")
    return _LUT[raw.astype(np.int64)]


def to_raw(learning: np.ndarray) -> np.ndarray:
    """Map learning ids back to raw SemanticKITTI ids (for writing `.label` predictions)."""
    lab = np.asarray(learning)
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise ValueError(f"learning ids must lie in [0, {NUM_CLASSES - 1}]")
    return _INV_LUT[lab.astype(np.int64)]


def colorize(learning: np.ndarray) -> np.ndarray:
    """RGB uint8 colours (..., 3) for learning ids (...)."""
    return PALETTE_RGB[np.asarray(learning, dtype=np.int64)]
