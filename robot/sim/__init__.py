"""aimg.robot.sim: the simulated xArm cell (PyBullet), behind the `Arm` and `CameraRig` interfaces.

`world` (physics, controller, objects), `cameras` (exact calibration <-> OpenGL matrices),
`devices` (`SimArm`, `SimCameraRig` on one shared world), `tasks` and `expert` (scenes, success
checks, scripted trajectories), `collect` (expert episodes to disk), `show` (contact sheets).
PyBullet is imported lazily (the `sim` extra), so importing this package needs nothing extra.
"""
