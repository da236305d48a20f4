"""The node's extrinsics from TF, with a stand-in `tf2_ros` that has Humble's Python API.

tf2_ros is not on PyPI, so the PyPI install never reaches this path; on a colcon install it is the
default for every camera whose `lidar_to_camera` is unset. The stand-in has the signatures of tf2_ros
in Humble (`Buffer.lookup_transform(target_frame, source_frame, time)` returning a
geometry_msgs/TransformStamped, raising tf2's exceptions; `TransformListener(buffer, node, *,
spin_thread=False)`): the node's glue (lookup at the cloud's stamp, message -> matrix, a failure ->
LookupError -> that camera skipped) runs for real against it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytestmark = pytest.mark.ros


class _Labels3:
    max_range = None
    input_convention = None

    def segment(self, points, views=None, exclude=None):
        from xkd_core.inference import SegmentResult

        return SegmentResult(np.full(len(points), 3, np.uint16), np.ones(len(points), np.float32))


def fake_tf2_ros(lookups: list) -> types.ModuleType:
    from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3

    class LookupException(Exception):  # tf2_ros re-exports tf2's exception types
        pass

    class Buffer:
        def lookup_transform(self, target_frame, source_frame, time, timeout=None):
            lookups.append((target_frame, source_frame, time.nanoseconds))
            if target_frame != "front_optical":
                raise LookupException(f'"{target_frame}" passed to lookupTransform argument target_frame '
                                      "does not exist.")
            # camera 2 m ahead, turned by 90 degrees about z (a proper rotation: q = (0, 0, sin 45, cos 45))
            s = float(np.sqrt(0.5))
            return TransformStamped(transform=Transform(translation=Vector3(x=2.0, y=0.0, z=0.0),
                                                        rotation=Quaternion(x=0.0, y=0.0, z=s, w=s)))

    class TransformListener:
        def __init__(self, buffer, node, *, spin_thread=False, qos=None, static_qos=None):
            self.buffer, self.node, self.spin_thread = buffer, node, spin_thread

    module = types.ModuleType("tf2_ros")
    module.Buffer, module.TransformListener = Buffer, TransformListener
    module.LookupException = LookupException
    return module


def test_cameras_without_a_parameter_take_tf_and_a_missing_transform_is_a_lookup_error(monkeypatch) -> None:
    import rclpy

    from xkd_ros.segment_node import SegmentNode

    lookups: list = []
    monkeypatch.setitem(sys.modules, "tf2_ros", fake_tf2_ros(lookups))
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = SegmentNode(segmenter=_Labels3(), context=context, cli_args=[
            "--ros-args", "-r", "__node:=xkd_tf", "-p", "device:=cpu", "-p", "cameras.names:=[front, rear]",
            "-p", "cameras.rear.lidar_to_camera:=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]"])
        cams = node.pipeline.cameras
        assert cams["front"].extrinsics_source == "tf" and cams["rear"].extrinsics_source == "parameter"
        assert node._tf_listener.spin_thread is False  # the node's executor spins it
        T = node._tf_lookup("front_optical", "velodyne", 1_700_000_000_123_456_789)
        expected = np.array([[0.0, -1.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])
        np.testing.assert_allclose(T, expected, atol=1e-12)
        assert lookups[-1] == ("front_optical", "velodyne", 1_700_000_000_123_456_789)  # at the cloud's stamp
        with pytest.raises(LookupError, match="LookupException.*does not exist"):
            node._tf_lookup("front_wrong_frame", "velodyne", 1)
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_all_cameras_with_a_parameter_need_no_tf(monkeypatch) -> None:
    import rclpy

    from xkd_ros.segment_node import SegmentNode

    monkeypatch.setitem(sys.modules, "tf2_ros", fake_tf2_ros([]))
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = SegmentNode(segmenter=_Labels3(), context=context, cli_args=[
            "--ros-args", "-r", "__node:=xkd_tf2", "-p", "device:=cpu",
            "-p", "cameras.image_2.lidar_to_camera:=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]"])
        assert node.tf_buffer is None and node.pipeline.cameras["image_2"].extrinsics_source == "parameter"
        node.destroy_node()
    finally:
        context.try_shutdown()
