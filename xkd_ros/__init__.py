"""ROS 2 side of xkd: nodes, message glue and bag tools.

This package root imports nothing from ROS on purpose: the bag tools (`xkd-kitti2bag`, the bag
reader) only need `rosbags` and must run on a machine with no ROS install. Modules that need
`rclpy` or generated messages import them themselves, and the message glue imports them lazily.
"""
