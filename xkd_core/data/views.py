"""Named camera views of a sequence: `views.yaml` (any rig) and KITTI's `calib.txt` cameras as one kind.

A sequence may carry `sequences/NN/views.yaml` (format `xkd-views/1`) listing any number of cameras,
each with a name, its image folder, image size, pinhole K and the rigid LiDAR -> camera transform T
(optical frame: x right, y down, z forward). That is all a nuScenes-style surround rig needs (six
named cameras, each with its own K and LiDAR -> camera T), so a nuScenes-lidarseg converter only has
to write this file. KITTI's colour cameras stay readable from `calib.txt` as views named `image_2`
and `image_3`, so every consumer (dataset, generator, tools) handles one object, `ViewCalib`.

Camera selectors (`data.cameras`): KITTI indices 2 / 3 (= the views `image_2` / `image_3`), view
names, or `all` (every view of the sequence).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from xkd_core.data.semantickitti import IMAGE_DIRS, Calib, DataFormatError, read_calib

#: File name of the per-sequence view list.
VIEWS_FILE = "views.yaml"
#: The `format` value this reader understands and the writer writes.
VIEWS_FORMAT = "xkd-views/1"
#: Selector meaning every view of a sequence.
ALL_VIEWS = "all"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VIEW_KEYS = {"name", "image_dir", "class_dir", "width", "height", "K", "T"}
_RIGID_TOL = 1e-4  # printed calibrations (KITTI: 7 digits) are orthonormal to ~1e-7


def _matrix(name: str, value: object, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a {shape[0]}x{shape[1]} matrix of numbers: {exc}") from None
    if arr.shape != shape:
        raise ValueError(f"{name} must be a {shape[0]}x{shape[1]} matrix (list of rows), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values")
    return arr


def _folder(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty folder name, got {value!r}")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{what} must be a folder relative to the sequence (no '..'), got {value!r}")
    return value


@dataclass
class ViewCalib:
    """One camera of a sequence: where its images are and how LiDAR points project into them.

    A LiDAR point `p` lands on pixel `K @ (T @ p)[:3]` (pixel centres at integer coordinates). `width`
    / `height` are None for KITTI cameras read from `calib.txt`, which does not record image sizes.
    `class_dir` optionally holds per-pixel raw class ids (uint16 PNG) of the same frames.
    """

    name: str
    K: np.ndarray  # (3, 3) float64
    T: np.ndarray  # (4, 4) float64, LiDAR -> camera optical frame
    width: int | None = None
    height: int | None = None
    image_dir: str = ""  # "" = image_<name>
    class_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"view name {self.name!r} must be letters, digits, '_', '.', '-' "
                             "(starting with a letter or digit)")
        if self.name == ALL_VIEWS:
            raise ValueError(f"view name {ALL_VIEWS!r} is reserved (it selects every view)")
        self.image_dir = _folder(f"view {self.name}: image_dir", self.image_dir or f"image_{self.name}")
        if self.class_dir is not None:
            self.class_dir = _folder(f"view {self.name}: class_dir", self.class_dir)
        for dim in ("width", "height"):
            v = getattr(self, dim)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"view {self.name}: {dim} must be a positive integer, got {v!r}")
            if v is not None:
                setattr(self, dim, int(v))
        K = _matrix(f"view {self.name}: K", self.K, (3, 3))
        if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
            raise ValueError(f"view {self.name}: K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], "
                             f"got {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"view {self.name}: K needs positive focal lengths, got fx={K[0, 0]}, "
                             f"fy={K[1, 1]}")
        T = _matrix(f"view {self.name}: T", self.T, (4, 4))
        R = T[:3, :3]
        if (np.abs(T[3] - [0, 0, 0, 1]).max() > _RIGID_TOL or np.abs(R @ R.T - np.eye(3)).max() > _RIGID_TOL
                or np.linalg.det(R) <= 0):
            raise ValueError(f"view {self.name}: T must be rigid (rotation with det +1, last row 0 0 0 1), "
                             f"got {T.tolist()}")
        self.K, self.T = K, T

    @property
    def hw(self) -> tuple[int, int] | None:
        """Image (height, width), or None when the calibration does not say (KITTI)."""
        return None if self.width is None or self.height is None else (self.height, self.width)

    def image_path(self, seq_dir: str | Path, frame_id: str) -> Path:
        """`seq_dir/<image_dir>/<frame_id>.png`."""
        return Path(seq_dir) / self.image_dir / f"{frame_id}.png"

    def class_path(self, seq_dir: str | Path, frame_id: str) -> Path:
        """`seq_dir/<class_dir>/<frame_id>.png` (raw class ids); an error when the view has none."""
        if self.class_dir is None:
            raise DataFormatError(f"view {self.name} of {seq_dir} has no class images (class_dir)")
        return Path(seq_dir) / self.class_dir / f"{frame_id}.png"

    def centre(self) -> np.ndarray:
        """The camera's optical centre in the LiDAR frame, (3,)."""
        return -self.T[:3, :3].T @ self.T[:3, 3]

    def to_dict(self) -> dict:
        """The `views.yaml` entry (plain Python types, floats written exactly)."""
        out: dict = {"name": self.name, "image_dir": self.image_dir}
        if self.class_dir is not None:
            out["class_dir"] = self.class_dir
        if self.width is not None:
            out["width"] = self.width
        if self.height is not None:
            out["height"] = self.height
        out["K"] = [[float(v) for v in row] for row in self.K]
        out["T"] = [[float(v) for v in row] for row in self.T]
        return out


