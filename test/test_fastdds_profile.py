"""config/fastdds_large_clouds.xml: well formed, loaded by Fast DDS, and clouds still arrive through it.

Fast DDS ignores a profile it cannot use and falls back to its defaults without failing, so "the node
still talks" proves nothing about the file: the check that it took effect is the size of the
shared-memory segment a participant creates under /dev/shm (512 KiB by default). Nothing is timed;
the latency it buys is measured by bench/bench_transport.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench.bench_transport import run_round  # noqa: E402
from bench.common import FASTDDS_PROFILE  # noqa: E402
from xkd_ros.fastdds import set_profile  # noqa: E402

NS = {"f": "http://www.eprosima.com"}
SHM = Path("/dev/shm")
LABELED_240K_BYTES = 240_000 * 28  # the node's largest expected output: 240k points x 28-byte labeled point

# One participant with a publisher; prints the sizes of the Fast DDS segments that appeared with it.
SEGMENTS_CHILD = """
import json, os, rclpy
from sensor_msgs.msg import PointCloud2
before = set(os.listdir('/dev/shm'))
rclpy.init()
node = rclpy.create_node('xkd_profile_probe')
node.create_publisher(PointCloud2, '/xkd_profile_probe', 5)
new = [f for f in set(os.listdir('/dev/shm')) - before if f.startswith('fastdds_') and '_port' not in f]
print(json.dumps([os.path.getsize(os.path.join('/dev/shm', f)) for f in new]))
node.destroy_node()
rclpy.try_shutdown()
"""


def shm_descriptor() -> ET.Element:
    root = ET.parse(FASTDDS_PROFILE).getroot()
    (shm,) = [d for d in root.iterfind(".//f:transport_descriptor", NS)
              if d.findtext("f:type", namespaces=NS) == "SHM"]
    return shm


def test_profile_is_the_default_participant_profile_with_large_shm_and_udp() -> None:
    root = ET.parse(FASTDDS_PROFILE).getroot()
    (participant,) = root.iterfind(".//f:participant", NS)
    assert participant.get("is_default_profile") == "true"  # applies without naming it in code
    used = [t.text for t in participant.iterfind(".//f:userTransports/f:transport_id", NS)]
    kinds = {d.findtext("f:transport_id", namespaces=NS): d.findtext("f:type", namespaces=NS)
             for d in root.iterfind(".//f:transport_descriptor", NS)}
    assert sorted(kinds[t] for t in used) == ["SHM", "UDPv4"]  # other hosts still reachable
    assert participant.findtext(".//f:useBuiltinTransports", namespaces=NS) == "false"
    shm = shm_descriptor()
    segment = int(shm.findtext("f:segment_size", namespaces=NS))
    max_message = int(shm.findtext("f:maxMessageSize", namespaces=NS))
    assert LABELED_240K_BYTES < max_message <= segment  # a whole labeled cloud per write


def new_segment_sizes(profile: Path | None) -> list[int]:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    set_profile(env, profile)
    out = subprocess.run([sys.executable, "-c", SEGMENTS_CHILD], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm (Fast DDS shared memory lives there on Linux)")
def test_fast_dds_loads_the_profile_and_makes_the_segment_it_asks_for() -> None:
    segment = int(shm_descriptor().findtext("f:segment_size", namespaces=NS))
    with_profile = new_segment_sizes(FASTDDS_PROFILE)
    without = new_segment_sizes(None)
    assert with_profile and max(with_profile) >= segment
    assert without and max(without) < segment // 8  # Fast DDS's own default, 512 KiB + bookkeeping


def test_large_best_effort_clouds_arrive_whole_through_the_profile() -> None:
    # best effort is the node's input QoS; without the profile 127k-point clouds are lost in
    # fragmentation here (bench_transport: 0 of 100 on the quiet machine), which no test depends on
    domain = 100 + os.getpid() % 100
    got = run_round(FASTDDS_PROFILE, "best_effort", 127_000, messages=5, rate=10.0, warmup=2, domain=domain)
    assert got["received"] == 5  # the clouds after the warm-up
    assert got["points_decoded"] == 127_000
    assert len(got["latencies_s"]) == 5 and all(0 < t < 30 for t in got["latencies_s"])


def test_node_warns_on_fast_dds_without_a_profile_only() -> None:
    import rclpy

    from xkd_ros.fastdds import FASTDDS_PROFILE_ENV, fastdds_profile_warning

    rmw = rclpy.get_rmw_implementation_identifier()  # what segment_node passes
    assert "fastrtps" in rmw  # the middleware of these tests (and ROS 2's default)
    note = fastdds_profile_warning(rmw, {})
    assert note and "fastdds_large_clouds.xml" in note and "best-effort" in note
    for name in FASTDDS_PROFILE_ENV:  # either generation's variable counts as a profile
        assert fastdds_profile_warning(rmw, {name: str(FASTDDS_PROFILE)}) is None
    assert fastdds_profile_warning(rmw, {FASTDDS_PROFILE_ENV[0]: ""}) is not None  # empty = none
    assert fastdds_profile_warning("rmw_cyclonedds_cpp", {}) is None  # not Fast DDS: nothing to say


def test_tools_take_the_shipped_profile_unless_the_user_set_one() -> None:
    from xkd_ros.fastdds import FASTDDS_PROFILE_ENV, use_shipped_profile

    env: dict[str, str] = {}
    used = use_shipped_profile(env)
    assert Path(used).resolve() == FASTDDS_PROFILE.resolve() == Path(env[FASTDDS_PROFILE_ENV[0]]).resolve()
    mine = {FASTDDS_PROFILE_ENV[1]: "/etc/my_profile.xml"}  # a Fast DDS 2 user's own
    assert "/etc/my_profile.xml" in use_shipped_profile(mine)
    assert mine == {FASTDDS_PROFILE_ENV[1]: "/etc/my_profile.xml"}  # left alone
