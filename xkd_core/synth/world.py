"""The synthetic driving scene: a road, a painted ground layout and a set of box / cylinder objects.

The scene lives in a flat world frame (x, y on the ground, z up, road surface at z = 0). Positions
along the road are given in road coordinates (s = arc length along the centreline, d = signed offset
to the left), so the layout works the same on a straight road and on a constant-curvature bend.

Ground: everything with |d| < edge (lanes plus a strip beside each lane) is one flat plane at z = 0;
everything beyond is one flat plane at the curb height, joined by a vertical curb face. Each plane is
split into lateral bands, and each band into stretches along s with a class. The appearance-only
pairs share their plane, so geometry alone cannot separate them:

- road (40) / parking (44) / other-ground (49): parking bays and painted zones fill random stretches
  of the strips on *both* sides, painted zones also random stretches of both lanes;
- sidewalk (48) / terrain (72): every raised band alternates between the two at random lengths and
  phases, so neither the distance to the curb nor the side gives the class away.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from xkd_core.synth.config import WorldConfig

# SemanticKITTI raw ids used by the world.
CAR, TRUCK, PERSON, BICYCLIST = 10, 18, 30, 31
ROAD, PARKING, SIDEWALK, OTHER_GROUND = 40, 44, 48, 49
BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, SIGN = 50, 51, 70, 71, 72, 80, 81

#: Every class the world contains.
WORLD_CLASSES: tuple[int, ...] = (
    CAR, TRUCK, PERSON, BICYCLIST, ROAD, PARKING, SIDEWALK, OTHER_GROUND,
    BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, SIGN,
)

BAY_LENGTH = 5.5  # metres per parking bay (painted lines in the camera)
MARGIN = 200.0  # metres of world generated before the start and after the end of the drive


class Mat(IntEnum):
    """Surface material of an object: picks its camera texture (the LiDAR only sees the class)."""

    BUILDING = 0
    CAR_BODY = 1
    CAR_CABIN = 2
    TRUCK_CAB = 3
    TRUCK_CARGO = 4
    PERSON_BODY = 5
    PERSON_HEAD = 6
    BIKE = 7
    RIDER = 8
    POLE = 9
    SIGN = 10
    TRUNK = 11
    FOLIAGE = 12
    HEDGE = 13
    FENCE = 14


@dataclass(frozen=True)
class Road:
    """Road centreline: straight (curvature 0) or a bend of constant signed curvature (1/m, left > 0)."""

    curvature: float = 0.0

    def to_world(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) of road coordinates (s, d); the drive starts at the origin heading +x."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        k = self.curvature
        if k == 0.0:
            return s.copy(), d.copy()
        R = 1.0 / k
        th = s * k
        return (R - d) * np.sin(th), R - (R - d) * np.cos(th)

    def to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (s, d) of world points (valid within |d| < radius)."""
        k = self.curvature
        if k == 0.0:
            return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        R = 1.0 / k
        sg = 1.0 if R > 0 else -1.0
        dy = R - y
        th = np.arctan2(sg * x, sg * dy)
        return R * th, R - sg * np.hypot(x, dy)

    def heading(self, s: np.ndarray) -> np.ndarray:
        """Direction of travel (yaw, rad) of the centreline at arc length s."""
        return np.asarray(s, dtype=np.float64) * self.curvature


@dataclass
class Band:
    """One lateral band [d_lo, d_hi) of a ground plane, split along s into classed stretches."""

    d_lo: float
    d_hi: float
    breaks: np.ndarray  # (K,) increasing s where the class changes
    classes: np.ndarray  # (K + 1,) uint16 raw ids

    def stretches(self) -> list[tuple[float, float, int]]:
        """(s_start, s_end, class) of every stretch (the first and last are open-ended: +-inf)."""
        edges = np.concatenate([[-np.inf], self.breaks, [np.inf]])
        return [(float(edges[i]), float(edges[i + 1]), int(c)) for i, c in enumerate(self.classes)]


