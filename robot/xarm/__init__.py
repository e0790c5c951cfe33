"""aimg.robot.xarm: the UFACTORY xArm through the unmodified `xarm-python-sdk`, and an emulator.

`arm` (`XArm`, the `Arm` interface on `xarm.wrapper.XArmAPI`: servo mode, gripper, firmware
safety configured and read back, dead-man, stale-report detection), `codes` (controller error
codes -> `ArmErrorCode` and what they mean), `protocol` (the wire format: frames and the 30002
report) and `emulator` (a loopback controller whose arm is the PyBullet cell, for tests and
`aimg sim xarm-emulator`). The SDK is imported lazily (the `robot` extra). Units inside aimg are
metres and radians; the SDK's millimetres are converted here and nowhere else. May import the
core, `aimg.robot.interfaces` and (emulator only) `aimg.robot.sim`.
"""
