"""The command line: a thin layer over the library (parse flags, call the engine, render, pick an exit code).

One module per command group, registered on the root Typer app; options every
command shares travel in ``ctx.obj``; all output goes through one console.
"""
from servectl.cli.app import app, main

__all__ = ["app", "main"]
