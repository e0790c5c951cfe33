"""`aimg sim ...`: collect episodes in the simulated xArm cell and look at them."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The simulated xArm cell (PyBullet): collect expert episodes, inspect them.",
    no_args_is_help=True,
)
