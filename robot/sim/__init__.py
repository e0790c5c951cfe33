"""aimg.robot.sim: the simulated xArm cell (PyBullet), behind the `Arm` and `CameraRig` interfaces.

`world` (physics, servo controller with xArm error codes, objects, rendering), `assets` (the
bundled xArm URDF with light visual meshes and a TCP marker), `cameras` (exact calibration <->
OpenGL matrices), `devices` (`SimArm`, `SimCameraRig` on one shared world), `tasks` and `expert`
(scenes, success checks, scripted trajectories), `collect` (expert episodes to disk), `show`
(contact sheets), `verify` (reported poses vs rendered pixels), `supervisor` (episode start,
success and render snapshots, served beside the arm) and `mirror` (a camera rig that renders a
snapshot-synchronised copy of the world in its own process, so camera reads never stall the
arm; `make_sim_cell`), `charuco` (a calibration board carried by the gripper, random camera
placements) and `latency` (an arm and cameras with known latencies, on the sim clock).
PyBullet is imported lazily (the `sim` extra). May import the core and `aimg.robot.interfaces`.
"""
