"""The command-line layer: the typer app and its commands (the only layer that imports typer or rich)."""

from rwkvprobe.cli.app import app, main

__all__ = ["app", "main"]
