"""aimg.calib: camera intrinsics, ChArUco hand-eye calibration, overlays and drift checks.

`board` (the ChArUco board and its detection), `handeye` (scripted motion and solver),
`calibration_file` (the YAML file every consumer reads `Camera`s from), `drift` (has a camera
moved?), `overlay` (pictures to check by eye), `session` (a calibration end to end), `sim`
(the simulated cell with ground truth), `cli` (`aimg calib ...`).

May import the core (`aimg.*`) and the hardware interfaces of `aimg.robot` (and `aimg.robot.sim`
for the simulated cell).
"""
