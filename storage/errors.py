"""Storage errors."""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed; the message says why."""


class SchemaError(StorageError):
    """The database schema does not match this Stoa; the message says what to run."""


class ConfigError(StorageError, ValueError):
    """The database URL cannot be used."""
