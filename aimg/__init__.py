"""aimg: the shared core of the Action Images stack.

Lives here: geometry (cameras, rotations, Plücker rays), the action-image codec, the world
action model, the episode format, configs and the `aimg` command. The core imports no stage
(`aimg.training`, `aimg.export`, `aimg.runtime`, `aimg.robot`, `aimg.calib`); stages import it.
"""

__version__ = "0.1.0"
