"""The same scene from each LiDAR driver's layout, through the real `segment_node` over Fast DDS.

Issue 29's acceptance test: a Velodyne, Ouster, Livox, Hesai or 16-bit-counts cloud of one scene must get
the labels the 0..1 reference gets (>= 95 % of points) with `intensity.scale: auto`, the shipped model,
and the node as users start it (console script, params file). Each layout gets a node of its own, as a
vehicle has one driver; the scale decision it logged is checked too.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from driver_clouds import driver_cloud, reference_scene
from node_fixtures import Harness, NodeProcess, node_params, topics

from xkd_core.inference import Segmenter
from xkd_ros.node_process import write_overrides
from xkd_ros.pointcloud import cloud_view
from xkd_ros.segment_params import SHIPPED_CHECKPOINT
from xkd_ros.stamp import rclpy_header

pytestmark = pytest.mark.ros

MIN_AGREEMENT = 0.95
S = 1_000_000_000


@pytest.fixture(scope="module")
def reference_labels() -> np.ndarray:
    torch.set_num_threads(1)  # as the node (cpu_threads: 1)
    seg = Segmenter.from_checkpoint(SHIPPED_CHECKPOINT, device="cpu", max_range=100.0)
    return seg.segment(reference_scene().xyzi).labels


@pytest.mark.parametrize(("layout", "field", "options", "decided"), [
    ("velodyne", "intensity", {}, "0..255"),
    ("livox", "intensity", {}, "0..255"),
    ("hesai", "intensity", {}, "0..255"),
    ("counts16", "intensity", {}, "0..65535"),
    ("ouster", "reflectivity", {"organised": True, "row_pad": 16}, "0..255"),
    ("velodyne", "intensity", {"big_endian": True}, "0..255"),
])
def test_driver_layout_gets_the_reference_labels_over_dds(tmp_path: Path, reference_labels: np.ndarray,
                                                          layout: str, field: str, options: dict,
                                                          decided: str) -> None:
    name = f"xkd_drv_{layout}"
    params = {**node_params(name), "device": "cpu", "cpu_threads": 1, "use_camera": False,
              "checkpoint": "", "intensity.field": field, "intensity.scale": "auto",
              "qos.input.reliability": "reliable"}  # a 1.5 MB cloud without the large-cloud DDS profile
    node = NodeProcess(write_overrides(tmp_path / "params.yaml", params, name), tmp_path / "node.log", name)
    h = Harness(f"{name}_harness", topics(name))
    try:
        h.wait_connected(node, with_camera=False)
        cloud = driver_cloud(layout, **options)
        got = None
        for i in range(5):  # the first clouds after discovery may be lost: send until one comes back
            stamp = 2000 * S + i * S // 10
            h.cloud_pub.publish(cloud.rclpy(rclpy_header(stamp, "lidar")))
            if h.spin_until(lambda stamp=stamp: h.output_for(stamp) is not None, 30.0, node):
                got = h.output_for(stamp)
                break
        assert got is not None, f"no labeled cloud; log:\n{node.log()}"
        assert (got.height, got.width) == (cloud.height, cloud.width)  # one output point per input point
        labels = cloud_view(got).reshape(-1)["label"]
        ok = cloud.index >= 0
        agree = float(np.mean(labels[ok] == reference_labels[cloud.index[ok]]))
        assert agree >= MIN_AGREEMENT, f"{layout}: {agree:.3f}; log:\n{node.log()}"
        deadline = time.monotonic() + 10
        while "[intensity.decided]" not in node.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        decision = next(line for line in node.log().splitlines() if "[intensity.decided]" in line)
        assert f"'{field}'" in decision and decided in decision, decision
    finally:
        h.close()
        assert node.stop() == 0, node.log()
