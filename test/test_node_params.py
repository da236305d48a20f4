"""segment_node parameters: declared with descriptions and ranges, config/segment.yaml and the README table
generated from them, per-camera groups, Humble's rclpy (no post-set callback), and every kind of wrong
parameter refused at start with one message naming it and a non-zero exit.
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

from xkd_core.config import ConfigError, flatten
from xkd_ros import param_docs
from xkd_ros.node_process import write_overrides
from xkd_ros.segment_node import EXIT_CONFIG
from xkd_ros.segment_params import (
    SegmentNodeConfig,
    config_from_values,
    lidar_to_camera,
    param_specs,
    params_file_values,
    resolve_checkpoint,
)
from xkd_ros.transform import rotation_to_quat_xyzw

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "segment.yaml"


def defaults() -> dict:
    return {s.name: s.default for s in param_specs()}


# ----------------------------------------------------------------------------- in-process


def test_every_parameter_is_described_and_numbers_have_ranges() -> None:
    specs = param_specs()
    assert len({s.name for s in specs}) == len(specs) > 40
    for s in specs:
        assert len(s.description) > 10, s.name
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool):
            assert s.range is not None and s.range[0] <= s.default <= s.range[1], s.name
    changeable = {s.name for s in specs if not s.read_only}
    assert changeable == {"min_range", "max_range", "publish_overlay", "overlay_every_n", "ego_crop.enabled",
                          "ego_crop.min", "ego_crop.max", "filter.publish", "filter.drop_classes",
                          "diagnostics.processing_time_warn_ms", "diagnostics.processing_time_error_s"}


def test_config_yaml_and_readme_table_are_generated_from_the_specs(capsys) -> None:
    assert param_docs.main(["--check"]) == 0, capsys.readouterr().err
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/segment_node"] and list(data["/segment_node"]) == ["ros__parameters"]
    in_yaml = flatten(data["/segment_node"]["ros__parameters"])
    assert in_yaml == {s.name: s.default for s in param_specs() if s.default is not None}
    unset = {s.name for s in param_specs() if s.default is None}
    assert unset == {"cameras.image_2.lidar_to_camera"}  # extrinsics from TF unless the user sets them
    # the check really compares: a stale default is found
    stale = param_docs.render_yaml().replace("slop: 0.05", "slop: 0.06")
    assert stale != param_docs.render_yaml()
    table = param_docs.render_table()
    for s in param_specs():
        assert f"| `{s.name}` |" in table


def test_camera_groups_follow_the_names() -> None:
    no_cameras = {k: v for k, v in defaults().items() if not k.startswith("cameras.")}
    cfg = config_from_values({**no_cameras, "cameras.names": ["front", "back"],
                              "cameras.back.transport": "compressed", "cameras.back.rectified": True,
                              "cameras.front.lidar_to_camera": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]})
    assert list(cfg.cameras) == ["front", "back"]
    assert cfg.cameras["front"].image_topic == "/camera/front/image_raw"
    assert cfg.cameras["back"].subscribed_topic == "/camera/back/image_raw/compressed"
    assert cfg.cameras["back"].lidar_to_camera is None and cfg.cameras["back"].rectified
    specs = {s.name for s in param_specs(cfg)}
    assert "cameras.back.transport" in specs and "cameras.image_2.transport" not in specs
    with pytest.raises(ConfigError, match="'image_2' is not in cameras.names"):
        config_from_values({**defaults(), "cameras.names": ["front"]})  # image_2's group left over
    with pytest.raises(ConfigError, match="not valid names"):
        config_from_values({"cameras.names": ["front camera"]})
    with pytest.raises(ConfigError, match="lists a camera twice"):
        config_from_values({"cameras.names": ["a", "a"]})
    with pytest.raises(ConfigError, match="use_camera is true but cameras.names is empty"):
        config_from_values({"cameras.names": [], "use_camera": True})


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
            Parameter("sync.slop", value=0.2), Parameter("topics.cloud_in", value="/my/points"),
            Parameter("qos.input.reliability", value="reliable"),
            Parameter("cameras.names", value=["front", "left"]),
            Parameter("cameras.left.transport", value="compressed"),
            Parameter("cameras.front.lidar_to_camera", value=[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0])])
        cfg = declare_parameters(node)
        assert cfg.sync.slop == 0.2 and cfg.topics.cloud_in == "/my/points"
        assert cfg.qos.input.reliability == "reliable" and cfg.qos.output.reliability == "reliable"
        assert cfg.cameras["front"].lidar_to_camera == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
        assert cfg.cameras["left"].lidar_to_camera is None  # declared by type, unset: TF
        assert cfg.cameras["left"].transport == "compressed"
        d = node.describe_parameter("sync.slop")
        assert d.read_only and d.type == ParameterType.PARAMETER_DOUBLE and "image stamp" in d.description
        assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 1.0)
        d = node.describe_parameter("sync.cache_size")
        assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 100)
        d = node.describe_parameter("cameras.left.lidar_to_camera")
        assert d.type == ParameterType.PARAMETER_DOUBLE_ARRAY and "TF" in d.description
        assert "compressed" in node.describe_parameter("cameras.left.transport").additional_constraints
        assert not node.describe_parameter("max_range").read_only
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_cross_field_rules_name_the_parameters() -> None:
    values = defaults()
    with pytest.raises(ConfigError, match="sync.max_image_age .* sync.slop"):
        config_from_values({**values, "sync.slop": 0.6, "sync.max_image_age": 0.5})
    with pytest.raises(ConfigError, match="'device'|device: 'tpu'"):
        config_from_values({**values, "device": "tpu"})
    with pytest.raises(ConfigError, match="unknown class name.*'roads'"):
        config_from_values({**values, "filter.drop_classes": ["roads"]})
    with pytest.raises(ConfigError, match="ego_crop.min .* below ego_crop.max"):
        config_from_values({**values, "ego_crop.min": [1.0, -1.0, -1.0], "ego_crop.max": [0.0, 1.0, 1.0]})
    with pytest.raises(ConfigError, match="min_range .* below max_range"):
        config_from_values({**values, "min_range": 50.0, "max_range": 40.0})
    assert isinstance(config_from_values(values), SegmentNodeConfig)


def test_params_files_are_read_without_ros_as_rcl_reads_them(tmp_path: Path) -> None:
    a = write_overrides(tmp_path / "a.yaml", {"sync.slop": 0.1, "topics.cloud_in": "/a"})
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"topics": {"cloud_in": "/b"}}},
                                 "other_node": {"ros__parameters": {"device": "cuda"}}}))
    values = params_file_values([CONFIG, a, b])
    cfg = config_from_values(values)
    assert cfg.sync.slop == 0.1 and cfg.topics.cloud_in == "/b" and cfg.device == "auto"


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
        with pytest.raises(ValueError, match=f"lidar_to_camera: {why}"):
            lidar_to_camera(bad)
    with pytest.raises(ConfigError, match="cameras.image_2: lidar_to_camera: expected 16 floats"):
        config_from_values({**defaults(), "cameras.image_2.lidar_to_camera": [1.0, 2.0]})


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"'checkpoint': file not found: {tmp_path}/nope.pt"):
        resolve_checkpoint(str(tmp_path / "nope.pt"))
    real = tmp_path / "real.pt"
    real.write_bytes(b"x")
    assert resolve_checkpoint(str(real)) == real


# ----------------------------------------------------------------------------- Humble's rclpy


class _Labels3:
    """Labels every point 3; stands in for the model (the test is about parameters, not inference)."""

    max_range = None
    input_convention = None

    def segment(self, points, views=None, exclude=None):
        from xkd_core.inference import SegmentResult

        return SegmentResult(np.full(len(points), 3, np.uint16), np.ones(len(points), np.float32))


@pytest.mark.ros
def test_parameters_change_at_run_time_without_the_post_set_callback(monkeypatch) -> None:
    """Humble's rclpy has no `Node.add_post_set_parameters_callback` (it came with Iron): the node must
    start and apply run-time changes without it, through a real `set_parameters` service call."""
    import rclpy
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from xkd_ros.segment_node import SegmentNode

    monkeypatch.delattr(Node, "add_post_set_parameters_callback")
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(context=context)
    try:
        seg = _Labels3()
        node = SegmentNode(segmenter=seg, context=context, cli_args=[
            "--ros-args", "-r", "__node:=xkd_humble", "-p", "use_camera:=false", "-p", "device:=cpu"])
        assert not node._apply_after_set
        client_node = rclpy.create_node("xkd_humble_client", context=context)
        executor.add_node(node)
        executor.add_node(client_node)
        client = client_node.create_client(SetParameters, "/xkd_humble/set_parameters")

        def call(name: str, value: float) -> object:
            assert client.wait_for_service(timeout_sec=30)
            msg = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                               double_value=value))
            future = client.call_async(SetParameters.Request(parameters=[msg]))
            executor.spin_until_future_complete(future, timeout_sec=30)
            return future.result().results[0]

        assert call("max_range", 12.5).successful
        assert node.get_parameter("max_range").value == 12.5
        assert node.cfg.max_range == 12.5 and seg.max_range == 12.5 and node.pipeline.cfg.max_range == 12.5
        refused = call("min_range", 20.0)  # above max_range: refused, nothing applied
        assert not refused.successful and "min_range" in refused.reason
        assert node.cfg.min_range == 0.0 and node.get_parameter("min_range").value == 0.0
        node.destroy_node()
        client_node.destroy_node()
    finally:
        executor.shutdown()
        context.try_shutdown()


# ----------------------------------------------------------------------------- the console script


def run_node(tmp_path: Path, params: dict, *extra: str) -> subprocess.CompletedProcess:
    path = write_overrides(tmp_path / "params.yaml", params)
    return subprocess.run([SEGMENT_NODE, "--ros-args", "--params-file", str(path), *extra],
                          capture_output=True, text=True, timeout=120)


def refused(result: subprocess.CompletedProcess) -> str:
    """The one 'refusing to start' line; also checks the exit code and that nothing else went wrong."""
    assert result.returncode == EXIT_CONFIG, result.stderr  # 78: the systemd unit does not restart on it
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.ros
def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu", "sync.slopp": 0.1}))
    assert "unknown parameter(s) ['sync.slopp']" in line and "did you mean 'sync.slop'" in line
    line = refused(run_node(tmp_path, {"device": "cpu", "cameras.front.transport": "raw"}))
    assert "unknown parameter(s) ['cameras.front.transport']" in line  # front is not in cameras.names


@pytest.mark.ros
def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu"}, "-p", "sync.slop:=5.0"))
    assert "'sync.slop'" in line and "out of range [0.0, 1.0]" in line
    line = refused(run_node(tmp_path, {"qos": {"input": {"depth": 0}}}))
    assert "'qos.input.depth'" in line and "out of range" in line


@pytest.mark.ros
def test_wrong_type_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"sync.cache_size": "ten"}))
    assert "'sync.cache_size' has the wrong type: expected INTEGER, got STRING" in line
    line = refused(run_node(tmp_path, {"sync.max_image_age": 1}))
    assert "'sync.max_image_age'" in line and "1.0, not 1" in line


@pytest.mark.ros
def test_bad_choice_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"cameras.image_2.transport": "theora"}))
    assert "cameras.image_2.transport" in line and "'theora' is not one of ['raw', 'compressed']" in line


@pytest.mark.ros
def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    line = refused(run_node(tmp_path, {"device": "cpu", "checkpoint": str(tmp_path / "missing.pt")}))
    assert f"parameter 'checkpoint': file not found: {tmp_path}/missing.pt" in line


@pytest.mark.ros
def test_shipped_config_starts_and_stops_cleanly(tmp_path: Path) -> None:
    """config/segment.yaml as shipped goes through rcl's YAML parser and every check of the node.

    Without tf2_ros (the PyPI install) and with lidar_to_camera unset, the camera has no extrinsics:
    the node says so at start instead of guessing one.
    """
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
            text = log.read_text()
            assert "camera image_2: /camera/image_2/image_raw (raw, raw)" in text
            try:
                import tf2_ros  # noqa: F401
            except ImportError:
                assert "tf2_ros is not importable" in text and "extrinsics from NONE" in text
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(60)
    assert rc == 0, log.read_text()
