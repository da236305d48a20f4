"""ament_python package `xkd_ros`, shipping the ROS-free library `xkd_core` beside it."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "xkd_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["xkd_core", "xkd_core.*", "xkd_ros", "xkd_ros.*"]),
    package_data={"xkd_core": ["assets/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="xkd maintainers",
    maintainer_email="xkd@example.org",
    description="LiDAR semantic segmentation with xModel-KD cross-modal distillation for ROS 2.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "segment_node = xkd_ros.segment_node:main",
            "xkd-synth = xkd_core.synth.cli:main",
            "xkd-train = xkd_core.training.cli:main",
            "xkd-eval = xkd_core.evaluation.cli:main",
            "xkd-export = xkd_core.models.export:main",
            "xkd-kitti2bag = xkd_ros.kitti2bag:main",
            "xkd-bag-eval = xkd_ros.bag_eval:main",
            "xkd-demo = xkd_ros.demo:main",
        ],
    },
)
