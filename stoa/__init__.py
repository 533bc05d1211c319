"""Stoa: a self-hosted live-classroom media server."""

__version__ = "0.1.0"
