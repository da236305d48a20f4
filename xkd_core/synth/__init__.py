"""Synthetic driving world written in the SemanticKITTI format (`xkd-synth`).

A LiDAR and the cameras (KITTI's front pair, or a 360-degree surround ring listed in `views.yaml`)
ray-cast one procedurally laid-out street, so tests, the demo and the CPU benchmarks run without
downloads, and the scenes hold classes that differ only in appearance
(road / parking / other-ground, sidewalk / terrain) for cross-modal distillation to teach.
"""

from xkd_core.synth.config import CameraConfig, LidarConfig, SurroundConfig, SynthConfig, WorldConfig
from xkd_core.synth.generate import generate
from xkd_core.synth.sequence import SyntheticSequence

__all__ = ["CameraConfig", "LidarConfig", "SurroundConfig", "SynthConfig", "SyntheticSequence", "WorldConfig",
           "generate"]
