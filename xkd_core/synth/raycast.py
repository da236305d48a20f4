"""Exact ray casting against a `Scene`, shared by the LiDAR and the camera.

Both sensors are a grid of rays from one origin (beams x azimuth steps, image rows x columns), so
one caster serves both and a LiDAR point and the pixel it projects to always see the same surface.
The ground is intersected analytically for every ray; each object is only tested against the
sub-grid of rays that can reach it (a row range and a column range from the sensor's culling), which
keeps a 130k-ray scan fast in plain numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xkd_core.synth.world import Scene

# Codes in `Hits.prim` for what is not an object (objects are >= 0).
GROUND_LOW = -1  # the road-level plane (road, parking, other-ground)
GROUND_RAISED = -2  # the plane at curb height (sidewalk, terrain)
CURB = -3  # the vertical curb face between them
MISS = -4  # nothing within range (sky)


@dataclass
class Hits:
    """First surface along every ray of a (R, C) grid."""

    t: np.ndarray  # (R, C) float64 distance along the unit ray; inf where MISS
    prim: np.ndarray  # (R, C) int32 object index, or GROUND_LOW / GROUND_RAISED / CURB / MISS
    s: np.ndarray  # (R, C) float64 road arc length of ground/curb hits (nan elsewhere)
    d: np.ndarray  # (R, C) float64 road lateral offset of ground/curb hits (nan elsewhere)


def _ground(scene: Scene, o: np.ndarray, dirs: np.ndarray, t_max: float) -> Hits:
    """Hits on the two ground planes and the curb face joining them.

    A downward ray first meets the curb-height plane: if that point is beyond the curb it is the
    hit; otherwise it goes on to the road plane, and if that point is beyond the curb the ray went
    through the curb face in between (found by interpolating d along the short segment).
    """
    shape = dirs.shape[:2]
    t = np.full(shape, np.inf)
    prim = np.full(shape, MISS, dtype=np.int32)
    s_out = np.full(shape, np.nan)
    d_out = np.full(shape, np.nan)
    down = dirs[..., 2] < -1e-9
    D = dirs[down]
    edge, h = scene.ground.edge, scene.ground.curb_height
    t_h = (h - o[2]) / D[:, 2]
    s_h, d_h = scene.road.to_road(o[0] + t_h * D[:, 0], o[1] + t_h * D[:, 1])
    t_0 = -o[2] / D[:, 2]
    s_0, d_0 = scene.road.to_road(o[0] + t_0 * D[:, 0], o[1] + t_0 * D[:, 1])
    raised_h = np.abs(d_h) >= edge
    curb = ~raised_h & (np.abs(d_0) >= edge)
    tt = np.where(raised_h, t_h, t_0)
    ss = np.where(raised_h, s_h, s_0)
    dd = np.where(raised_h, d_h, d_0)
    kind = np.where(raised_h, GROUND_RAISED, GROUND_LOW).astype(np.int32)
    if curb.any():
        target = np.sign(d_0[curb]) * edge
        frac = (target - d_h[curb]) / (d_0[curb] - d_h[curb])
        tt[curb] = t_h[curb] + frac * (t_0[curb] - t_h[curb])
        ss[curb] = s_h[curb] + frac * (s_0[curb] - s_h[curb])
        dd[curb] = target
        kind[curb] = CURB
    far = tt > t_max
    kind[far] = MISS
    tt[far] = np.inf
    ss[far] = np.nan
    dd[far] = np.nan
    t[down], prim[down], s_out[down], d_out[down] = tt, kind, ss, dd
    return Hits(t, prim, s_out, d_out)


def _box_t(scene: Scene, i: int, o: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Entry distance of rays D (..., 3) into yawed box i (slab method in the box frame); inf on a miss."""
    c, s = np.cos(scene.yaw[i]), np.sin(scene.yaw[i])
    ox, oy = o[0] - scene.centre[i, 0], o[1] - scene.centre[i, 1]
    z0, z1 = scene.z[i]
    lx, ly, lz = c * ox + s * oy, -s * ox + c * oy, o[2] - 0.5 * (z0 + z1)
    hx, hy, hz = scene.half[i, 0], scene.half[i, 1], 0.5 * (z1 - z0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ix = 1.0 / (c * D[..., 0] + s * D[..., 1])
        iy = 1.0 / (-s * D[..., 0] + c * D[..., 1])
        iz = 1.0 / D[..., 2]
        ax, bx = (-hx - lx) * ix, (hx - lx) * ix
        ay, by = (-hy - ly) * iy, (hy - ly) * iy
        az, bz = (-hz - lz) * iz, (hz - lz) * iz
        t_near = np.maximum(np.maximum(np.minimum(ax, bx), np.minimum(ay, by)), np.minimum(az, bz))
        t_far = np.minimum(np.minimum(np.maximum(ax, bx), np.maximum(ay, by)), np.maximum(az, bz))
        hit = (t_near <= t_far) & (t_near > 0.0)
    return np.where(hit, t_near, np.inf)


def _cylinder_t(scene: Scene, i: int, o: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Entry distance of rays D (..., 3) into vertical cylinder i (side or caps); inf on a miss."""
    ox, oy = o[0] - scene.centre[i, 0], o[1] - scene.centre[i, 1]
    r = scene.half[i, 0]
    z0, z1 = scene.z[i]
    dx, dy, dz = D[..., 0], D[..., 1], D[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - r * r)
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z_side = o[2] + t_side * dz
        best = np.where((disc >= 0.0) & (t_side > 0.0) & (z_side >= z0) & (z_side <= z1), t_side, np.inf)
        for zc in (z0, z1):
            if (o[2] - zc) == 0.0:
                continue
            t_cap = (zc - o[2]) / dz
            px, py = ox + t_cap * dx, oy + t_cap * dy
            ok = (t_cap > 0.0) & (px * px + py * py <= r * r)
            best = np.where(ok & (t_cap < best), t_cap, best)
    return best


def _column_slices(c0: int, c1: int, n: int, wrap: bool) -> Iterator[tuple[int, int]]:
    """The column range [c0, c1) as at most two slices of [0, n) (wrapping round for a 360 deg sensor)."""
    if c1 - c0 >= n and wrap:
        yield 0, n
        return
    if not wrap:
        c0, c1 = max(c0, 0), min(c1, n)
        if c1 > c0:
            yield c0, c1
        return
    if c0 < 0:
        yield c0 + n, n
        if c1 > 0:
            yield 0, c1
    elif c1 > n:
        yield c0, n
        if c1 - n > 0:
            yield 0, c1 - n
    else:
        yield c0, c1


def cast(
    scene: Scene,
    origin: np.ndarray,
    dirs: np.ndarray,
    candidates: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    t_max: float,
    wrap: bool,
) -> Hits:
    """First hit of every ray `dirs` (R, C, 3, unit, world frame) from `origin` (3,).

    `candidates` are the objects to test and `rows[k]`, `cols[k]` ([start, stop)) the sub-grid of
    rays that can reach candidate k (any conservative bound is correct; tighter is faster). With
    `wrap`, column ranges may run past either end and continue on the other side.
    """
    o = np.asarray(origin, dtype=np.float64)
    hits = _ground(scene, o, dirs, t_max)
    n_cols = dirs.shape[1]
    for k, i in enumerate(candidates):
        r0, r1 = int(rows[k, 0]), int(rows[k, 1])
        if r1 <= r0:
            continue
        for a, b in _column_slices(int(cols[k, 0]), int(cols[k, 1]), n_cols, wrap):
            D = dirs[r0:r1, a:b]
            ti = _box_t(scene, i, o, D) if i < scene.n_boxes else _cylinder_t(scene, i, o, D)
            tb = hits.t[r0:r1, a:b]
            closer = (ti < tb) & (ti <= t_max)
            if closer.any():
                tb[closer] = ti[closer]
                hits.prim[r0:r1, a:b][closer] = i
    obj = hits.prim >= 0
    hits.s[obj] = np.nan
    hits.d[obj] = np.nan
    return hits


def classify(scene: Scene, hits: Hits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw class (uint16), instance id (uint16) and painted-stretch start s (float64) per ray.

    Objects carry their class; ground and curb hits look up the layout (the curb face takes the
    class of the raised band it belongs to, so a curb next to grass is terrain, next to paving
    sidewalk: the pair stays geometrically identical). MISS rays get class 0.
    """
    cls = np.zeros(hits.t.shape, dtype=np.uint16)
    inst = np.zeros(hits.t.shape, dtype=np.uint16)
    start = np.zeros(hits.t.shape, dtype=np.float64)
    obj = hits.prim >= 0
    cls[obj] = scene.cls[hits.prim[obj]]
    inst[obj] = scene.inst[hits.prim[obj]]
    ground = (hits.prim < 0) & (hits.prim != MISS)
    if ground.any():
        kind = hits.prim[ground]
        d = hits.d[ground]
        d = np.where(kind == CURB, d + np.sign(d) * 1e-3, d)
        cls[ground], start[ground] = scene.ground.classify(hits.s[ground], d, kind != GROUND_LOW)
    return cls, inst, start


def surface(
    scene: Scene, hits: Hits, origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hit points (R, C, 3), unit normals (R, C, 3) and object-local coordinates (R, C, 3) per ray.

    Local coordinates (along the object's length, across it, height above its base) give textures a
    frame that moves with the object; ground/curb rays get (s, d, z), MISS rays zeros.
    """
    shape = hits.t.shape
    t = np.where(np.isfinite(hits.t), hits.t, 0.0)
    pts = origin + dirs * t[..., None]
    normal = np.zeros((*shape, 3))
    local = np.zeros((*shape, 3))
    ground = (hits.prim < 0) & (hits.prim != MISS)
    normal[ground] = (0.0, 0.0, 1.0)
    local[ground] = np.stack([hits.s[ground], hits.d[ground], pts[ground][:, 2]], axis=1)
    curb = hits.prim == CURB
    if curb.any():
        yaw = scene.road.heading(hits.s[curb])
        side = np.sign(hits.d[curb])
        normal[curb] = np.stack([side * np.sin(yaw), -side * np.cos(yaw), np.zeros_like(yaw)], axis=1)
    for is_box in (True, False):
        sel = (hits.prim >= 0) & ((hits.prim < scene.n_boxes) == is_box)
        if not sel.any():
            continue
        i = hits.prim[sel]
        p = pts[sel]
        rel_x, rel_y = p[:, 0] - scene.centre[i, 0], p[:, 1] - scene.centre[i, 1]
        z0, z1 = scene.z[i, 0], scene.z[i, 1]
        if is_box:
            c, s = np.cos(scene.yaw[i]), np.sin(scene.yaw[i])
            lx, ly = c * rel_x + s * rel_y, -s * rel_x + c * rel_y
            lz = p[:, 2] - 0.5 * (z0 + z1)
            ratio = np.stack([np.abs(lx) / scene.half[i, 0], np.abs(ly) / scene.half[i, 1],
                              np.abs(lz) / (0.5 * (z1 - z0))], axis=1)
            axis = np.argmax(ratio, axis=1)
            sign = np.sign(np.choose(axis, [lx, ly, lz]))
            nx = np.where(axis == 0, sign * c, np.where(axis == 1, -sign * s, 0.0))
            ny = np.where(axis == 0, sign * s, np.where(axis == 1, sign * c, 0.0))
            nz = np.where(axis == 2, sign, 0.0)
            normal[sel] = np.stack([nx, ny, nz], axis=1)
            local[sel] = np.stack([lx, ly, p[:, 2] - z0], axis=1)
        else:
            rho = np.hypot(rel_x, rel_y)
            r = scene.half[i, 0]
            gaps = np.stack([np.abs(rho - r), np.abs(p[:, 2] - z1), np.abs(p[:, 2] - z0)], axis=1)
            which = np.argmin(gaps, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                radial = np.stack([rel_x / rho, rel_y / rho, np.zeros_like(rho)], axis=1)
            radial = np.nan_to_num(radial)
            cap = np.stack([np.zeros_like(rho), np.zeros_like(rho), np.where(which == 1, 1.0, -1.0)], axis=1)
            normal[sel] = np.where((which == 0)[:, None], radial, cap)
            local[sel] = np.stack([np.arctan2(rel_y, rel_x) * r, rho, p[:, 2] - z0], axis=1)
    return pts, normal, local
