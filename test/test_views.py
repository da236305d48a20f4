"""Named camera views (`xkd_core.data.views`): views.yaml round trip, its errors, KITTI views, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from kitti_fixtures import HW, kitti_seq00_calib, write_tiny_sequence

from xkd_core.config import ConfigError, from_dict
from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.semantickitti import (
    Calib,
    DataFormatError,
    read_class_image,
    write_calib,
    write_class_image,
    write_image,
)
from xkd_core.data.views import (
    VIEWS_FILE,
    ViewCalib,
    camera_selectors,
    kitti_view,
    read_views,
    select_views,
    sequence_views,
    write_views,
)
from xkd_core.geometry.projection import project
from xkd_core.training.config import DataConfig


def rigid(yaw_deg: float, pitch_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    """LiDAR -> optical frame of a camera looking along yaw, pitched down, with translation t."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(p) * math.cos(y), math.cos(p) * math.sin(y), -math.sin(p)])
    right = np.array([math.sin(y), -math.cos(y), 0.0])
    R = np.stack([right, np.cross(fwd, right), fwd])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def surround(n: int = 3, class_dirs: bool = True) -> list[ViewCalib]:
    """`n` cameras with irrational-looking numbers, so an inexact writer would show."""
    K = np.array([[101.234567891, 0.0, 63.5], [0.0, 101.234567891, 35.5], [0.0, 0.0, 1.0]])
    return [ViewCalib(f"CAM_{k}", K, rigid(360.0 * k / n + 0.1, 7.3, (0.013 * k, -0.27, 0.31)), 128, 72,
                      f"image_CAM_{k}", f"class_CAM_{k}" if class_dirs else None) for k in range(n)]


def test_views_yaml_round_trip_is_exact(tmp_path):
    views = surround()
    views.append(ViewCalib("narrow", np.array([[1e-5 + 300.0, 0.5, 1e-7], [0, 310.0, 2.0], [0, 0, 1]]),
                           np.eye(4), 16, 16))  # skewed K, image_dir left to its default
    path = tmp_path / VIEWS_FILE
    write_views(path, views)
    text = path.read_text()
    assert text.startswith("format: xkd-views/1\n")
    back = read_views(path)
    assert [v.name for v in back] == ["CAM_0", "CAM_1", "CAM_2", "narrow"]
    for a, b in zip(views, back):
        assert (a.width, a.height, a.image_dir, a.class_dir) == (b.width, b.height, b.image_dir, b.class_dir)
        assert np.array_equal(a.K, b.K) and np.array_equal(a.T, b.T)  # bit for bit
    assert back[3].image_dir == "image_narrow" and back[3].class_dir is None
    # The centre is where T puts the camera: T @ centre = origin.
    c = back[1].centre()
    np.testing.assert_allclose((back[1].T @ np.append(c, 1.0))[:3], 0.0, atol=1e-12)
    assert back[0].image_path(tmp_path, "000007") == tmp_path / "image_CAM_0" / "000007.png"
    assert back[0].class_path(tmp_path, "000007") == tmp_path / "class_CAM_0" / "000007.png"
    with pytest.raises(DataFormatError, match="narrow.*no class images"):
        back[3].class_path(tmp_path, "000007")


def test_a_hand_written_file_reads(tmp_path):
    """The documented schema, written by hand (ints in K, implicit image_dir)."""
    path = tmp_path / VIEWS_FILE
    path.write_text(
        "format: xkd-views/1\n"
        "views:\n"
        "  - name: CAM_FRONT\n"
        "    width: 32\n"
        "    height: 24\n"
        "    K: [[20, 0, 15.5], [0, 20, 11.5], [0, 0, 1]]\n"
        "    T: [[0, -1, 0, 0], [0, 0, -1, -0.5], [1, 0, 0, 0], [0, 0, 0, 1]]\n"
    )
    (view,) = read_views(path)
    assert view.name == "CAM_FRONT" and view.image_dir == "image_CAM_FRONT" and view.hw == (24, 32)
    # A point 10 m ahead, 1 m left, 0.5 m up: x = 1, y = -0.5 - 0.5 = -1, z = 10 -> (17.5, 9.5).
    uv, depth = project(np.array([[10.0, 1.0, 0.5]]), view.K, view.T)
    np.testing.assert_allclose(uv[0], [15.5 - 2.0, 11.5 - 2.0])
    assert depth[0] == 10.0


