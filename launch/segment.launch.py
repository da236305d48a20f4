"""Live segmentation: `ros2 launch xkd_ros segment.launch.py [use_rviz:=true] [cloud_in:=/my/points] ...`.

Starts `segment_node` with `config/segment.yaml` (or `params_file:=...`), remaps its four input /
output topics, and optionally RViz with `rviz/xkd.rviz`. `checkpoint` and `use_camera` override the
params file.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "xkd_ros"

#: launch argument -> the node's default topic (config/segment.yaml `topics.*`) it remaps.
TOPIC_REMAPS = {
    "cloud_in": "/velodyne_points",
    "image_in": "/camera/image_2/image_raw",
    "camera_info_in": "/camera/image_2/camera_info",
    "cloud_out": "/xkd/labeled_cloud",
}


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
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
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value=topic, description=f"remapped onto the node's {topic}")
        for name, topic in TOPIC_REMAPS.items()
    ]

    segment_node = Node(
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
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="log",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "xkd.rviz"])],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription([*arguments, segment_node, rviz])
