"""Unit constants shared by the library and the ROS glue (one home each)."""

#: Nanoseconds per second: ROS stamps, bag times and pair-log stamps are integer nanoseconds.
NS_PER_S = 1_000_000_000
