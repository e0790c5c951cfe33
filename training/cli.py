"""`aimg train ...`: flow-matching training of world action models."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train world action models with flow matching (single process or torchrun).",
    no_args_is_help=True,
)
