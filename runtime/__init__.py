"""aimg.runtime: the closed loop on the robot computer.

`backends` (torch / onnxruntime / TensorRT behind one `PlanBackend`), `policy` (frames + pose
-> timed `Waypoints`), `expert_planner` (the sim's expert through the same path), `scheduler`
(real-time chunking: replan while executing, blend or inpaint joins), `trajectory` (splines,
slerp, seamless joins), `safety` (limits, clamps, holds, e-stop latch, the command checker),
`servo` (the fixed-rate process that owns the arm), `camera_process` (the rig into a
shared-memory ring buffer), `video` (episode mp4s with overlays), `sim_run` (`aimg run --sim`),
`bench` (`aimg bench policy` / `loop`). May import the core (`aimg.*`) and `aimg.robot`; never
`aimg.export` or `aimg.training`.
"""
