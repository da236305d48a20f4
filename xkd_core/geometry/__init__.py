"""Geometry: projection and point-pixel pairs, augmentation, voxelization.

Submodules are imported explicitly (`from xkd_core.geometry.projection import ...`) so that using
projection does not pull in torch or OpenCV.
"""
