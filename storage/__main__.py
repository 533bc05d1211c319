"""Developer helper: `python -m storage revision -m "add foo" [--autogenerate]` writes a new migration.

--autogenerate diffs storage.schema against a scratch SQLite database upgraded to the current head.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    from alembic import command
    from sqlalchemy import create_engine

    from storage.store import _alembic_config

    parser = argparse.ArgumentParser(prog="python -m storage")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new migration file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    sub.add_parser("heads", help="show the head revision(s)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        url = "sqlite:///" + os.path.join(tmp, "scratch.sqlite3")
        cfg = _alembic_config()
        cfg.set_main_option("sqlalchemy.url", url)
        if args.cmd == "heads":
            command.heads(cfg)
            return 0
        if args.autogenerate:
            engine = create_engine(url)
            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), "heads")
            engine.dispose()
        command.revision(cfg, message=args.message, autogenerate=args.autogenerate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
