"""The command-line layer: the typer app (app.py) and one module per command group. The only layer that
imports typer or rich; nothing below imports it."""
