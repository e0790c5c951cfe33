"""aimg.calib: camera intrinsics, ChArUco hand-eye calibration, overlays and drift checks.

`board` (the ChArUco board and its detection), `handeye` (scripted motion and solver),
`calibration_file` (the YAML file every consumer reads `Camera`s from), `intrinsics` (K and
distortion from ChArUco images or the device), `drift` (has a camera moved? the board check),
`scene_drift` (the same from the static scene, no motion: the daemon's check before every
task), `latency` (camera and arm latency), `overlay` (pictures to check by eye), `session` (a
calibration end to end), `sim` (the simulated cell with ground truth), `cell_devices` (a cell's
arm and cameras opened from its cell config), `cli` and `*_cli` (`aimg calib ...`).

May import the core (`aimg.*`) and the hardware interfaces of `aimg.robot` (and `aimg.robot.sim`
for the simulated cell). The commands that drive a cell read the daemon's cell config
(`aimg.runtime.cell_config`), lazily, and nothing else of the runtime.
"""
