"""segment_node parameters: declared with descriptions and ranges, defaults in config/segment.yaml, and
every kind of wrong parameter refused at start with one message naming it and a non-zero exit.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from node_fixtures import SEGMENT_NODE, tiny_checkpoint

from xkd_core.config import ConfigError
from xkd_ros.node_process import write_overrides
from xkd_ros.segment_params import (
    SegmentNodeConfig,
    config_from_values,
    lidar_to_camera,
    param_specs,
    resolve_checkpoint,
)
from xkd_ros.transform import rotation_to_quat_xyzw

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "segment.yaml"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ----------------------------------------------------------------------------- in-process


def test_every_parameter_is_described_and_numbers_have_ranges() -> None:
    specs = param_specs()
    assert len({s.name for s in specs}) == len(specs) > 30
    for s in specs:
        assert len(s.description) > 10, s.name
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool):
            assert s.range is not None and s.range[0] <= s.default <= s.range[1], s.name
    changeable = {s.name for s in specs if not s.read_only}
    assert changeable == {"max_range", "publish_overlay", "overlay_every_n"}


def test_config_yaml_holds_every_parameter_with_the_code_defaults() -> None:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/segment_node"] and list(data["/segment_node"]) == ["ros__parameters"]
    in_yaml = flatten(data["/segment_node"]["ros__parameters"])
    assert in_yaml == {s.name: s.default for s in param_specs()}
    # and every key carries a comment (on its line or in the block above it)
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().endswith(":") or not line.strip() or line.lstrip().startswith(("#", "0.0", "1.0")):
            continue
        assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"uncommented: {line!r}"


def test_declared_on_a_real_node_with_overrides() -> None:
    import rclpy
    from rcl_interfaces.msg import ParameterType
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from xkd_ros.segment_params import declare_parameters

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node("segment_node", context=context, parameter_overrides=[
            Parameter("sync_slop", value=0.2), Parameter("topics.cloud_in", value="/my/points"),
            Parameter("qos.input.reliability", value="reliable"),
            Parameter("extrinsics.lidar_to_camera", value=[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0])])
        cfg = declare_parameters(node)
        assert cfg.sync_slop == 0.2 and cfg.topics.cloud_in == "/my/points"
        assert cfg.qos.input.reliability == "reliable" and cfg.qos.output.reliability == "reliable"
        assert cfg.extrinsics.lidar_to_camera == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
        d = node.describe_parameter("sync_slop")
        assert d.read_only and d.type == ParameterType.PARAMETER_DOUBLE and "image stamp" in d.description
        assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 1.0)
        d = node.describe_parameter("sync_queue")
        assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 100)
        assert "nearest" in node.describe_parameter("sync_policy").additional_constraints
        assert not node.describe_parameter("max_range").read_only
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_cross_field_rules_name_the_parameters() -> None:
    values = {s.name: s.default for s in param_specs()}
    with pytest.raises(ConfigError, match="max_image_age .* sync_slop"):
        config_from_values({**values, "sync_slop": 0.6, "max_image_age": 0.5})
    with pytest.raises(ConfigError, match="'device'|device: 'tpu'"):
        config_from_values({**values, "device": "tpu"})
    assert isinstance(config_from_values(values), SegmentNodeConfig)


def test_extrinsics_as_matrix_or_translation_and_quaternion() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    T7 = lidar_to_camera([1.0, -2.0, 0.5, *q])
    R = T7[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(T7[:3, 3], [1.0, -2.0, 0.5])
    np.testing.assert_allclose(np.abs(rotation_to_quat_xyzw(R)), np.abs(q), atol=1e-12)
    np.testing.assert_array_equal(lidar_to_camera(T7.reshape(-1).tolist()), T7)
    for bad, why in (([1.0] * 5, "expected 16 floats .* or 7"), ([0.0] * 16, "not a rigid transform"),
                     ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "not a rigid transform"),
                     ([float("nan")] * 7, "every value must be finite")):
        with pytest.raises(ValueError, match=f"extrinsics.lidar_to_camera: {why}"):
            lidar_to_camera(bad)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"'checkpoint': file not found: {tmp_path}/nope.pt"):
        resolve_checkpoint(str(tmp_path / "nope.pt"))
    real = tmp_path / "real.pt"
    real.write_bytes(b"x")
    assert resolve_checkpoint(str(real)) == real


# ----------------------------------------------------------------------------- the console script


def run_node(tmp_path: Path, params: dict, *extra: str) -> subprocess.CompletedProcess:
    path = write_overrides(tmp_path / "params.yaml", params)
    return subprocess.run([SEGMENT_NODE, "--ros-args", "--params-file", str(path), *extra],
                          capture_output=True, text=True, timeout=120)


def refused(result: subprocess.CompletedProcess) -> str:
    """The one 'refusing to start' line; also checks the exit code and that nothing else went wrong."""
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.ros
def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu", "sync_slopp": 0.1}))
    assert "unknown parameter(s) ['sync_slopp']" in line and "did you mean 'sync_slop'" in line


@pytest.mark.ros
def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu"}, "-p", "sync_slop:=5.0"))
    assert "'sync_slop'" in line and "out of range [0.0, 1.0]" in line
    line = refused(run_node(tmp_path, {"qos": {"input": {"depth": 0}}}))
    assert "'qos.input.depth'" in line and "out of range" in line


@pytest.mark.ros
def test_wrong_type_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"sync_queue": "ten"}))
    assert "'sync_queue' has the wrong type: expected INTEGER, got STRING" in line
    line = refused(run_node(tmp_path, {"max_image_age": 1}))
    assert "'max_image_age'" in line and "1.0, not 1" in line


@pytest.mark.ros
def test_bad_choice_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"sync_policy": "exact"}))
    assert "sync_policy" in line and "'exact' is not one of ['nearest', 'approximate']" in line


@pytest.mark.ros
def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu", "checkpoint": str(tmp_path / "missing.pt")}))
    assert f"parameter 'checkpoint': file not found: {tmp_path}/missing.pt" in line


@pytest.mark.ros
def test_shipped_config_starts_and_stops_cleanly(tmp_path: Path) -> None:
    """config/segment.yaml as shipped goes through rcl's YAML parser and every check of the node."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SEGMENT_NODE, "--ros-args", "--params-file", str(CONFIG), "-p",
                                 f"checkpoint:={ckpt}", "-p", "device:=cpu", "-p", "cpu_threads:=1"],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "segmenting /velodyne_points" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()
            assert "with camera /camera/image_2/image_raw (nearest)" in log.read_text()
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(60)
    assert rc == 0, log.read_text()

