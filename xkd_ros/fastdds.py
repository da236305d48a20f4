"""Fast DDS and large clouds: which XML profile variable the middleware reads, and what to tell an
operator whose node runs without one.

Fast DDS gives a participant a 512 KiB shared-memory segment by default; a LiDAR-sized PointCloud2
crosses it in fragments, and best-effort ones (the node's input default) were lost: 0 of 100 at 127k
points between two processes, against 100 of 100 with `config/fastdds_large_clouds.xml`
(docs/performance.md, "DDS transport of large clouds").
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

#: Fast DDS 3 (Kilted on) reads the first and warns about the second; Fast DDS 2 reads the second.
FASTDDS_PROFILE_ENV = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def fastdds_profile_warning(rmw: str, env: Mapping[str, str]) -> str | None:
    """The start-up warning for a node on Fast DDS (`rmw`, the RMW identifier) whose environment
    names no XML profile; None when there is one or the middleware is another."""
    if "fastrtps" not in rmw or any(env.get(name) for name in FASTDDS_PROFILE_ENV):
        return None
    return ("Fast DDS runs without an XML profile: clouds larger than 512 KiB cross shared memory in "
            "fragments and best-effort ones get lost; set FASTDDS_DEFAULT_PROFILES_FILE to "
            "config/fastdds_large_clouds.xml (segment.launch.py does) for this node and the LiDAR driver")


#: The profile segment.launch.py gives its processes (config/).
PROFILE_NAME = "fastdds_large_clouds.xml"


def use_shipped_profile(env: MutableMapping[str, str]) -> str:
    """Give the processes started from here the launch file's Fast DDS profile unless `env` already
    names one (the user's wins); must run before `rclpy.init`. Returns what was used, for reports."""
    from xkd_ros.node_process import config_file

    for name in FASTDDS_PROFILE_ENV:
        if env.get(name):
            return f"{env[name]} (from {name})"
    env[FASTDDS_PROFILE_ENV[0]] = str(config_file(PROFILE_NAME))
    return env[FASTDDS_PROFILE_ENV[0]]
