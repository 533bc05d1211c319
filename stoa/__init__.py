"""Stoa: a self-hosted live-classroom media server."""

from shared import __version__  # noqa: F401  (one version: shared/ is importable from every layer)
