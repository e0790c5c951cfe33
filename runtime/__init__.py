"""aimg.runtime: inference backends, policy, scheduler, safety filter, daemon, API, recording.

May import the core (`aimg.*`) and the hardware interfaces of `aimg.robot`; never
`aimg.export` or `aimg.training`.
"""