def kitti_view(calib: Calib, cam: int, width: int | None = None, height: int | None = None,
               class_dir: str | None = None) -> ViewCalib:
    """KITTI colour camera `cam` (2 or 3) of a `calib.txt` as the view `image_<cam>`."""
    if cam not in IMAGE_DIRS:
        raise ValueError(f"KITTI camera {cam} is not a colour camera; choose among {sorted(IMAGE_DIRS)}")
    K, T = calib.camera(cam)
    # KITTI's rectified P_i = K [I | t]: the 3x3 part is an upper-triangular K with K[2, 2] = 1.
    return ViewCalib(IMAGE_DIRS[cam], K, T, width, height, IMAGE_DIRS[cam], class_dir)


def read_views(path: str | Path) -> list[ViewCalib]:
    """Parse a `views.yaml`; any problem is a `DataFormatError` naming the file (and the view)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"missing file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"corrupt views file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataFormatError(f"views file {path} must be a mapping with 'format' and 'views'")
    extra = sorted(set(data) - {"format", "views"})
    if extra:
        raise DataFormatError(f"views file {path}: unknown key(s) {extra}")
    if data.get("format") != VIEWS_FORMAT:
        raise DataFormatError(f"views file {path}: format is {data.get('format')!r}; this reader knows "
                              f"{VIEWS_FORMAT!r}")
    entries = data.get("views")
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"views file {path}: 'views' must be a non-empty list")
    views: list[ViewCalib] = []
    for i, entry in enumerate(entries):
        label = f"views[{i}]" + (f" ({entry['name']})" if isinstance(entry, dict) and "name" in entry else "")
        if not isinstance(entry, dict):
            raise DataFormatError(f"views file {path}: {label} must be a mapping")
        missing = sorted({"name", "width", "height", "K", "T"} - set(entry))
        unknown = sorted(set(entry) - _VIEW_KEYS)
        if missing or unknown:
            why = (f"missing key(s) {missing}" if missing else "") + ("; " if missing and unknown else "") + (
                f"unknown key(s) {unknown}" if unknown else "")
            raise DataFormatError(f"views file {path}: {label}: {why}")
        for dim in ("width", "height"):
            if isinstance(entry[dim], bool) or not isinstance(entry[dim], int):
                raise DataFormatError(f"views file {path}: {label}: {dim} must be an integer, "
                                      f"got {entry[dim]!r}")
        try:
            view = ViewCalib(entry["name"], entry["K"], entry["T"], entry["width"], entry["height"],
                             entry.get("image_dir", ""), entry.get("class_dir"))
        except ValueError as exc:
            raise DataFormatError(f"views file {path}: {label}: {exc}") from None
        if any(v.name == view.name for v in views):
            raise DataFormatError(f"views file {path}: view name {view.name!r} appears twice")
        views.append(view)
    return views


def write_views(path: str | Path, views: Sequence[ViewCalib]) -> None:
    """Write `views.yaml` (format `xkd-views/1`); the values read back exactly."""
    views = list(views)
    if not views:
        raise ValueError("write_views needs at least one view")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"view names must be unique, got {names}")
    if any(v.hw is None for v in views):
        raise ValueError("views.yaml records the image size of every view (width / height)")
    doc = {"format": VIEWS_FORMAT, "views": [v.to_dict() for v in views]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200))


# ------------------------------------------------------------------------------------ selecting views


def camera_selectors(cameras: int | str | Sequence[int | str]) -> list[int | str]:
    """Check `data.cameras`-style selectors: KITTI indices 2 / 3, view names, or `all` alone.

    A single string is one selector (`"all"`, `"CAM_FRONT"`). Errors are `ValueError`s that say
    what is allowed; duplicates (also `2` next to `image_2`) are refused.
    """
    if isinstance(cameras, (str, int)) and not isinstance(cameras, bool):
        cameras = [cameras]
    out: list[int | str] = []
    seen: set[str] = set()
    for c in cameras:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if int(c) not in IMAGE_DIRS:
                raise ValueError(f"unknown camera {c}: KITTI camera indices are {sorted(IMAGE_DIRS)} "
                                 "(other cameras go by view name, or 'all')")
            key, c = IMAGE_DIRS[int(c)], int(c)
        elif isinstance(c, str) and (c == ALL_VIEWS or _NAME.match(c)):
            key = c
        else:
            raise ValueError(f"camera {c!r} must be a KITTI index ({sorted(IMAGE_DIRS)}), a view name or "
                             f"{ALL_VIEWS!r}")
        if key in seen:
            raise ValueError(f"camera {c!r} is selected twice in {list(cameras)}")
        seen.add(key)
        out.append(c)
    if ALL_VIEWS in out and len(out) > 1:
        raise ValueError(f"{ALL_VIEWS!r} selects every view and must stand alone, got {list(cameras)}")
    return out


def default_cameras(seq_dirs: Sequence[str | Path]) -> list[int | str]:
    """The cameras a tool uses when none are named: every view when each sequence lists its rig in
    `views.yaml` (a surround rig has no KITTI camera 2), else KITTI camera 2 (its frustum figures stay
    comparable with SemanticKITTI's)."""
    dirs = [Path(d) for d in seq_dirs]
    if dirs and all((d / VIEWS_FILE).is_file() for d in dirs):
        return [ALL_VIEWS]
    return [2]


def _kitti_from_calib(seq_dir: Path, cam: int, cache: dict[str, Calib]) -> ViewCalib:
    calib_path = seq_dir / "calib.txt"
    if "calib" not in cache:
        cache["calib"] = read_calib(calib_path)  # names the file when missing or corrupt
    calib = cache["calib"]
    if cam not in calib.P:
        raise DataFormatError(f"{calib_path}: calibration has no P{cam} (needed for camera {cam})")
    try:
        return kitti_view(calib, cam)
    except ValueError as exc:
        raise DataFormatError(f"{calib_path}: P{cam}: {exc}") from None


def sequence_views(seq_dir: str | Path) -> list[ViewCalib]:
    """Every view of a sequence: those of `views.yaml`, then each KITTI colour camera that has an image
    folder (`image_2`, `image_3`), calibrated from `calib.txt`, unless `views.yaml` already names it.

    An image folder without its calibration (no `calib.txt`, or no `P2` / `P3` in it) is an error,
    not a view silently left out.
    """
    seq_dir = Path(seq_dir)
    views = read_views(seq_dir / VIEWS_FILE) if (seq_dir / VIEWS_FILE).exists() else []
    names = {v.name for v in views}
    cache: dict[str, Calib] = {}
    for cam, folder in IMAGE_DIRS.items():
        if folder not in names and (seq_dir / folder).is_dir():
            views.append(_kitti_from_calib(seq_dir, cam, cache))
    return views


def select_views(seq_dir: str | Path, cameras: int | str | Sequence[int | str]) -> list[ViewCalib]:
    """The views of a sequence that `cameras` selects (see `camera_selectors`), in the order asked.

    `all` gives `sequence_views`; a KITTI index or a name `image_2` / `image_3` comes from
    `views.yaml` when it names that view, else from `calib.txt`.
    """
    seq_dir = Path(seq_dir)
    selectors = camera_selectors(cameras)
    if not selectors:
        return []
    if selectors == [ALL_VIEWS]:
        views = sequence_views(seq_dir)
        if not views:
            raise DataFormatError(f"{seq_dir} has no camera views (no {VIEWS_FILE}, no image_2 / image_3 "
                                  "folder with a calib.txt)")
        return views
    yaml_path = seq_dir / VIEWS_FILE
    listed = {v.name: v for v in read_views(yaml_path)} if yaml_path.exists() else {}
    kitti_names = {folder: cam for cam, folder in IMAGE_DIRS.items()}
    cache: dict[str, Calib] = {}
    out = []
    for sel in selectors:
        name = IMAGE_DIRS[sel] if isinstance(sel, int) else sel
        if name in listed:
            out.append(listed[name])
        elif name in kitti_names:
            out.append(_kitti_from_calib(seq_dir, kitti_names[name], cache))
        else:
            have = sorted(listed) if listed else f"none ({yaml_path} is missing)"
            raise DataFormatError(f"{seq_dir}: no camera view named {name!r}; views listed in "
                                  f"{VIEWS_FILE}: {have}")
    return out
