"""Live segmentation: `ros2 launch xkd_ros segment.launch.py [use_rviz:=true] [cloud_in:=/my/points] ...`.

Starts `segment_node` with `config/segment.yaml` (or `params_file:=...`), remaps its four input /
output topics, and optionally RViz with `rviz/xkd.rviz`. `checkpoint` and `use_camera` override the
params file. A node that dies is started again after `respawn_delay` seconds (`respawn:=false` to
debug a crash; under systemd, systemd restarts the node instead: docs/install.md). Its processes load
the Fast DDS profile `config/fastdds_large_clouds.xml` (whole clouds through shared memory instead of
512 KiB fragments) unless `fastdds_profile:=` names another file, or is empty for the middleware's
defaults; a profile already set in the environment is kept.
"""

import math
import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition, LaunchConfigurationNotEquals
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription

PACKAGE = "xkd_ros"
#: The variable naming a Fast DDS XML profile: Fast DDS 3 (Kilted on) reads the first and warns that
#: the second is deprecated; Fast DDS 2 (the distributions below) reads only the second.
FASTDDS_PROFILE_ENV = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")


def fastdds_profile_env(distro: str | None) -> str:
    """The profile variable that this ROS 2 distribution's Fast DDS reads."""
    return FASTDDS_PROFILE_ENV[1] if distro in FASTDDS2_DISTROS else FASTDDS_PROFILE_ENV[0]


def respawn_delay_seconds(text: str) -> float:
    """`respawn_delay:=` in seconds. launch_ros takes the delay as a float, not a substitution (Humble
    to Rolling), so the launch argument is read here, when the node is created."""
    try:
        delay = float(text)
    except ValueError:
        raise ValueError(f"respawn_delay: expected seconds (a number >= 0), got {text!r}") from None
    if not math.isfinite(delay) or delay < 0.0:
        raise ValueError(f"respawn_delay: expected seconds (a number >= 0), got {text!r}")
    return delay


#: launch argument -> the node's default topic it remaps (config/segment.yaml `topics.*`, and the
#: topics of the default camera `image_2`: `cameras.image_2.*`).
TOPIC_REMAPS = {
    "cloud_in": "/velodyne_points",
    "image_in": "/camera/image_2/image_raw",
    "camera_info_in": "/camera/image_2/camera_info",
    "cloud_out": "/xkd/labeled_cloud",
}


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    profile_env = fastdds_profile_env(os.environ.get("ROS_DISTRO"))
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "segment.yaml"]),
            description="node parameters (YAML with /segment_node: ros__parameters)",
        ),
        DeclareLaunchArgument(
            "checkpoint", default_value="", description="model checkpoint (.pt); empty = the shipped model"
        ),
        DeclareLaunchArgument(
            "use_camera", default_value="true", description="use the camera image (overlay, pair log, fusion)"
        ),
        DeclareLaunchArgument(
            "use_rviz", default_value="false", description="also start RViz with rviz/xkd.rviz"
        ),
        DeclareLaunchArgument(
            "respawn", default_value="true", description="start segment_node again when it dies"
        ),
        DeclareLaunchArgument(
            "respawn_delay", default_value="2.0", description="seconds before segment_node is started again"
        ),
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable(
                profile_env,
                default_value=PathJoinSubstitution([share, "config", "fastdds_large_clouds.xml"]),
            ),
            description="Fast DDS XML profile for the launched processes; empty = the middleware's defaults",
        ),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value=topic, description=f"remapped onto the node's {topic}")
        for name, topic in TOPIC_REMAPS.items()
    ]

    segment_node = OpaqueFunction(function=make_segment_node)
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="log",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "xkd.rviz"])],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    profile = SetEnvironmentVariable(
        profile_env,
        LaunchConfiguration("fastdds_profile"),
        condition=LaunchConfigurationNotEquals("fastdds_profile", ""),
    )
    return LaunchDescription([*arguments, profile, segment_node, rviz])


def make_segment_node(context: LaunchContext) -> list[Node]:
    """segment_node with the launch arguments, created once they are known (for `respawn_delay`)."""
    return [Node(
        package=PACKAGE,
        executable="segment_node",
        name="segment_node",
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
                "use_camera": ParameterValue(LaunchConfiguration("use_camera"), value_type=bool),
            },
        ],
        remappings=[(topic, LaunchConfiguration(name)) for name, topic in TOPIC_REMAPS.items()],
        respawn=LaunchConfiguration("respawn"),
        respawn_delay=respawn_delay_seconds(LaunchConfiguration("respawn_delay").perform(context)),
    )]