GOOD = {"name": "CAM_A", "width": 32, "height": 24, "K": [[20, 0, 15.5], [0, 20, 11.5], [0, 0, 1]],
        "T": np.eye(4).tolist()}


def _with(**changes) -> dict:
    entry = {k: v for k, v in GOOD.items()}
    for k, v in changes.items():
        if v is None:
            entry.pop(k)
        else:
            entry[k] = v
    return entry


@pytest.mark.parametrize("doc, why", [
    ("views: [", "corrupt views file"),
    ("- 1\n- 2\n", "must be a mapping"),
    ({"format": "xkd-views/2", "views": [GOOD]}, "format is 'xkd-views/2'"),
    ({"views": [GOOD]}, "format is None"),
    ({"format": "xkd-views/1", "views": []}, "non-empty list"),
    ({"format": "xkd-views/1", "views": [GOOD], "rig": "x"}, r"unknown key\(s\) \['rig'\]"),
    ({"format": "xkd-views/1", "views": ["CAM_A"]}, r"views\[0\] must be a mapping"),
    ({"format": "xkd-views/1", "views": [_with(K=None)]}, r"views\[0\] \(CAM_A\): missing key\(s\) \['K'\]"),
    ({"format": "xkd-views/1", "views": [_with(k=[1])]}, r"unknown key\(s\) \['k'\]"),
    ({"format": "xkd-views/1", "views": [_with(width=32.5)]}, "width must be an integer"),
    ({"format": "xkd-views/1", "views": [_with(height=0)]}, "height must be a positive integer"),
    ({"format": "xkd-views/1", "views": [_with(name="a/b")]}, "view name 'a/b'"),
    ({"format": "xkd-views/1", "views": [_with(name="all")]}, "reserved"),
    ({"format": "xkd-views/1", "views": [_with(image_dir="../x")]}, "no '..'"),
    ({"format": "xkd-views/1", "views": [_with(K=[[20, 0, 15.5], [0, 20, 11.5]])]}, "K must be a 3x3"),
    ({"format": "xkd-views/1", "views": [_with(K=[[0, 0, 15.5], [0, 20, 11.5], [0, 0, 1]])]},
     "positive focal"),
    ({"format": "xkd-views/1", "views": [_with(K=[[20, 0, 15.5], [0, -20, 11.5], [0, 0, 1]])]},
     "positive focal"),
    ({"format": "xkd-views/1", "views": [_with(K=[[20, 0, 15.5], [0, 20, 11.5], [0, 0, 2]])]},
     r"\[0, 0, 1\]"),
    ({"format": "xkd-views/1", "views": [_with(K=[[20, 0, 15.5], [0, 20, "x"], [0, 0, 1]])]},
     "K must be a 3x3 matrix of numbers"),
    ({"format": "xkd-views/1", "views": [_with(T=np.diag([1.0, 1.0, 1.0, float("nan")]).tolist())]},
     "T holds non-finite values"),
    ({"format": "xkd-views/1", "views": [_with(T=(np.diag([1.1, 1.0, 1.0, 1.0])).tolist())]}, "rigid"),
    ({"format": "xkd-views/1", "views": [_with(T=(np.diag([-1.0, 1.0, 1.0, 1.0])).tolist())]}, "det \\+1"),
    ({"format": "xkd-views/1", "views": [_with(T=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])]},
     "rigid"),
    ({"format": "xkd-views/1", "views": [GOOD, _with(image_dir="other")]}, "'CAM_A' appears twice"),
])
def test_errors_name_the_file_and_the_problem(tmp_path, doc, why):
    path = tmp_path / "sequences" / "05" / VIEWS_FILE
    path.parent.mkdir(parents=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    with pytest.raises(DataFormatError, match=why) as exc:
        read_views(path)
    assert "sequences/05/views.yaml" in str(exc.value)


def test_missing_file_and_writer_refusals(tmp_path):
    with pytest.raises(DataFormatError, match=r"missing file: .*views\.yaml"):
        read_views(tmp_path / VIEWS_FILE)
    with pytest.raises(ValueError, match="at least one view"):
        write_views(tmp_path / VIEWS_FILE, [])
    with pytest.raises(ValueError, match="unique"):
        write_views(tmp_path / VIEWS_FILE, surround(1) * 2)
    calib = Calib(P={2: np.array([[20.0, 0, 15.5, 10.0], [0, 20.0, 11.5, 0], [0, 0, 1, 0]])}, Tr=np.eye(4))
    with pytest.raises(ValueError, match="image size"):
        write_views(tmp_path / VIEWS_FILE, [kitti_view(calib, 2)])  # calib.txt does not know the size


def test_kitti_views_from_real_calibration_numbers():
    # KITTI odometry sequence 00, P2 and Tr (printed to 7 digits, so R is orthonormal to ~2e-7 only).
    calib = kitti_seq00_calib()
    view = kitti_view(calib, 2)
    assert view.name == view.image_dir == "image_2" and view.hw is None and view.class_dir is None
    np.testing.assert_allclose(view.K @ view.T[:3], calib.P[2] @ calib.Tr, atol=1e-9)
    with pytest.raises(DataFormatError, match="P3"):
        kitti_view(calib, 3)
    with pytest.raises(ValueError, match="colour camera"):
        kitti_view(calib, 0)


def test_camera_selectors():
    assert camera_selectors([2, "CAM_FRONT"]) == [2, "CAM_FRONT"]
    assert camera_selectors("all") == ["all"] and camera_selectors(3) == [3] and camera_selectors([]) == []
    for bad, why in [([5], "unknown camera 5"), (["all", 2], "stand alone"), ([2, "image_2"], "twice"),
                     ([2, 2], "twice"), (["a b"], "view name"), ([2.0], "KITTI index"),
                     ([True], "KITTI index")]:
        with pytest.raises(ValueError, match=why):
            camera_selectors(bad)
    # data.cameras takes the same selectors, also the bare string `all`
    assert from_dict(DataConfig, {"root": "x", "cameras": "all"}).cameras == ["all"]
    assert from_dict(DataConfig, {"root": "x", "cameras": [2, "CAM_BACK"]}).cameras == [2, "CAM_BACK"]
    with pytest.raises(ConfigError, match="data.cameras: .*twice"):
        from_dict(DataConfig, {"root": "x", "cameras": [2, 2]})
    with pytest.raises(ConfigError, match="data.cameras: .*unknown camera 1"):
        from_dict(DataConfig, {"root": "x", "cameras": [1]})


@pytest.fixture()
def mixed(tmp_path):
    """A KITTI-layout sequence (image_2, image_3, calib.txt) plus two extra cameras in views.yaml."""
    seq = write_tiny_sequence(tmp_path, "04", n_frames=2, n_points=40, seed=4)
    extra = surround(2)
    write_views(seq.seq_dir / VIEWS_FILE, extra)
    rng = np.random.default_rng(0)
    for view in extra:
        for fid in seq.frame_ids:
            write_image(view.image_path(seq.seq_dir, fid), rng.integers(0, 256, (72, 128, 3), dtype=np.uint8))
            write_class_image(view.class_path(seq.seq_dir, fid), rng.integers(0, 300, (72, 128)))
    return seq, extra


def test_sequence_views_lists_views_yaml_then_kitti_cameras(mixed):
    seq, extra = mixed
    views = sequence_views(seq.seq_dir)
    assert [v.name for v in views] == ["CAM_0", "CAM_1", "image_2", "image_3"]
    assert views[2].hw is None and views[0].hw == (72, 128)
    np.testing.assert_allclose(views[3].K @ views[3].T[:3], seq.calib.P[3] @ seq.calib.Tr, atol=1e-9)
    picked = select_views(seq.seq_dir, [3, "CAM_1", "image_2"])
    assert [v.name for v in picked] == ["image_3", "CAM_1", "image_2"]
    assert [v.name for v in select_views(seq.seq_dir, "all")] == [v.name for v in views]
    assert select_views(seq.seq_dir, []) == []
    with pytest.raises(DataFormatError, match=r"no camera view named 'CAM_9'.*\['CAM_0', 'CAM_1'\]"):
        select_views(seq.seq_dir, ["CAM_9"])
    # A KITTI camera without an image folder is not a view of the sequence (surround data keeps calib.txt).
    for p in (seq.seq_dir / "image_3").iterdir():
        p.unlink()
    (seq.seq_dir / "image_3").rmdir()
    assert [v.name for v in sequence_views(seq.seq_dir)] == ["CAM_0", "CAM_1", "image_2"]


def test_views_yaml_may_describe_kitti_cameras_too(mixed):
    """A views.yaml entry named image_2 wins over calib.txt (it carries the size and class images)."""
    seq, extra = mixed
    K, T = seq.calib.camera(2)
    mine = ViewCalib("image_2", K, T, HW[1], HW[0], "image_2", "class_2")
    write_views(seq.seq_dir / VIEWS_FILE, [*extra, mine])
    views = select_views(seq.seq_dir, [2])
    assert views[0].class_dir == "class_2" and views[0].hw == HW
    assert [v.name for v in sequence_views(seq.seq_dir)] == ["CAM_0", "CAM_1", "image_2", "image_3"]


def test_dataset_reads_named_views_and_checks_their_size(mixed):
    seq, extra = mixed
    ds = SemanticKittiDataset(seq.root, sequences=["04"], cameras="all")
    frame = ds[1]
    assert [v.name for v in frame.views] == ["CAM_0", "CAM_1", "image_2", "image_3"]
    assert [v.name for v in ds.views("04")] == [v.name for v in frame.views]
    assert frame.views[0].image.shape == (72, 128, 3) and frame.views[2].image.shape == (*HW, 3)
    np.testing.assert_array_equal(frame.views[1].K, extra[1].K)
    np.testing.assert_array_equal(frame.views[1].T, extra[1].T)
    np.testing.assert_array_equal(frame.views[3].image, seq.images[3][1])
    one = SemanticKittiDataset(seq.root, sequences=["04"], cameras=["CAM_1"])[0]
    assert [v.name for v in one.views] == ["CAM_1"]
    # An image whose size disagrees with its calibration is refused, naming the file.
    write_image(extra[0].image_path(seq.seq_dir, "000001"), np.zeros((72, 127, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"image_CAM_0/000001\.png is 127x72 .* 128x72"):
        ds[1]
    # A missing image of a named view fails at start-up with its path.
    extra[1].image_path(seq.seq_dir, "000000").unlink()
    with pytest.raises(DataFormatError, match=r"image_CAM_1/000000\.png"):
        SemanticKittiDataset(seq.root, sequences=["04"], cameras="all")
    with pytest.raises(DataFormatError, match="no camera view named 'CAM_FRONT'"):
        SemanticKittiDataset(seq.root, sequences=["04"], cameras=["CAM_FRONT"])


def test_class_image_round_trip_and_errors(tmp_path):
    ids = np.array([[0, 40, 44], [252, 65535, 72]], dtype=np.uint16)
    write_class_image(tmp_path / "c.png", ids)
    back = read_class_image(tmp_path / "c.png")
    assert back.dtype == np.uint16 and np.array_equal(back, ids)
    write_image(tmp_path / "rgb.png", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"rgb\.png must be a single-channel 16-bit PNG"):
        read_class_image(tmp_path / "rgb.png")
    with pytest.raises(DataFormatError, match="missing file"):
        read_class_image(tmp_path / "none.png")
    with pytest.raises(ValueError, match="16 bits"):
        write_class_image(tmp_path / "x.png", np.array([[70000]]))


def test_calibration_without_the_camera_names_calib_txt(tmp_path):
    seq = write_tiny_sequence(tmp_path, "06", n_frames=1, n_points=10, seed=6)
    calib = seq.calib
    del calib.P[3]
    write_calib(seq.seq_dir / "calib.txt", calib)
    for cameras in ([3], "all"):  # an image_3 folder without P3 is an error, not a view left out
        with pytest.raises(DataFormatError, match=r"06/calib\.txt: calibration has no P3"):
            select_views(seq.seq_dir, cameras)
    assert [v.name for v in select_views(seq.seq_dir, [2])] == ["image_2"]
    (seq.seq_dir / "calib.txt").unlink()
    with pytest.raises(DataFormatError, match=r"missing file: .*06/calib\.txt"):
        select_views(seq.seq_dir, "all")
    for cam in (2, 3):
        for p in (seq.seq_dir / f"image_{cam}").iterdir():
            p.unlink()
        (seq.seq_dir / f"image_{cam}").rmdir()
    with pytest.raises(DataFormatError, match="has no camera views"):
        select_views(seq.seq_dir, "all")
