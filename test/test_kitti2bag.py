"""xkd-kitti2bag and the bag reader: a tiny KITTI sequence goes into mcap / sqlite3 and comes out bit for bit.

(The surround rig, compressed images and bags recorded by others: test_bag_cameras.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from kitti_fixtures import tiny_calib, write_tiny_sequence
from rosbags.rosbag2 import Reader

from xkd_core.classes import to_learning
from xkd_core.data.semantickitti import DataFormatError, read_calib, write_calib
from xkd_ros import bag_io
from xkd_ros.kitti2bag import DEFAULT_T0_S, convert_sequence, main
from xkd_ros.pointcloud import cloud_field, cloud_to_xyzi
from xkd_ros.transform import transform_msg_to_matrix


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@pytest.fixture
def sequence(tmp_path):
    """Three frames, cameras 2 and 3, labels, and a LiDAR -> camera rotation that is not axis-aligned."""
    seq = write_tiny_sequence(tmp_path / "kitti", "08", n_frames=3, n_points=30)
    calib = tiny_calib()
    calib.Tr[:3, :3] = _rotation(np.array([0.3, -1.0, 0.2]), 0.37) @ calib.Tr[:3, :3]
    calib.Tr[:3, 3] = [0.27, -0.081, -1.3]
    write_calib(seq.seq_dir / "calib.txt", calib)
    seq.calib = read_calib(seq.seq_dir / "calib.txt")  # what goes in is what the text file holds
    return seq


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_is_bit_for_bit(sequence, tmp_path, storage):
    out = tmp_path / f"bag_{storage}"
    summary = convert_sequence(sequence.root, "08", out, storage=storage, rate=10.0, progress=False)
    # default: every view the sequence has (image_2 and image_3 here)
    assert summary.cameras == ["image_2", "image_3"]
    assert summary.frames == 3 and summary.messages == 1 + 3 * (2 + 2 * 2)

    frames = list(bag_io.read_bag_frames(out))

    assert [f.stamp_ns for f in frames] == [round(DEFAULT_T0_S * 1e9) + i * 100_000_000 for i in range(3)]
    for i, frame in enumerate(frames):
        assert frame.points.dtype == np.float32
        np.testing.assert_array_equal(frame.points.view(np.uint32), sequence.points[i].view(np.uint32))
        np.testing.assert_array_equal(frame.labels, to_learning(sequence.raw_semantic[i]))
        assert [v.name for v in frame.views] == ["image_2", "image_3"]
        for view, cam in zip(frame.views, (2, 3)):
            K, T = sequence.calib.camera(cam)
            np.testing.assert_array_equal(view.image, sequence.images[cam][i])
            np.testing.assert_array_equal(view.K, K)
            np.testing.assert_array_equal(view.T, T)


def test_bag_messages_and_metadata(sequence, tmp_path):
    out = tmp_path / "bag"
    convert_sequence(sequence.root, "08", out, storage="mcap", rate=10.0, cameras=(2,), progress=False)
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8  # QoS as a string with integer enums: Humble's ros2 bag can read it
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert set(topics) == {"/velodyne_points", "/xkd/ground_truth", "/camera/image_2/image_raw",
                           "/camera/image_2/camera_info", "/tf_static"}
    tf_qos = yaml.safe_load(topics["/tf_static"]["topic_metadata"]["offered_qos_profiles"])[0]
    assert (tf_qos["durability"], tf_qos["reliability"], tf_qos["depth"]) == (1, 1, 1)  # transient local
    scan_qos = yaml.safe_load(topics["/velodyne_points"]["topic_metadata"]["offered_qos_profiles"])[0]
    assert scan_qos["durability"] == 2  # volatile
    assert topics["/camera/image_2/image_raw"]["message_count"] == 3

    K, T = sequence.calib.camera(2)
    with Reader(out) as reader:
        seen = {}
        for conn, stamp, raw in reader.messages():
            msg = bag_io.TYPESTORE.deserialize_cdr(raw, conn.msgtype)
            seen.setdefault(conn.topic, []).append((stamp, msg))
    tf_stamp, tf_msg = seen["/tf_static"][0]
    (tf,) = tf_msg.transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("velodyne", "image_2")  # frame id = view name
    np.testing.assert_allclose(np.linalg.inv(transform_msg_to_matrix(tf.transform)), T, atol=1e-12)
    stamp, scan = seen["/velodyne_points"][1]
    assert scan.header.frame_id == "velodyne" and bag_io.header_ns(scan.header) == stamp
    assert [(f.name, f.offset, f.datatype) for f in scan.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7)]
    np.testing.assert_array_equal(cloud_to_xyzi(scan), sequence.points[1])
    _, gt = seen["/xkd/ground_truth"][1]
    assert bag_io.header_ns(gt.header) == stamp
    assert [(f.name, f.datatype) for f in gt.fields] == [("x", 7), ("y", 7), ("z", 7), ("label", 4)]
    np.testing.assert_array_equal(cloud_field(gt, "label"), to_learning(sequence.raw_semantic[1]))
    _, image = seen["/camera/image_2/image_raw"][1]
    assert (image.encoding, image.header.frame_id, image.height, image.width) == ("rgb8", "image_2", 24, 32)
    _, info = seen["/camera/image_2/camera_info"][1]
    np.testing.assert_array_equal(info.k.reshape(3, 3), K)
    # each view is its own camera: P = [K | 0] (its position is in /tf_static), D = 0, R = I
    np.testing.assert_array_equal(info.p.reshape(3, 4), np.c_[K, np.zeros(3)])
    assert info.header.frame_id == "image_2" and not np.any(info.d)
    assert meta["custom_data"] == {"xkd.lidar_to_camera.image_2": bag_io.format_matrix(T)}
    assert bag_io.header_ns(image.header) == bag_io.header_ns(info.header) == stamp


def test_cli_options(sequence, tmp_path, capsys):
    out = tmp_path / "bag"
    rc = main(["--data", str(sequence.root), "--sequence", "8", "--out", str(out), "--format", "sqlite3",
               "--rate", "5", "--cameras", "3", "--max-frames", "2", "--t0", "12.5", "--no-progress"])
    assert rc == 0 and "2 frames" in capsys.readouterr().out
    assert (out / "bag.db3").is_file()
    frames = list(bag_io.read_bag_frames(out))
    assert [f.stamp_ns for f in frames] == [12_500_000_000, 12_700_000_000]
    assert [v.name for f in frames for v in f.views] == ["image_3", "image_3"]


def test_lidar_only_sequence_without_labels(tmp_path):
    seq = write_tiny_sequence(tmp_path / "kitti", "11", n_frames=2, with_labels=False, cameras=())
    out = tmp_path / "bag"
    summary = convert_sequence(seq.root, "11", out, cameras=(), progress=False)
    assert summary.topics == ["/velodyne_points"]
    frames = list(bag_io.read_bag_frames(out))
    assert len(frames) == 2 and all(f.labels is None and f.views == [] for f in frames)
    np.testing.assert_array_equal(frames[1].points, seq.points[1])


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda d: (d / "velodyne" / "000001.bin").write_bytes(b"\0" * 30), "velodyne/000001.bin"),
        (lambda d: (d / "labels" / "000002.label").unlink(), "labels/000002.label"),
        (lambda d: (d / "labels" / "000000.label").write_bytes(b"\0" * 8), "labels/000000.label"),
        (lambda d: (d / "image_3" / "000001.png").write_bytes(b"not a png"), "image_3/000001.png"),
        (lambda d: (d / "image_2" / "000000.png").unlink(), "image_2/000000.png"),
        (lambda d: (d / "calib.txt").write_text("P2: 1 2 3\n"), "calib.txt"),
    ],
)
def test_corrupt_input_names_the_file_and_leaves_no_bag(sequence, tmp_path, damage, words):
    damage(sequence.seq_dir)
    out = tmp_path / "bag"
    with pytest.raises(DataFormatError, match=words):
        convert_sequence(sequence.root, "08", out, progress=False)
    assert not out.exists()


def test_cli_reports_errors(sequence, tmp_path, capsys):
    out = tmp_path / "bag"
    assert main(["--data", str(sequence.root), "--sequence", "05", "--out", str(out)]) == 2
    assert "sequences/05" in capsys.readouterr().err
    out.mkdir()
    assert main(["--data", str(sequence.root), "--sequence", "08", "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["--data", str(sequence.root), "--sequence", "08", "--out", str(tmp_path / "b2"),
                 "--rate", "0"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["--data", str(sequence.root), "--sequence", "08", "--out", str(tmp_path / "b3"),
                 "--cameras", "1"]) == 2
    assert "--cameras" in capsys.readouterr().err


def test_reader_refuses_what_it_cannot_use(sequence, tmp_path):
    with pytest.raises(bag_io.BagFormatError, match="not found"):
        list(bag_io.read_bag_frames(tmp_path / "nope"))
    out = tmp_path / "bag"
    convert_sequence(sequence.root, "08", out, cameras=(2,), progress=False)
    with pytest.raises(bag_io.BagFormatError, match=r"no camera \['image_3'\].*found: \['image_2'\]"):
        list(bag_io.read_bag_frames(out, cameras=(3,)))
    with pytest.raises(bag_io.BagFormatError, match="/points is absent"):
        list(bag_io.read_bag_frames(out, cloud_topic="/points"))
    with pytest.raises(bag_io.BagFormatError, match="ground-truth topic /labels is absent"):
        bag_io.inspect_bag(out, gt_topic="/labels", require_gt=True)


def test_exact_extrinsics_copy_is_used_only_when_it_agrees(sequence, tmp_path):
    out = tmp_path / "bag"
    convert_sequence(sequence.root, "08", out, cameras=(2,), progress=False)
    K, T = sequence.calib.camera(2)
    (cam,) = bag_io.inspect_bag(out).cameras
    assert cam.extrinsics == "custom_data"
    np.testing.assert_array_equal(cam.T, T)  # bit for bit, which a quaternion could not carry
    # an exact copy that disagrees with /tf_static is not silently preferred: /tf_static wins, and it is said
    meta_path = out / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    key = bag_io.extrinsics_key("image_2")
    edited = bag_io.parse_matrix(meta["rosbag2_bagfile_information"]["custom_data"][key])
    edited[0, 3] += 0.01
    meta["rosbag2_bagfile_information"]["custom_data"][key] = bag_io.format_matrix(edited)
    meta_path.write_text(yaml.safe_dump(meta))
    layout = bag_io.inspect_bag(out)
    (cam,) = layout.cameras
    assert cam.extrinsics == "tf_static"
    np.testing.assert_allclose(cam.T, T, atol=1e-12)
    assert any("disagrees" in note and "image_2" in note for note in layout.notes)
    (frame, *_) = bag_io.read_bag_frames(out)
    np.testing.assert_allclose(frame.views[0].T, T, atol=1e-12)
