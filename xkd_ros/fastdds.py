"""Fast DDS and large clouds: which XML profile variable the middleware reads, how the tools set it,
and what to tell an operator whose node runs without one.

Fast DDS gives a participant a 512 KiB shared-memory segment by default; a LiDAR-sized PointCloud2
crosses it in fragments, and best-effort ones (the node's input default) were lost: 0 of 100 at 127k
points between two processes, against 100 of 100 with `config/fastdds_large_clouds.xml`
(docs/performance.md, "DDS transport of large clouds").
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path

#: Fast DDS 3 (Kilted on) reads the first and warns about the second; Fast DDS 2 reads the second.
FASTDDS_PROFILE_ENV = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: The profile segment.launch.py gives its processes (config/).
PROFILE_NAME = "fastdds_large_clouds.xml"


def profile_variable(env: Mapping[str, str]) -> str | None:
    """The profile variable `env` sets to a non-empty value, if any."""
    return next((name for name in FASTDDS_PROFILE_ENV if env.get(name)), None)


def set_profile(env: MutableMapping[str, str], profile: Path | None) -> None:
    """Set the Fast DDS 3 profile variable in `env` (e.g. `os.environ`, or a child's environment), or
    remove any profile for `None`. It must be in place before `rclpy.init()` of every process it
    should apply to."""
    for name in FASTDDS_PROFILE_ENV:
        env.pop(name, None)
    if profile is not None:
        env[FASTDDS_PROFILE_ENV[0]] = str(profile)


def fastdds_profile_warning(rmw: str, env: Mapping[str, str]) -> str | None:
    """The start-up warning for a node on Fast DDS (`rmw`, the RMW identifier) whose environment
    names no XML profile; None when there is one or the middleware is another."""
    if "fastrtps" not in rmw or profile_variable(env):
        return None
    return ("Fast DDS runs without an XML profile: clouds larger than 512 KiB cross shared memory in "
            "fragments and best-effort ones get lost; set FASTDDS_DEFAULT_PROFILES_FILE to "
            "config/fastdds_large_clouds.xml (segment.launch.py does) for this node and the LiDAR driver")


def use_shipped_profile(env: MutableMapping[str, str]) -> str:
    """Give the processes started from here the launch file's Fast DDS profile unless `env` already
    names one (the user's wins); must run before `rclpy.init`. Returns what was used, for reports."""
    from xkd_ros.paths import config_file

    name = profile_variable(env)
    if name:
        return f"{env[name]} (from {name})"
    set_profile(env, config_file(PROFILE_NAME))
    return env[FASTDDS_PROFILE_ENV[0]]
