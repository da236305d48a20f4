"""What the camera sees of each surface: per-class textures, simple shading, sky and sensor noise.

This is where the appearance-only classes differ: road is dark asphalt with lane markings, parking is
reddish paving with white bay lines, other-ground is asphalt with hatched yellow paint, sidewalk is
grey tiles, terrain is grass. Textures are functions of world / road / object coordinates (hashed
value noise), so a surface looks the same from every frame; only the sensor noise changes per image.
"""

from __future__ import annotations

import numpy as np

from xkd_core.synth.raycast import CURB, GROUND_LOW, MISS, Hits
from xkd_core.synth.world import (
    BAY_LENGTH,
    OTHER_GROUND,
    PARKING,
    ROAD,
    SIDEWALK,
    TERRAIN,
    Mat,
    Scene,
)

SKY_HORIZON = np.array([0.80, 0.86, 0.93])
SKY_ZENITH = np.array([0.42, 0.60, 0.88])
HAZE = np.array([0.74, 0.77, 0.80])
HAZE_DISTANCE = 500.0  # metres; surfaces fade towards the haze colour with exp(-t / this)


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1] per integer lattice cell (wrapping int64 maths)."""
    h = ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263 + salt * 982451653
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float64) / 65535.0


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, salt: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] with features of size `scale` (metres)."""
    gx, gy = x / scale, y / scale
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a, b = _hash(ix, iy, salt), _hash(ix + 1, iy, salt)
    c, d = _hash(ix, iy + 1, salt), _hash(ix + 1, iy + 1, salt)
    return (a + (b - a) * fx) + ((c + (d - c) * fx) - (a + (b - a) * fx)) * fy


