"""`python -m aimg` runs the `aimg` command."""

from aimg.cli import main

main()
