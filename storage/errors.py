"""Storage errors."""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed; the message says why."""


class SchemaError(StorageError):
    """The database schema does not match this Stoa; the message says what to run. `status` is the
    SchemaStatus that failed the check (its `state` is "behind", "ahead" or "empty") when known."""

    def __init__(self, message: str, status=None):
        super().__init__(message)
        self.status = status


class ConfigError(StorageError, ValueError):
    """The database URL cannot be used."""
