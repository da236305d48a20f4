"""Intensity from any driver brought to the model's convention (`xkd_ros.intensity`), the checkpoint's
input convention, and the end-to-end check that matters: every driver layout of one scene gets the
labels of the 0..1 reference with the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from driver_clouds import LAYOUTS, driver_cloud, reference_scene
from model_fixtures import flat_layout_checkpoint, tiny_config

from xkd_core.inference import Segmenter
from xkd_core.models.checkpoint import (
    LEGACY_INPUT_CONVENTION,
    CheckpointError,
    InputConvention,
    export_checkpoint,
    input_convention_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from xkd_core.models.xmodel_kd import XModelKD
from xkd_core.training.config import DataConfig
from xkd_core.training.trainer import input_convention
from xkd_ros import pointcloud as pc
from xkd_ros.intensity import (
    EVENT_DECIDED,
    EVENT_FIELD_MISSING,
    EVENT_KEYS,
    EVENT_LOCKED,
    EVENT_MISMATCH,
    EVENT_REVISED,
    IntensityNormalizer,
    classify,
    parse_intensity_scale,
)
from xkd_ros.segment_params import SHIPPED_CHECKPOINT

MIN_AGREEMENT = 0.95


def keys(events) -> list[str]:
    return [e.key for e in events]


def frame(values, datatype: int = pc.FLOAT32) -> tuple[np.ndarray, int]:
    """(N, 4) float32 points whose 4th column holds `values` (raw, as decoded)."""
    values = np.asarray(values, dtype=np.float64)
    pts = np.zeros((len(values), 4), dtype=np.float32)
    pts[:, 0] = np.arange(len(values))
    pts[:, 3] = values
    return pts, datatype


def reflectance(n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.02, 0.9, n)


# ---------------------------------------------------------------------------------------------------
# Decisions on the driver layouts


@pytest.mark.parametrize(("layout", "field", "scale", "factor"), [
    ("reference", "intensity", "unit", 1.0),
    ("velodyne", "intensity", "8bit", 1 / 255),
    ("livox", "intensity", "8bit", 1 / 255),
    ("hesai", "intensity", "8bit", 1 / 255),
    ("ouster", "reflectivity", "8bit", 1 / 255),  # uint16 holding values <= 255
    ("ouster", "intensity", "16bit", 1 / 65535),  # signal photons
    ("counts16", "intensity", "16bit", 1 / 65535),
])
def test_auto_scale_of_each_driver_layout(layout, field, scale, factor):
    scene = reference_scene()
    cloud = driver_cloud(layout)
    norm = IntensityNormalizer(field)
    points, events = norm.normalize_cloud(cloud.rosbags())
    d = norm.decision
    assert (d.field, d.scale, d.frames_seen, d.locked) == (field, scale, 1, False)
    assert d.factor == pytest.approx(factor)
    assert keys(events) == [EVENT_DECIDED] and events[0].message == d.text
    assert set(d.diagnostics()) >= {"intensity.field", "intensity.scale", "intensity.factor",
                                    "intensity.decision"}
    np.testing.assert_array_equal(points[:, :3], scene.xyz)
    if layout == "ouster" and field == "intensity":
        # range-dependent photons: the text tells the user which field to use
        assert "set intensity.field: reflectivity" in d.text
    else:
        assert "set intensity.field" not in d.text
        # quantised reflectance (round(r * 255) / 255) within half a step
        np.testing.assert_allclose(points[:, 3], scene.reflectance, atol=0.5 / 255 + 1e-6)


def test_big_endian_organised_padded_clouds_decode_like_the_plain_one():
    scene = reference_scene()
    for layout, field in (("velodyne", "intensity"), ("ouster", "reflectivity"), ("counts16", "intensity")):
        plain, _ = IntensityNormalizer(field).normalize_cloud(driver_cloud(layout).rosbags())
        cloud = driver_cloud(layout, organised=True, row_pad=10, big_endian=True)
        msg = cloud.rosbags()
        assert msg.is_bigendian and msg.height == scene.beams and msg.row_step > msg.width * msg.point_step
        norm = IntensityNormalizer(field)
        points, _ = norm.normalize_cloud(msg)
        assert norm.decision.scale == ("16bit" if layout == "counts16" else "8bit")
        assert points.shape == (scene.beams * scene.columns, 4)
        ok = cloud.index >= 0
        np.testing.assert_array_equal(points[ok], plain[cloud.index[ok]])
        assert not points[~ok].any()  # cells without a return: the driver's zeros, intensity 0


def test_decode_reads_the_chosen_field_raw():
    cloud = driver_cloud("ouster", organised=True, row_pad=6)
    msg = cloud.rosbags()
    ok = cloud.index >= 0
    flat = cloud.points.reshape(-1)
    refl = pc.cloud_to_xyzi(msg, intensity_field="reflectivity")
    np.testing.assert_array_equal(refl[:, 3], flat["reflectivity"])
    assert refl[ok, 3].max() > 200  # raw 0..255, no scaling here
    signal = pc.cloud_to_xyzi(msg)  # the default is unchanged: 'intensity'
    np.testing.assert_array_equal(signal[:, 3], flat["intensity"])
    none = pc.cloud_to_xyzi(msg, intensity_field=None)
    assert not none[:, 3].any()
    np.testing.assert_array_equal(none[:, :3], signal[:, :3])
    absent = pc.cloud_to_xyzi(msg, intensity_field="nonexistent")
    np.testing.assert_array_equal(absent, none)
    assert pc.field_datatype(msg, "reflectivity") == pc.UINT16 and pc.field_datatype(msg, "signal") is None
    with pytest.raises(ValueError, match="coordinate"):
        pc.cloud_to_xyzi(msg, intensity_field="z")


def test_rclpy_messages_decode_like_rosbags_ones():
    std_msgs = pytest.importorskip("std_msgs.msg")
    cloud = driver_cloud("livox", organised=True, row_pad=4, big_endian=True)
    a, _ = IntensityNormalizer().normalize_cloud(cloud.rosbags())
    b, _ = IntensityNormalizer().normalize_cloud(cloud.rclpy(std_msgs.Header(frame_id="lidar")))
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------
# The auto rule


def test_outliers_above_one_do_not_make_a_unit_cloud_8bit():
    r = reflectance(5000)
    for outliers in ([1.02], [1.3] * 20, [255.0] * 40):  # one slightly above, several, 0.8 % huge
        values = np.concatenate([r, outliers])
        norm = IntensityNormalizer()
        pts, dt = frame(values)
        norm.normalize(pts, dt)
        assert norm.decision.scale == "unit", outliers
        np.testing.assert_allclose(pts[: len(r), 3], r, rtol=1e-6)
        assert pts[len(r):, 3].max() == 1.0  # clipped to the model's range
    assert classify(float(np.max(np.concatenate([r, [1.02]]))), pc.FLOAT32) == "unit"
    assert classify(300.0, pc.FLOAT32) == "16bit"  # what the maximum of the 0.8 % case would have said


def test_datatype_rules():
    assert classify(0.5, pc.UINT8) == "8bit" and classify(0.5, pc.UINT16) == "8bit"
    assert classify(255.0, pc.UINT16) == "8bit" and classify(300.0, pc.UINT16) == "16bit"
    assert classify(200.0, pc.UINT8) == "8bit"
    assert classify(0.9, pc.FLOAT64) == "unit" and classify(1000.0, pc.FLOAT32) == "16bit"
    # a uint8 field holding small values is still 8-bit data
    norm = IntensityNormalizer()
    pts, _ = frame(np.random.default_rng(1).integers(1, 3, 500))
    norm.normalize(pts, pc.UINT8)
    assert norm.decision.scale == "8bit" and pts[:, 3].max() == pytest.approx(2 / 255)


def test_revision_upward_within_the_window_then_locked():
    r = reflectance()
    norm = IntensityNormalizer(auto_frames=4)
    ev1 = norm.normalize(*frame(r))  # looks like 0..1
    assert keys(ev1) == [EVENT_DECIDED] and norm.decision.scale == "unit"
    pts, dt = frame(np.rint(r * 255))
    ev2 = norm.normalize(pts, dt)  # needs 0..255: revised, and this frame already uses it
    assert keys(ev2) == [EVENT_REVISED] and ev2[0].level == "warn" and "unit -> 8bit" in ev2[0].message
    np.testing.assert_allclose(pts[:, 3], r, atol=0.5 / 255 + 1e-6)
    assert norm.normalize(*frame(r)) == []  # never revised downward
    assert norm.decision.scale == "8bit" and not norm.decision.locked
    ev4 = norm.normalize(*frame(np.rint(r * 255)))
    assert keys(ev4) == [EVENT_LOCKED] and norm.decision.locked and norm.decision.frames_seen == 4
    assert "revised from unit" in norm.decision.text and "locked after 4 frames" in norm.decision.text
    pts, dt = frame(np.rint(r * 65535))
    assert norm.normalize(pts, dt) == []  # locked: no more revisions
    assert norm.decision.scale == "8bit" and pts[:, 3].max() == 1.0


def test_frames_without_evidence_do_not_decide():
    norm = IntensityNormalizer(auto_frames=2)
    assert norm.decision.scale == "pending"
    pts, dt = frame(np.concatenate([np.zeros(5000), np.full(10, 200.0)]))  # 10 positive values
    assert norm.normalize(pts, dt) == []
    d = norm.decision
    assert (d.scale, d.frames_seen) == ("unit", 0) and "datatype's default" in d.text
    assert keys(norm.normalize(*frame(np.rint(reflectance() * 255)))) == [EVENT_DECIDED]
    assert norm.decision.scale == "8bit"


def test_explicit_factor_mismatch_is_reported_not_fixed():
    r = reflectance()
    norm = IntensityNormalizer(scale="1/255", auto_frames=3)
    pts, dt = frame(r)  # 0..1 data with a 0..255 factor
    events = norm.normalize(pts, dt)
    assert keys(events) == [EVENT_MISMATCH] and events[0].level == "warn"
    d = norm.decision
    assert (d.scale, d.locked) == ("explicit", True) and d.factor == pytest.approx(1 / 255)
    assert "MISMATCH" in d.text and "0..1 (unit" in d.text
    np.testing.assert_allclose(pts[:, 3], r / 255, rtol=1e-6)  # applied as configured
    assert norm.normalize(*frame(r)) == []  # reported once
    ok = IntensityNormalizer(scale=1 / 255)
    assert ok.normalize(*frame(np.rint(r * 255))) == [] and "MISMATCH" not in ok.decision.text
    too_big = IntensityNormalizer(scale=1.0)
    assert keys(too_big.normalize(*frame(np.rint(r * 255)))) == [EVENT_MISMATCH]


def test_missing_field_gets_the_fill_value_and_an_event():
    conv = InputConvention(intensity_fill=0.2, source="test")
    cloud = driver_cloud("velodyne")
    norm = IntensityNormalizer("reflectivity", convention=conv)
    for _ in range(2):  # every frame is counted, none fails
        points, events = norm.normalize_cloud(cloud.rosbags())
        assert keys(events) == [EVENT_FIELD_MISSING]
        assert "set intensity.field: intensity or none" in events[0].message
        assert np.all(points[:, 3] == np.float32(0.2)) and points.shape == (len(cloud.index), 4)
    assert norm.decision.scale == "pending"
    none = IntensityNormalizer("none", convention=conv)
    points, events = none.normalize_cloud(cloud.rosbags())
    assert events == [] and np.all(points[:, 3] == np.float32(0.2))
    assert (none.decision.scale, none.decision.locked) == ("none", True)


def test_convention_range_nan_and_negative_values():
    conv = InputConvention(intensity_max=255.0, intensity_fill=30.0, source="a 0..255 model")
    values = np.concatenate([reflectance(), [np.nan, -0.5, 7.0]])
    pts, dt = frame(values)
    IntensityNormalizer(convention=conv).normalize(pts, dt)
    np.testing.assert_allclose(pts[:-3, 3], values[:-3] * 255.0, rtol=1e-5)
    assert pts[-3:, 3].tolist() == [30.0, 0.0, 255.0]


def test_parameters_are_checked():
    assert parse_intensity_scale("auto") is None and parse_intensity_scale(" AUTO ") is None
    assert parse_intensity_scale("1/255") == pytest.approx(1 / 255)
    assert parse_intensity_scale(0.5) == 0.5 and parse_intensity_scale("0.01") == 0.01
    for bad in (0, -1.0, "0", "abc", float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match="intensity.scale"):
            parse_intensity_scale(bad)
    with pytest.raises(ValueError, match="intensity.field"):
        IntensityNormalizer("signal")
    with pytest.raises(ValueError, match="auto_frames"):
        IntensityNormalizer(auto_frames=0)
    assert EVENT_REVISED == "intensity.scale_revised" and len(set(EVENT_KEYS)) == 5


# ---------------------------------------------------------------------------------------------------
# The checkpoint's input convention


def test_old_checkpoints_read_the_legacy_convention(tmp_path):
    old = flat_layout_checkpoint(tmp_path / "old.pt")  # written before the convention was recorded
    assert input_convention_from_checkpoint(load_checkpoint(old)) == LEGACY_INPUT_CONVENTION
    shipped = input_convention_from_checkpoint(load_checkpoint(SHIPPED_CHECKPOINT))
    assert shipped != LEGACY_INPUT_CONVENTION and shipped.intensity_max == 1.0  # recorded by its trainer
    assert (LEGACY_INPUT_CONVENTION.intensity_max, LEGACY_INPUT_CONVENTION.intensity_fill) == (1.0, 0.0)


def test_checkpoint_round_trips_the_convention(tmp_path):
    cfg = tiny_config(use_camera=False)
    model = XModelKD(cfg)
    default = save_checkpoint(tmp_path / "default.pt", model, cfg)
    assert input_convention_from_checkpoint(load_checkpoint(default)) == InputConvention()
    conv = InputConvention(intensity_max=255.0, intensity_fill=12.5, source="a 0..255 data set")
    path = save_checkpoint(tmp_path / "conv.pt", model, cfg, input_convention=conv)
    assert Segmenter.from_checkpoint(path).input_convention == conv
    exported = export_checkpoint(path, tmp_path / "export.pt")
    assert input_convention_from_checkpoint(load_checkpoint(exported)) == conv
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["input_convention"]["intensity_fill"] = 300.0  # above intensity_max
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt.*input convention"):
        Segmenter.from_checkpoint(tmp_path / "bad.pt")


def test_trainer_records_the_training_data_convention():
    for source in ("semantickitti", "pairlog"):
        conv = input_convention(DataConfig(root="data", source=source))
        assert (conv.intensity_max, conv.intensity_fill) == (1.0, 0.0) and source in conv.source


# ---------------------------------------------------------------------------------------------------
# End to end with the shipped model


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_checkpoint(SHIPPED_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def reference_labels(segmenter) -> np.ndarray:
    return segmenter.segment(reference_scene().xyzi).labels


def agreement(segmenter: Segmenter, cloud, points: np.ndarray, reference_labels: np.ndarray) -> float:
    """Share of the reference points whose label from `points` equals the reference's."""
    labels = segmenter.segment(points).labels
    ok = cloud.index >= 0
    return float(np.mean(labels[ok] == reference_labels[cloud.index[ok]]))


