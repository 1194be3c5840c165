"""Backstop's engine: everything but the terminal UI (never imports textual)."""

__version__ = "0.1.0"
