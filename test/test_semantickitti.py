"""SemanticKITTI file I/O on hand-built files with known values, and the class map round trip."""

from __future__ import annotations

import numpy as np
import pytest
from kitti_fixtures import HW, TR, K, kitti_seq00_calib, tiny_calib, write_tiny_sequence

from xkd_core.classes import LEARNING_MAP, LEARNING_MAP_INV, NUM_CLASSES, to_learning, to_raw
from xkd_core.data.semantickitti import (
    IMAGE_DIRS,
    SPLITS,
    DataFormatError,
    frame_ids,
    read_calib,
    read_image,
    read_labels,
    read_points,
    read_poses,
    sequence_dir,
    write_calib,
    write_image,
    write_labels,
    write_points,
    write_poses,
)

# ------------------------------------------------------------------------------------------- points


def test_points_bytes_are_float32_xyzi(tmp_path):
    pts = np.array([[1.5, -2.0, 0.25, 0.5], [10.0, 0.0, -1.0, 1.0]], dtype=np.float32)
    path = tmp_path / "000000.bin"
    write_points(path, pts)
    assert path.stat().st_size == 2 * 16
    assert np.array_equal(np.fromfile(path, dtype=np.float32), pts.reshape(-1))
    back = read_points(path)
    assert back.dtype == np.float32 and back.shape == (2, 4)
    assert np.array_equal(back, pts)


def test_points_writer_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        write_points(tmp_path / "x.bin", np.zeros((3, 3)))


def test_corrupt_or_missing_scan_names_the_file(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * 20)  # 5 floats: not whole points
    with pytest.raises(DataFormatError, match="bad.bin"):
        read_points(path)
    with pytest.raises(DataFormatError, match="nothere.bin"):
        read_points(tmp_path / "nothere.bin")


# ------------------------------------------------------------------------------------------- labels


def test_labels_split_lower_semantic_upper_instance(tmp_path):
    path = tmp_path / "000000.label"
    raw = np.array([10, (7 << 16) | 40, (0xFFFF << 16) | 252, (1 << 16) | 0xFFFF], dtype=np.uint32)
    raw.tofile(path)
    sem, inst = read_labels(path)
    assert sem.dtype == np.uint16 and inst.dtype == np.uint16
    assert sem.tolist() == [10, 40, 252, 0xFFFF]
    assert inst.tolist() == [0, 7, 0xFFFF, 1]


def test_labels_writer_packs_the_same_bits(tmp_path):
    path = tmp_path / "a.label"
    write_labels(path, np.array([10, 40, 252]), np.array([0, 7, 0xFFFF]))
    assert np.fromfile(path, dtype=np.uint32).tolist() == [10, (7 << 16) | 40, (0xFFFF << 16) | 252]
    write_labels(path, np.array([44, 48]))  # no instance: zeros
    sem, inst = read_labels(path)
    assert sem.tolist() == [44, 48] and inst.tolist() == [0, 0]


def test_labels_writer_rejects_ids_over_16_bits(tmp_path):
    with pytest.raises(ValueError, match="16 bits"):
        write_labels(tmp_path / "a.label", np.array([1 << 16]))
    with pytest.raises(ValueError, match="equal length"):
        write_labels(tmp_path / "a.label", np.array([1, 2]), np.array([1]))


def test_label_errors_name_the_file(tmp_path):
    path = tmp_path / "000007.label"
    write_labels(path, np.array([10, 40, 50]))
    with pytest.raises(DataFormatError, match=r"000007\.label.*3 labels.*4 points"):
        read_labels(path, num_points=4)
    bad = tmp_path / "odd.label"
    bad.write_bytes(b"\0" * 6)
    with pytest.raises(DataFormatError, match="odd.label"):
        read_labels(bad)
    with pytest.raises(DataFormatError, match="missing.label"):
        read_labels(tmp_path / "missing.label")


# ------------------------------------------------------------------------------------------- calib


