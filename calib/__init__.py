"""aimg.calib: camera intrinsics, ChArUco hand-eye calibration, overlays and drift checks.

May import the core (`aimg.*`) and the hardware interfaces of `aimg.robot`.
"""
