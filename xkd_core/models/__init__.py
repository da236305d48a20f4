"""Networks: sparse 3D UNet, timm image encoder + FPN, heads, and the xModel-KD model that joins them.

Submodules are imported explicitly (`from xkd_core.models.xmodel_kd import XModelKD`) so that
importing one part does not pull in spconv or timm.
"""