def test_calib_round_trip_and_camera_composition(tmp_path):
    calib = tiny_calib()
    path = tmp_path / "calib.txt"
    write_calib(path, calib)
    text = path.read_text().splitlines()
    assert [line.split(":")[0] for line in text] == ["P0", "P1", "P2", "P3", "Tr"]
    back = read_calib(path)
    assert sorted(back.P) == [0, 1, 2, 3]
    np.testing.assert_allclose(back.Tr, TR, atol=1e-12)
    for cam in range(4):
        np.testing.assert_allclose(back.P[cam], calib.P[cam], atol=1e-12)
        Kc, Tc = back.camera(cam)
        np.testing.assert_allclose(Kc, K, atol=1e-12)
        np.testing.assert_allclose(Kc @ Tc[:3], back.P[cam] @ back.Tr, atol=1e-9)
        np.testing.assert_allclose(back.projection(cam), back.P[cam] @ back.Tr, atol=1e-12)
        # T stays rigid: the baseline goes into T, not into K
        np.testing.assert_allclose(Tc[:3, :3] @ Tc[:3, :3].T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(Tc[3], [0, 0, 0, 1])


def test_calib_hand_computed_pixel():
    # LiDAR point 10 m ahead, 1 m left, 0.5 m up.
    # camera 0: x = -y = -1, y = -z + (-0.5) = -1, z = x = 10; camera 2 is 0.5 m further left: x = -0.5.
    # pixel: u = 20 * -0.5 / 10 + 15.5 = 14.5, v = 20 * -1 / 10 + 11.5 = 9.5.
    Kc, Tc = tiny_calib().camera(2)
    p = np.array([10.0, 1.0, 0.5, 1.0])
    cam = Tc @ p
    np.testing.assert_allclose(cam[:3], [-0.5, -1.0, 10.0], atol=1e-12)
    pix = Kc @ cam[:3]
    np.testing.assert_allclose(pix[:2] / pix[2], [14.5, 9.5], atol=1e-12)
    # camera 3 (0.25 m right of camera 0): x = -1.25 -> u = 20 * -1.25 / 10 + 15.5 = 13.0
    K3, T3 = tiny_calib().camera(3)
    pix3 = K3 @ (T3 @ p)[:3]
    np.testing.assert_allclose(pix3[:2] / pix3[2], [13.0, 9.5], atol=1e-12)


def test_calib_real_kitti_numbers_compose():
    # Sequence 00 calibration of the KITTI odometry benchmark (P2 and Tr).
    calib = kitti_seq00_calib()
    Kc, Tc = calib.camera(2)
    np.testing.assert_allclose(Kc @ Tc[:3], calib.P[2] @ calib.Tr, atol=1e-9)
    assert Kc[2].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(DataFormatError, match="P3"):
        calib.camera(3)


@pytest.mark.parametrize(
    "text, why",
    [
        ("P0: 1 2 3\nTr: " + " ".join(["0"] * 12), "12 values"),
        ("P0: " + " ".join(["x"] * 12) + "\nTr: " + " ".join(["0"] * 12), "corrupt"),
        ("P0: " + " ".join(["1"] * 12) + "\nQ9: " + " ".join(["0"] * 12), "unknown key"),
        ("P0: " + " ".join(["1"] * 12) + "\n", "needs P0..P3 and Tr"),
    ],
)
def test_corrupt_calib_names_the_file(tmp_path, text, why):
    path = tmp_path / "calib.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=why) as err:
        read_calib(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------- poses


def test_poses_round_trip(tmp_path):
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[1, :3, 3] = [1.0, 2.0, 3.0]
    c, s = np.cos(0.3), np.sin(0.3)
    poses[2, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    poses[2, :3, 3] = [-4.5, 0.1, 12.25]
    path = tmp_path / "poses.txt"
    write_poses(path, poses)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 12 for line in lines)
    assert [float(v) for v in lines[1].split()] == [1, 0, 0, 1, 0, 1, 0, 2, 0, 0, 1, 3]
    back = read_poses(path)
    assert back.shape == (3, 4, 4)
    np.testing.assert_allclose(back, poses, atol=1e-8)


def test_corrupt_poses_name_the_file(tmp_path):
    path = tmp_path / "poses.txt"
    path.write_text("1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(DataFormatError, match="poses.txt.*12 values"):
        read_poses(path)
    path.write_text("1 0 0 0 0 1 zero 0 0 0 1 0\n")
    with pytest.raises(DataFormatError, match="poses.txt"):
        read_poses(path)


# ------------------------------------------------------------------------------------------- images


def test_image_round_trip_is_rgb(tmp_path):
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    img[0, 0] = [255, 0, 0]  # pure red at the top-left
    img[3, 4] = [0, 0, 255]  # pure blue at the bottom-right
    img[1:3, 1:4] = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13
    path = tmp_path / "000000.png"
    write_image(path, img)
    back = read_image(path)
    assert back.dtype == np.uint8 and back.shape == (4, 5, 3)
    assert np.array_equal(back, img)
    assert back[0, 0].tolist() == [255, 0, 0]


def test_corrupt_or_missing_image_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(DataFormatError, match="broken.png"):
        read_image(path)
    with pytest.raises(DataFormatError, match="absent.png"):
        read_image(tmp_path / "absent.png")


# ------------------------------------------------------------------------------------------- layout


def test_tiny_sequence_layout_reads_back(tmp_path):
    seq = write_tiny_sequence(tmp_path, "04", n_frames=3, n_points=7)
    assert sequence_dir(tmp_path, 4) == tmp_path / "sequences" / "04"
    assert sequence_dir(tmp_path / "sequences", "4") == seq.seq_dir
    assert frame_ids(seq.seq_dir) == ["000000", "000001", "000002"]
    for i, fid in enumerate(frame_ids(seq.seq_dir)):
        pts = read_points(seq.seq_dir / "velodyne" / f"{fid}.bin")
        assert np.array_equal(pts, seq.points[i])
        sem, inst = read_labels(seq.seq_dir / "labels" / f"{fid}.label", num_points=len(pts))
        assert np.array_equal(sem, seq.raw_semantic[i]) and np.array_equal(inst, seq.instance[i])
        for cam in (2, 3):
            img = read_image(seq.seq_dir / IMAGE_DIRS[cam] / f"{fid}.png")
            assert img.shape == (*HW, 3) and np.array_equal(img, seq.images[cam][i])
    np.testing.assert_allclose(read_poses(seq.seq_dir / "poses.txt"), seq.poses, atol=1e-8)
    with pytest.raises(DataFormatError, match="velodyne"):
        frame_ids(tmp_path / "sequences" / "05")


def test_official_splits():
    assert SPLITS["val"] == ("08",)
    assert SPLITS["train"] == ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
    assert SPLITS["test"][0] == "11" and SPLITS["test"][-1] == "21" and len(SPLITS["test"]) == 11
    all_ids = [s for split in SPLITS.values() for s in split]
    assert len(all_ids) == len(set(all_ids)) == 22


# ------------------------------------------------------------------------------------------- class map


def test_class_map_round_trip():
    learning = np.arange(NUM_CLASSES)
    assert np.array_equal(to_learning(to_raw(learning)), learning)
    raw = np.array(sorted(LEARNING_MAP_INV.values()))
    assert np.array_equal(to_raw(to_learning(raw)), raw)
    # moving classes fold into their static class, outliers and unmapped ids into 0
    moving = np.array([252, 253, 254, 255, 256, 257, 258, 259])
    assert to_learning(moving).tolist() == [1, 7, 6, 8, 5, 5, 4, 5]
    assert to_learning(np.array([0, 1, 52, 99, 12345])).tolist() == [0, 0, 0, 0, 0]
    assert all(to_learning(np.array([k]))[0] == v for k, v in LEARNING_MAP.items())


def test_class_map_rejects_out_of_range():
    with pytest.raises(ValueError, match="instance bits"):
        to_learning(np.array([(3 << 16) | 10]))
    with pytest.raises(ValueError, match="learning ids"):
        to_raw(np.array([NUM_CLASSES]))
