"""Persistence: one data-access layer over SQLite (embedded default) or PostgreSQL, with Alembic migrations.

See docs/storage.md.
"""

from storage.errors import ConfigError, SchemaError, StorageError
from storage.store import SchemaStatus, Store, driver_url, open_store

__all__ = ["ConfigError", "SchemaError", "SchemaStatus", "StorageError", "Store", "driver_url", "open_store"]
