"""The layering of docs/architecture.md holds: import-linter checks the contract in pyproject.toml."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_points_up_or_sideways(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    # import-linter configures logging with disable_existing_loggers: later tests' caplog would see nothing.
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    enabled = [lg for lg in loggers if not lg.disabled]
    try:
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        for lg in enabled:
            lg.disabled = False
    report = capsys.readouterr().out
    assert code == 0, "an import breaks docs/architecture.md's layers:\n" + report
    assert "1 kept, 0 broken" in report
