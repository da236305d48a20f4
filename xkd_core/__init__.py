"""xkd_core: the ROS-free library of xkd (data, geometry, models, losses, training, evaluation).

Nothing in this package imports rclpy or ROS messages, so it trains on a cluster with no ROS.
"""

__version__ = "0.1.0"