@pytest.mark.parametrize(("layout", "field", "options"), [
    ("velodyne", "intensity", {}),
    ("livox", "intensity", {}),
    ("hesai", "intensity", {}),
    ("counts16", "intensity", {}),
    ("ouster", "reflectivity", {}),
    ("ouster", "reflectivity", {"organised": True, "row_pad": 16}),
    ("velodyne", "intensity", {"big_endian": True}),
    ("reference", "intensity", {"organised": True, "row_pad": 4}),
])
def test_every_driver_layout_gets_the_reference_labels(segmenter, reference_labels, layout, field, options):
    assert segmenter.input_convention.intensity_max == 1.0  # a 0..1 model: every layout must be rescaled
    cloud = driver_cloud(layout, **options)
    norm = IntensityNormalizer(field, "auto", convention=segmenter.input_convention)
    points, _ = norm.normalize_cloud(cloud.rosbags())
    assert agreement(segmenter, cloud, points, reference_labels) >= MIN_AGREEMENT, norm.decision.text


def test_without_normalisation_a_velodyne_cloud_gets_other_labels(segmenter, reference_labels):
    """The bug this module fixes: 0..255 fed raw to a model trained on 0..1."""
    cloud = driver_cloud("velodyne")
    raw = pc.cloud_to_xyzi(cloud.rosbags())
    assert agreement(segmenter, cloud, raw, reference_labels) < 0.5


def test_layouts_cover_the_drivers():
    assert set(LAYOUTS) == {"reference", "velodyne", "ouster", "livox", "hesai", "counts16"}
    steps = {name: driver_cloud(name).point_step for name in LAYOUTS}
    assert steps == {"reference": 16, "velodyne": 22, "ouster": 48, "livox": 26, "hesai": 26, "counts16": 16}