def _cell(x: np.ndarray, y: np.ndarray, sx: float, sy: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile random value and joint mask for a tiling of sx x sy tiles (rows offset like bricks)."""
    iy = np.floor(y / sy)
    xs = x / sx + 0.5 * (iy % 2)
    ix = np.floor(xs)
    joint = ((xs - ix) < 0.07) | ((y / sy - iy) < 0.1)
    return _hash(ix, iy, salt), joint


def _asphalt(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    v = 0.30 + 0.06 * value_noise(x, y, 0.15, 1) + 0.04 * value_noise(x, y, 2.0, 2)
    return np.stack([v, v, v * 1.04], axis=1)


def _ground_colour(cls: np.ndarray, s: np.ndarray, d: np.ndarray, x: np.ndarray, y: np.ndarray,
                   start: np.ndarray, on_low: np.ndarray, lane: float) -> np.ndarray:
    out = np.zeros((cls.size, 3))
    m = cls == ROAD
    if m.any():
        c = _asphalt(x[m], y[m])
        dm, sm = np.abs(d[m]), s[m]
        marking = on_low[m] & (((dm < 0.08) & ((sm % 9.0) < 3.0)) | ((dm > lane - 0.18) & (dm < lane - 0.05)))
        c[marking] = 0.85
        out[m] = c
    m = cls == PARKING
    if m.any():
        tile, joint = _cell(s[m], d[m], 0.2, 0.1, 3)
        c = np.array([0.50, 0.42, 0.38]) * (0.85 + 0.3 * tile)[:, None]
        c[joint] *= 0.7
        line = on_low[m] & (((s[m] - start[m]) % BAY_LENGTH) < 0.12)
        c[line] = 0.88
        out[m] = c
    m = cls == OTHER_GROUND
    if m.any():
        c = _asphalt(x[m], y[m])
        hatch = ((s[m] + d[m]) % 1.2) < 0.45
        paint = np.array([0.86, 0.78, 0.45]) * (0.9 + 0.1 * value_noise(x[m], y[m], 0.3, 4))[:, None]
        out[m] = np.where(hatch[:, None], paint, c)
    m = cls == SIDEWALK
    if m.any():
        tile, joint = _cell(s[m], d[m], 0.5, 0.5, 5)
        v = 0.58 + 0.08 * tile + 0.04 * value_noise(x[m], y[m], 0.1, 6)
        v[joint] *= 0.75
        out[m] = np.stack([v, v, v * 0.97], axis=1)
    m = cls == TERRAIN
    if m.any():
        fine = value_noise(x[m], y[m], 0.08, 7)
        patch = value_noise(x[m], y[m], 3.0, 8)
        grass = np.array([0.22, 0.42, 0.12]) * (0.7 + 0.6 * fine)[:, None]
        dry = np.array([0.45, 0.40, 0.22]) * (0.8 + 0.4 * fine)[:, None]
        w = np.clip((patch - 0.6) * 3.0, 0.0, 1.0)[:, None]
        out[m] = grass * (1 - w) + dry * w
    return out


def _object_colour(scene: Scene, prim: np.ndarray, local: np.ndarray, normal: np.ndarray,
                   pts: np.ndarray) -> np.ndarray:
    base = scene.colour[prim].astype(np.float64)
    mat = scene.mat[prim]
    lx, ly, lz = local[:, 0], local[:, 1], local[:, 2]
    along = lx + ly  # on a vertical box face one of the two is constant
    up = normal[:, 2] > 0.5
    side = np.abs(normal[:, 2]) < 0.5
    out = base.copy()
    hx, hy = scene.half[prim, 0], scene.half[prim, 1]
    height = scene.z[prim, 1] - scene.z[prim, 0]

    m = mat == Mat.BUILDING
    if m.any():
        win = side[m] & ((along[m] % 3.0) > 0.8) & ((along[m] % 3.0) < 2.1) & ((lz[m] % 3.2) > 1.0) \
            & ((lz[m] % 3.2) < 2.4) & (lz[m] > 1.0)
        c = base[m] * (0.9 + 0.2 * value_noise(along[m], lz[m], 0.5, 9))[:, None]
        pane = _hash(np.floor(along[m][win] / 3), np.floor(lz[m][win] / 3.2), 10)
        c[win] = np.array([0.18, 0.24, 0.30]) + 0.1 * pane[:, None]
        c[up[m]] = 0.32
        out[m] = c
    m = mat == Mat.CAR_BODY
    if m.any():
        c = base[m].copy()
        c[lz[m] < 0.3] = 0.07
        out[m] = c
    m = mat == Mat.CAR_CABIN
    if m.any():
        glass = side[m] & (np.abs(lx[m]) < 0.85 * hx[m]) & (lz[m] > 0.05)
        c = base[m].copy()
        c[glass] = np.array([0.10, 0.12, 0.16])
        out[m] = c
    m = mat == Mat.TRUCK_CAB
    if m.any():
        c = base[m].copy()
        c[side[m] & (lz[m] > 0.6 * height[m])] = np.array([0.12, 0.14, 0.18])
        c[lz[m] < 0.4] = 0.07
        out[m] = c
    m = mat == Mat.TRUCK_CARGO
    if m.any():
        rib = (along[m] % 0.6) < 0.08
        c = base[m].copy()
        c[rib] *= 0.8
        out[m] = c
    m = mat == Mat.PERSON_BODY
    if m.any():
        c = base[m].copy()
        c[lz[m] < 0.55 * height[m]] = np.array([0.12, 0.13, 0.22])
        out[m] = c
    m = mat == Mat.PERSON_HEAD
    if m.any():
        c = base[m].copy()
        c[lz[m] > 0.6 * height[m]] = np.array([0.15, 0.1, 0.07])
        out[m] = c
    m = mat == Mat.BIKE
    if m.any():
        out[m] = base[m] * (0.7 + 0.6 * _hash(np.floor(lx[m] * 8), np.floor(lz[m] * 8), 11))[:, None]
    m = mat == Mat.SIGN
    if m.any():
        border = (np.abs(ly[m]) > 0.8 * hy[m]) | (lz[m] < 0.15 * height[m]) | (lz[m] > 0.85 * height[m])
        c = base[m].copy()
        c[border] = 0.92
        c[~side[m]] = 0.5
        out[m] = c
    m = mat == Mat.TRUNK
    if m.any():
        out[m] = base[m] * (0.7 + 0.6 * value_noise(lx[m] * 4, lz[m], 0.3, 12))[:, None]
    m = (mat == Mat.FOLIAGE) | (mat == Mat.HEDGE)
    if m.any():
        leaf = value_noise(pts[m, 0] + pts[m, 2] * 0.7, pts[m, 1] - pts[m, 2] * 0.5, 0.12, 13)
        blob = value_noise(pts[m, 0] + pts[m, 2], pts[m, 1], 0.8, 14)
        out[m] = base[m] * (0.45 + 0.5 * leaf + 0.5 * blob)[:, None]
    m = mat == Mat.FENCE
    if m.any():
        c = base[m] * (0.9 + 0.2 * value_noise(along[m], lz[m], 0.05, 15))[:, None]
        c[(along[m] % 0.14) < 0.03] *= 0.55
        out[m] = c
    return out


def shade(scene: Scene, hits: Hits, cls: np.ndarray, start: np.ndarray, pts: np.ndarray, normal: np.ndarray,
          local: np.ndarray, dirs: np.ndarray, rng: np.random.Generator, pixel_noise: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) image of the hits of a camera ray grid."""
    shape = hits.t.shape
    rgb = np.zeros((*shape, 3))
    lane = scene.ground.low[2].d_hi
    ground = (hits.prim < 0) & (hits.prim != MISS)
    if ground.any():
        p = pts[ground]
        on_low = hits.prim[ground] == GROUND_LOW
        s, d = hits.s[ground], hits.d[ground]
        curb = hits.prim[ground] == CURB
        # The curb face shows the raised surface's material, lifted a little so it reads as an edge.
        d = np.where(curb, d + np.sign(d) * p[:, 2], d)
        rgb[ground] = _ground_colour(cls[ground], s, d, p[:, 0], p[:, 1], start[ground], on_low, lane)
        rgb[ground] *= np.where(curb, 0.8, 1.0)[:, None]
    obj = hits.prim >= 0
    if obj.any():
        rgb[obj] = _object_colour(scene, hits.prim[obj], local[obj], normal[obj], pts[obj])
    hit = hits.prim != MISS
    light = 0.55 + 0.45 * np.clip(normal[hit] @ scene.sun, 0.0, 1.0)
    fog = np.exp(-hits.t[hit] / HAZE_DISTANCE)[:, None]
    rgb[hit] = rgb[hit] * light[:, None] * fog + HAZE * (1.0 - fog)
    miss = ~hit
    up = np.clip(dirs[miss][:, 2] * 3.0, 0.0, 1.0)[:, None]
    below = (dirs[miss][:, 2] < 0.0)[:, None]
    rgb[miss] = np.where(below, HAZE, SKY_HORIZON * (1 - up) + SKY_ZENITH * up)
    if pixel_noise > 0.0:
        rgb += rng.normal(0.0, pixel_noise / 255.0, size=rgb.shape)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