@dataclass
class GroundLayout:
    """Classes of the road-level plane (|d| < edge) and the raised plane (|d| >= edge)."""

    edge: float  # |d| of the curb
    curb_height: float
    low: list[Band]  # bands covering [-edge, edge)
    raised: list[Band]  # bands covering (-inf, -edge) and [edge, inf)

    def classify(self, s: np.ndarray, d: np.ndarray, raised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw class and stretch start s (for painted patterns) of ground points at (s, d).

        `raised` selects the plane; points of a plane outside all its bands (numerically on the
        curb line) take the nearest band.
        """
        cls = np.zeros(s.shape, dtype=np.uint16)
        start = np.zeros(s.shape, dtype=np.float64)
        for bands, which in ((self.low, ~raised), (self.raised, raised)):
            idx = np.flatnonzero(which)
            if idx.size == 0:
                continue
            dd = d[idx]
            lo = np.array([b.d_lo for b in bands])
            band_of = np.clip(np.searchsorted(lo, dd, side="right") - 1, 0, len(bands) - 1)
            if bands is self.raised:  # the gap [-edge, edge) between the two raised sides
                band_of = np.where((band_of == len(bands) // 2 - 1) & (dd >= 0), band_of + 1, band_of)
            for b, band in enumerate(bands):
                sel = idx[band_of == b]
                if sel.size == 0:
                    continue
                k = np.searchsorted(band.breaks, s[sel], side="right")
                cls[sel] = band.classes[k]
                starts = np.concatenate([[-MARGIN * 10], band.breaks])
                start[sel] = starts[k]
        return cls, start


@dataclass
class Scene:
    """Everything the sensors see. Objects are stored as flat arrays: boxes first, then cylinders.

    Boxes are yawed about z (centre, yaw, half extents along their own x/y, z range); cylinders are
    vertical (centre, radius, z range). `cls`/`inst` are raw SemanticKITTI ids and instance ids,
    `mat`/`colour` the camera material and base RGB colour (0..1).
    """

    road: Road
    ground: GroundLayout
    n_boxes: int
    centre: np.ndarray  # (P, 2) world x, y
    yaw: np.ndarray  # (P,) boxes only (cylinders: 0)
    half: np.ndarray  # (P, 2) box half length / width; cylinders: radius, radius
    z: np.ndarray  # (P, 2) bottom, top
    cls: np.ndarray  # (P,) uint16
    inst: np.ndarray  # (P,) uint16
    mat: np.ndarray  # (P,) int16, `Mat`
    colour: np.ndarray  # (P, 3) float32
    sun: np.ndarray  # (3,) unit vector towards the sun

    @property
    def n_prims(self) -> int:
        return int(self.centre.shape[0])

    @property
    def radius(self) -> np.ndarray:
        """Radius of each object's footprint's bounding circle (for culling)."""
        r = np.hypot(self.half[:, 0], self.half[:, 1])
        r[self.n_boxes :] = self.half[self.n_boxes :, 0]
        return r

    def near(self, xy: np.ndarray, dist: float) -> np.ndarray:
        """Indices of objects whose footprint comes within `dist` of the point `xy`."""
        gap = np.hypot(self.centre[:, 0] - xy[0], self.centre[:, 1] - xy[1]) - self.radius
        return np.flatnonzero(gap < dist)


# ----------------------------------------------------------------------------------------------
# Layout generation


def _stretches(
    rng: np.random.Generator, s_lo: float, s_hi: float, choices: list[tuple[int, float, tuple[float, float]]]
) -> tuple[np.ndarray, np.ndarray]:
    """Random stretches covering [s_lo, s_hi]: each draws (class, length range) by weight.

    A stretch never repeats the previous class, so every class change is a real boundary.
    """
    classes_all = [c for c, _, _ in choices]
    weights = np.array([w for _, w, _ in choices], dtype=np.float64)
    breaks: list[float] = []
    classes: list[int] = []
    s = s_lo - rng.uniform(0.0, 30.0)  # random phase
    prev = -1
    while s < s_hi:
        w = weights.copy()
        if prev >= 0:
            w[prev] = 0.0
        k = int(rng.choice(len(classes_all), p=w / w.sum()))
        lo, hi = choices[k][2]
        length = rng.uniform(lo, hi)
        if classes_all[k] == PARKING:  # whole bays
            length = BAY_LENGTH * max(2, round(length / BAY_LENGTH))
        classes.append(classes_all[k])
        breaks.append(s)
        s += length
        prev = k
    breaks.append(s)
    # breaks[0] starts the first stretch: everything before it belongs to it too.
    cls = np.array([classes[0], *classes, classes[-1]], dtype=np.uint16)
    return np.array(breaks, dtype=np.float64), cls


def _alternate(
    rng: np.random.Generator, s_lo: float, s_hi: float, a: int, b: int, length: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Stretches that strictly alternate a, b, a, ... with random lengths and a random first class."""
    first = a if rng.random() < 0.5 else b
    breaks = [s_lo - rng.uniform(0.0, length[1])]
    classes = [first]
    while breaks[-1] < s_hi:
        breaks.append(breaks[-1] + rng.uniform(*length))
        classes.append(b if classes[-1] == a else a)
    return np.array(breaks[1:], dtype=np.float64), np.array(classes, dtype=np.uint16)


def build_layout(cfg: WorldConfig, rng: np.random.Generator, s_lo: float, s_hi: float) -> GroundLayout:
    """Random ground layout for the stretch [s_lo, s_hi] of road."""
    lane, edge = cfg.lane_width, cfg.lane_width + cfg.strip_width
    lane_choices = [(ROAD, 1.0, (15.0, 60.0)), (OTHER_GROUND, 0.6, (4.0, 12.0))]
    strip_choices = [(PARKING, 1.0, (11.0, 40.0)), (ROAD, 1.0, (5.0, 30.0)), (OTHER_GROUND, 0.4, (4.0, 12.0))]
    low = []
    for d_lo, d_hi, choices in (
        (-edge, -lane, strip_choices),
        (-lane, 0.0, lane_choices),
        (0.0, lane, lane_choices),
        (lane, edge, strip_choices),
    ):
        breaks, classes = _stretches(rng, s_lo, s_hi, choices)
        low.append(Band(d_lo, d_hi, breaks, classes))
    raised_edges = []
    for _side in range(2):
        w1, w2 = rng.uniform(2.0, 3.5), rng.uniform(2.0, 4.0)
        raised_edges.append((edge, edge + w1, edge + w1 + w2))
    (r1, r2, r3), (l1, l2, l3) = raised_edges
    spans = [(-np.inf, -r3), (-r3, -r2), (-r2, -r1), (l1, l2), (l2, l3), (l3, np.inf)]
    raised = []
    for d_lo, d_hi in spans:
        breaks, classes = _alternate(rng, s_lo, s_hi, SIDEWALK, TERRAIN, (5.0, 25.0))
        raised.append(Band(float(d_lo), float(d_hi), breaks, classes))
    return GroundLayout(edge=edge, curb_height=cfg.curb_height, low=low, raised=raised)


def raised_depth(layout: GroundLayout, side: int) -> float:
    """|d| where the outermost raised band of a side (+1 left, -1 right) begins (the building line)."""
    return layout.raised[-1].d_lo if side > 0 else -layout.raised[0].d_hi


# ----------------------------------------------------------------------------------------------
# Objects


_FACADES = np.array(
    [[0.82, 0.76, 0.64], [0.66, 0.36, 0.28], [0.88, 0.87, 0.83], [0.55, 0.56, 0.58], [0.76, 0.66, 0.50],
     [0.60, 0.50, 0.42], [0.90, 0.82, 0.70]], dtype=np.float32,
)
_CAR_PAINTS = np.array(
    [[0.75, 0.1, 0.1], [0.1, 0.2, 0.6], [0.9, 0.9, 0.9], [0.1, 0.1, 0.12], [0.55, 0.56, 0.6],
     [0.2, 0.45, 0.25], [0.85, 0.65, 0.1], [0.35, 0.1, 0.35]], dtype=np.float32,
)
_CLOTHES = np.array(
    [[0.8, 0.15, 0.15], [0.15, 0.3, 0.75], [0.9, 0.8, 0.2], [0.2, 0.6, 0.3], [0.95, 0.95, 0.95],
     [0.9, 0.45, 0.1], [0.5, 0.2, 0.6]], dtype=np.float32,
)
_SIGN_COLOURS = np.array(
    [[0.8, 0.1, 0.1], [0.1, 0.25, 0.7], [0.95, 0.8, 0.1], [0.95, 0.95, 0.95]], dtype=np.float32
)


class _Builder:
    """Collects objects in road coordinates and rejects ones that would overlap placed ones."""

    def __init__(self, road: Road) -> None:
        self.road = road
        self.rows: list[tuple] = []
        self.kinds: list[int] = []  # 0 box, 1 cylinder
        self.buckets: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
        self.next_inst = 1

    def free(self, s: float, d: float, r: float) -> bool:
        """True when a footprint circle at (s, d) of radius r overlaps nothing placed so far."""
        b = int(s // 10.0)
        for bb in (b - 2, b - 1, b, b + 1, b + 2):
            for s2, d2, r2 in self.buckets[bb]:
                if (s - s2) ** 2 + (d - d2) ** 2 < (r + r2) ** 2:
                    return False
        return True

    def occupy(self, s: float, d: float, r: float) -> None:
        self.buckets[int(s // 10.0)].append((s, d, r))

    def instance(self) -> int:
        inst = self.next_inst
        self.next_inst = self.next_inst % 65535 + 1
        return inst

    def box(self, s: float, d: float, yaw: float, length: float, width: float, z0: float, z1: float,
            cls: int, inst: int, mat: Mat, colour: np.ndarray, along: float = 0.0) -> None:
        """A box centred at (s, d) shifted `along` metres in its own heading, yawed `yaw` from the road."""
        x, y = self.road.to_world(np.array(s), np.array(d))
        heading = float(self.road.heading(np.array(s))) + yaw
        x, y = float(x) + along * np.cos(heading), float(y) + along * np.sin(heading)
        self.rows.append((x, y, heading, length / 2, width / 2, z0, z1, cls, inst, int(mat), *colour))
        self.kinds.append(0)

    def cylinder(self, s: float, d: float, r: float, z0: float, z1: float, cls: int, inst: int,
                 mat: Mat, colour: np.ndarray) -> None:
        x, y = self.road.to_world(np.array(s), np.array(d))
        self.rows.append((float(x), float(y), 0.0, r, r, z0, z1, cls, inst, int(mat), *colour))
        self.kinds.append(1)

    def scene(self, layout: GroundLayout, sun: np.ndarray) -> Scene:
        order = np.argsort(np.array(self.kinds, dtype=np.int64), kind="stable")
        rows = np.array([self.rows[i] for i in order], dtype=np.float64).reshape(-1, 13)
        return Scene(
            road=self.road, ground=layout, n_boxes=int(np.sum(np.array(self.kinds) == 0)),
            centre=rows[:, 0:2].copy(), yaw=rows[:, 2].copy(), half=rows[:, 3:5].copy(),
            z=rows[:, 5:7].copy(), cls=rows[:, 7].astype(np.uint16), inst=rows[:, 8].astype(np.uint16),
            mat=rows[:, 9].astype(np.int16), colour=rows[:, 10:13].astype(np.float32), sun=sun,
        )


def _positions(rng: np.random.Generator, s_lo: float, s_hi: float, per_100m: float) -> np.ndarray:
    """Random positions at `per_100m` on average, one per block of 100 / per_100m metres.

    Jittered rather than Poisson so that even rare classes (trucks) show up in every stretch of a
    drive that a scan covers, and classes are reliably present in small test data sets.
    """
    if per_100m <= 0.0:
        return np.zeros(0)
    spacing = 100.0 / per_100m
    starts = np.arange(s_lo, s_hi, spacing)
    return starts + rng.uniform(0.0, spacing, size=starts.size)


def _heading(rng: np.random.Generator, sd: float) -> float:
    """Along the road, either way, with a little noise (radians)."""
    return (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0.0, sd)


def _claim_vehicle(b: _Builder, rng: np.random.Generator, s: float, d: float, lengths: tuple[float, float],
                   widths: tuple[float, float], yaw_sd: float) -> tuple[float, float, float] | None:
    """(length, width, yaw) of a vehicle at (s, d) whose footprint is now occupied; None when taken."""
    length, width = rng.uniform(*lengths), rng.uniform(*widths)
    if not b.free(s, d, length / 2):
        return None
    b.occupy(s, d, length / 2)
    return length, width, _heading(rng, yaw_sd)


def _place_car(b: _Builder, rng: np.random.Generator, s: float, d: float) -> None:
    claim = _claim_vehicle(b, rng, s, d, (3.8, 4.8), (1.7, 1.9), 0.03)
    if claim is None:
        return
    length, width, yaw = claim
    inst, paint = b.instance(), _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))]
    body = rng.uniform(0.85, 1.0)
    b.box(s, d, yaw, length, width, 0.0, body, CAR, inst, Mat.CAR_BODY, paint)
    roof = body + rng.uniform(0.45, 0.6)
    cabin = 0.55 * length
    b.box(s, d, yaw, cabin, width - 0.2, body, roof, CAR, inst, Mat.CAR_CABIN, paint, along=-0.05 * length)


def _place_truck(b: _Builder, rng: np.random.Generator, s: float, d: float) -> None:
    claim = _claim_vehicle(b, rng, s, d, (6.0, 10.0), (2.3, 2.5), 0.02)
    if claim is None:
        return
    length, width, yaw = claim
    inst = b.instance()
    cab = 2.0
    b.box(s, d, yaw, cab, width, 0.0, rng.uniform(2.7, 3.1), TRUCK, inst, Mat.TRUCK_CAB,
          _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))], along=(length - cab) / 2)
    b.box(s, d, yaw, length - cab - 0.2, width, 0.5, rng.uniform(3.2, 3.8), TRUCK, inst, Mat.TRUCK_CARGO,
          np.array([0.85, 0.85, 0.82], dtype=np.float32), along=-(cab + 0.2) / 2)


