"""SemanticKittiDataset over hand-built tiny sequences: contents, selection and errors."""

from __future__ import annotations

import numpy as np
import pytest
from kitti_fixtures import HW, write_tiny_sequence
from torch.utils.data import DataLoader, Dataset

from xkd_core.classes import to_learning
from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.frame import Frame
from xkd_core.data.semantickitti import DataFormatError, write_calib, write_labels
from xkd_core.geometry.projection import point_pixel_pairs, views_of


@pytest.fixture()
def root(tmp_path):
    """Sequences 00 (3 frames), 08 (2 frames) and a synthetic-style 42 (1 frame), cameras 2 and 3."""
    seqs = {
        "00": write_tiny_sequence(tmp_path, "00", n_frames=3, n_points=20, seed=1),
        "08": write_tiny_sequence(tmp_path, "08", n_frames=2, n_points=30, seed=2),
        "42": write_tiny_sequence(tmp_path, "42", n_frames=1, n_points=25, seed=3),
    }
    return tmp_path, seqs


def test_items_hold_what_was_written(root):
    path, seqs = root
    ds = SemanticKittiDataset(path, sequences=["00", "08"], cameras=(2, 3))
    assert isinstance(ds, Dataset) and len(ds) == 5
    assert ds.frames() == [("00", "000000"), ("00", "000001"), ("00", "000002"),
                           ("08", "000000"), ("08", "000001")]
    for i, (seq, fid) in enumerate(ds.frames()):
        frame = ds[i]
        src = seqs[seq]
        j = src.frame_ids.index(fid)
        assert isinstance(frame, Frame) and (frame.sequence, frame.frame_id) == (seq, fid)
        assert frame.points.dtype == np.float32 and np.array_equal(frame.points, src.points[j])
        assert frame.labels.dtype == np.int64
        assert np.array_equal(frame.labels, to_learning(src.raw_semantic[j]))
        assert frame.instance.dtype == np.uint16 and np.array_equal(frame.instance, src.instance[j])
        assert [v.name for v in frame.views] == ["image_2", "image_3"]
        for view, cam in zip(frame.views, (2, 3)):
            assert view.image.shape == (*HW, 3) and np.array_equal(view.image, src.images[cam][j])
            np.testing.assert_allclose(view.K @ view.T[:3], src.calib.P[cam] @ src.calib.Tr, atol=1e-9)
    # labels really are learning ids: raw ids such as 252 (moving car) never appear
    labels = np.concatenate([ds[i].labels for i in range(len(ds))])
    assert labels.min() >= 0 and labels.max() <= 19 and 0 in labels and 1 in labels


def test_views_project_points(root):
    path, _ = root
    frame = SemanticKittiDataset(path, sequences=["08"])[1]
    assert len(frame.views) == 1 and frame.views[0].name == "image_2"
    pairs = point_pixel_pairs(frame.points, views_of(frame.views))
    assert 0 < len(pairs) < frame.num_points  # some points in front of the camera, some outside


def test_split_and_sequence_selection(root):
    path, _ = root
    val = SemanticKittiDataset(path, split="val")
    assert [s for s, _ in val.frames()] == ["08", "08"]
    # explicit sequences win over the split; ids other than the official ones work (synthetic data)
    assert SemanticKittiDataset(path, split="val", sequences=["42"]).frames() == [("42", "000000")]
    assert SemanticKittiDataset(path, split=None, sequences=[42, "0"]).frames()[0] == ("42", "000000")
    assert len(SemanticKittiDataset(path / "sequences", sequences=["00"])) == 3
    with pytest.raises(ValueError, match="unknown split 'training'"):
        SemanticKittiDataset(path, split="training")
    with pytest.raises(ValueError, match="split or a list of sequences"):
        SemanticKittiDataset(path, split=None)
    with pytest.raises(ValueError, match="list of ids"):
        SemanticKittiDataset(path, sequences="08")
    with pytest.raises(ValueError, match="camera"):
        SemanticKittiDataset(path, sequences=["08"], cameras=(2, 5))


def test_no_labels_no_cameras(tmp_path):
    write_tiny_sequence(tmp_path, "11", n_frames=2, cameras=(), with_labels=False)
    ds = SemanticKittiDataset(tmp_path, sequences=["11"], cameras=(), with_labels=False)
    frame = ds[-1]
    assert frame.frame_id == "000001" and frame.views == []
    assert frame.labels is None and frame.instance is None
    with pytest.raises(DataFormatError, match=r"labels/000000\.label"):
        SemanticKittiDataset(tmp_path, sequences=["11"], cameras=())


def test_indexing_and_loader(root):
    path, _ = root
    ds = SemanticKittiDataset(path, sequences=["00"])
    assert ds[-1].frame_id == ds[2].frame_id == "000002"
    with pytest.raises(IndexError):
        ds[3]
    frames = [f for batch in DataLoader(ds, batch_size=2, collate_fn=list) for f in batch]
    assert [f.frame_id for f in frames] == ["000000", "000001", "000002"]


def test_missing_sequence_folder(root):
    path, _ = root
    with pytest.raises(DataFormatError, match=r"missing sequence folder: .*sequences/03"):
        SemanticKittiDataset(path, sequences=["00", "03"])
    with pytest.raises(DataFormatError, match="sequences/01"):
        SemanticKittiDataset(path, split="train")  # the official train split needs 00-07, 09, 10


def test_missing_label_file(root):
    path, seqs = root
    (seqs["08"].seq_dir / "labels" / "000001.label").unlink()
    with pytest.raises(DataFormatError, match=r"sequences/08/labels/000001\.label"):
        SemanticKittiDataset(path, sequences=["08"])
    assert len(SemanticKittiDataset(path, sequences=["08"], with_labels=False)) == 2


def test_missing_image(root):
    path, seqs = root
    (seqs["00"].seq_dir / "image_3" / "000002.png").unlink()
    assert len(SemanticKittiDataset(path, sequences=["00"], cameras=(2,))) == 3
    with pytest.raises(DataFormatError, match=r"sequences/00/image_3/000002\.png"):
        SemanticKittiDataset(path, sequences=["00"], cameras=(2, 3))


def test_label_count_mismatch_names_the_file(root):
    path, seqs = root
    n = len(seqs["42"].points[0])
    write_labels(seqs["42"].seq_dir / "labels" / "000000.label", np.full(n - 1, 40))
    ds = SemanticKittiDataset(path, sequences=["42"])
    with pytest.raises(DataFormatError, match=rf"42/labels/000000\.label has {n - 1} labels .* {n} points"):
        ds[0]


def test_calibration_errors_name_calib_txt(root):
    path, seqs = root
    calib = seqs["08"].calib
    del calib.P[3]
    write_calib(seqs["08"].seq_dir / "calib.txt", calib)
    assert len(SemanticKittiDataset(path, sequences=["08"], cameras=(2,))) == 2
    with pytest.raises(DataFormatError, match=r"08/calib\.txt.*P3"):
        SemanticKittiDataset(path, sequences=["08"], cameras=(3,))
    (seqs["08"].seq_dir / "calib.txt").unlink()
    with pytest.raises(DataFormatError, match=r"08/calib\.txt"):
        SemanticKittiDataset(path, sequences=["08"])