def _place_person(b: _Builder, rng: np.random.Generator, s: float, d: float, z0: float) -> None:
    if not b.free(s, d, 0.35):
        return
    b.occupy(s, d, 0.35)
    inst, height = b.instance(), rng.uniform(1.6, 1.9)
    b.cylinder(s, d, rng.uniform(0.18, 0.24), z0, z0 + height - 0.25, PERSON, inst, Mat.PERSON_BODY,
               _CLOTHES[rng.integers(len(_CLOTHES))])
    b.cylinder(s, d, 0.11, z0 + height - 0.25, z0 + height, PERSON, inst, Mat.PERSON_HEAD,
               np.array([0.85, 0.68, 0.55], dtype=np.float32))


def _place_bicyclist(b: _Builder, rng: np.random.Generator, s: float, d: float) -> None:
    if not b.free(s, d, 0.9):
        return
    b.occupy(s, d, 0.9)
    inst = b.instance()
    yaw = _heading(rng, 0.05)
    b.box(s, d, yaw, 1.7, 0.45, 0.0, 1.0, BICYCLIST, inst, Mat.BIKE, np.array([0.15, 0.15, 0.17], np.float32))
    b.box(s, d, yaw, 0.5, 0.42, 1.0, rng.uniform(1.65, 1.8), BICYCLIST, inst, Mat.RIDER,
          _CLOTHES[rng.integers(len(_CLOTHES))], along=-0.15)


def _place_tree(b: _Builder, rng: np.random.Generator, s: float, d: float, z0: float) -> None:
    crown = rng.uniform(1.2, 2.5)
    if not b.free(s, d, 0.6):
        return
    b.occupy(s, d, 0.6)
    trunk_top = z0 + rng.uniform(1.5, 2.6)
    b.cylinder(s, d, rng.uniform(0.12, 0.3), z0, trunk_top, TRUNK, 0, Mat.TRUNK,
               np.array([0.36, 0.26, 0.18], np.float32))
    z, green = trunk_top - 0.3, np.array([0.2, 0.42, 0.15], np.float32) * rng.uniform(0.8, 1.2)
    for scale in (0.8, 1.0, 0.65)[: int(rng.integers(2, 4))]:
        h = rng.uniform(0.9, 1.6)
        b.cylinder(s, d, crown * scale, z, z + h, VEGETATION, 0, Mat.FOLIAGE, green)
        z += h


def build_world(cfg: WorldConfig, rng: np.random.Generator, length: float) -> Scene:
    """A random scene for a drive of `length` metres starting at s = 0 (plus margins both ways)."""
    s_lo, s_hi = -MARGIN, length + MARGIN
    curvature = 0.0
    if rng.random() < cfg.curved_fraction:
        # The bend never turns through more than ~half a circle, so road coordinates stay unique.
        radius = max(rng.uniform(cfg.min_radius, 3.0 * cfg.min_radius), 1.1 * (s_hi - s_lo) / np.pi)
        curvature = (1.0 if rng.random() < 0.5 else -1.0) / radius
    road = Road(curvature)
    layout = build_layout(cfg, rng, s_lo, s_hi)
    b = _Builder(road)
    h, lane, edge = cfg.curb_height, cfg.lane_width, layout.edge
    strip_mid = lane + cfg.strip_width / 2

    # Signs and poles first (small, near the curb), then parked vehicles, then the rest.
    for side in (-1, 1):
        for s in _positions(rng, s_lo, s_hi, cfg.signs):
            d = side * (edge + rng.uniform(0.4, 0.9))
            if not b.free(s, d, 0.4):
                continue
            b.occupy(s, d, 0.4)
            top = h + rng.uniform(2.2, 3.0)
            b.cylinder(s, d, 0.045, h, top, POLE, 0, Mat.POLE, np.array([0.55, 0.56, 0.58], np.float32))
            plate = rng.uniform(0.5, 0.8)
            b.box(s, d, 0.0, 0.04, plate, top - plate, top + 0.05, SIGN, 0, Mat.SIGN,
                  _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))], along=-0.06)
        for s in _positions(rng, s_lo, s_hi, cfg.poles):
            d = side * (edge + rng.uniform(0.3, 0.8))
            if b.free(s, d, 0.4):
                b.occupy(s, d, 0.4)
                b.cylinder(s, d, rng.uniform(0.07, 0.15), h, h + rng.uniform(4.0, 9.0), POLE, 0, Mat.POLE,
                           np.array([0.5, 0.5, 0.52], np.float32))

    # Parked cars: most bays taken; the strip's road stretches and the oncoming lane get a few too.
    p_bay = float(np.clip(cfg.cars / 12.0, 0.0, 0.95))
    for side, band in ((-1, layout.low[0]), (1, layout.low[3])):
        for a, e, cls in band.stretches():
            if cls != PARKING:
                continue
            a, e = max(a, s_lo), min(e, s_hi)
            for k in range(int((e - a) // BAY_LENGTH)):
                if rng.random() < p_bay:
                    _place_car(b, rng, a + (k + 0.5) * BAY_LENGTH + rng.normal(0, 0.2),
                               side * (strip_mid + rng.normal(0.0, 0.1)))
    for side in (-1, 1):
        for s in _positions(rng, s_lo, s_hi, 0.3 * cfg.cars):
            _place_car(b, rng, s, side * (strip_mid + rng.normal(0.0, 0.1)))
        for s in _positions(rng, s_lo, s_hi, cfg.trucks):
            _place_truck(b, rng, s, side * (strip_mid + 0.1))
    for s in _positions(rng, s_lo, s_hi, 0.3 * cfg.cars):
        _place_car(b, rng, s, lane / 2 + rng.normal(0.0, 0.15))
    for s in _positions(rng, s_lo, s_hi, 0.5 * cfg.trucks):
        _place_truck(b, rng, s, lane / 2)

    for side in (-1, 1):
        back = raised_depth(layout, side)
        for s in _positions(rng, s_lo, s_hi, cfg.bicyclists):
            # Never in the ego lane (d < 0, |d| < lane): the drive would pass through them.
            in_lane = side > 0 and rng.random() < 0.4
            d = lane - 0.7 if in_lane else strip_mid + rng.uniform(-0.6, 0.6)
            _place_bicyclist(b, rng, s, side * d)
        for s in _positions(rng, s_lo, s_hi, cfg.persons):
            _place_person(b, rng, s, side * rng.uniform(edge + 0.5, back - 0.5), h)
        for s in _positions(rng, s_lo, s_hi, 0.1 * cfg.persons):
            _place_person(b, rng, s, side * rng.uniform(lane + 0.4, edge - 0.4), 0.0)
        for s in _positions(rng, s_lo, s_hi, cfg.trees):
            _place_tree(b, rng, s, side * rng.uniform(edge + 1.2, back - 0.3), h)
        for s in _positions(rng, s_lo, s_hi, cfg.bushes):
            r, d = rng.uniform(0.5, 1.2), side * rng.uniform(edge + 1.5, back + 0.5)
            if b.free(s, d, r):
                b.occupy(s, d, r)
                b.cylinder(s, d, r, h, h + rng.uniform(0.6, 1.5), VEGETATION, 0, Mat.HEDGE,
                           np.array([0.19, 0.38, 0.14], np.float32) * rng.uniform(0.8, 1.2))

        # Buildings behind the raised bands; fences or hedges in some of the gaps between them.
        s = s_lo + rng.uniform(-20.0, 0.0)
        while s < s_hi:
            gap = rng.uniform(30.0, 60.0) if rng.random() < 0.2 else rng.uniform(2.0, 20.0)
            front = back + rng.uniform(1.0, 6.0)
            if gap > 6.0 and rng.random() < 0.7:
                kind = rng.random()
                a, e = s + 1.0, s + gap - 1.0
                d = side * (back + rng.uniform(0.3, 1.5))
                if kind < 0.6:
                    b.box((a + e) / 2, d, 0.0, e - a, 0.06, h, h + rng.uniform(1.0, 2.0), FENCE, 0, Mat.FENCE,
                          np.array([0.55, 0.45, 0.33], np.float32) if rng.random() < 0.5
                          else np.array([0.6, 0.62, 0.64], np.float32))
                else:
                    b.box((a + e) / 2, d, 0.0, e - a, rng.uniform(0.6, 1.0), h, h + rng.uniform(0.9, 1.8),
                          VEGETATION, 0, Mat.HEDGE, np.array([0.17, 0.36, 0.13], np.float32))
            s += gap
            blen, depth = rng.uniform(10.0, 40.0), rng.uniform(8.0, 16.0)
            b.box(s + blen / 2, side * (front + depth / 2), 0.0, blen, depth, h, h + rng.uniform(5.0, 22.0),
                  BUILDING, 0, Mat.BUILDING, _FACADES[rng.integers(len(_FACADES))])
            s += blen

    az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(30.0, 60.0))
    sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    return b.scene(layout, sun)
