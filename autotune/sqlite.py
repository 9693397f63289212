"""SQLite connection settings shared by the study's Optuna storage and the MLflow store."""

from __future__ import annotations

from typing import Any


def use_wal(engine: Any) -> None:
    """Every connection of a SQLAlchemy `engine` on a SQLite file: WAL mode, synchronous=NORMAL.

    Optuna and MLflow commit many times per trial; with SQLite's rollback journal each commit is
    an fsync (~6 ms on the benchmark machine: scripts/bench_overhead.py). In WAL mode with
    synchronous=NORMAL a commit is an append; a killed process (Ctrl-C, kill -9) loses nothing
    committed, only a power loss or OS crash may lose the last transactions, and readers in other
    processes (`mlflow ui`, a second driver's check) keep working. WAL is a property of the file;
    synchronous is set on each connection. Other dialects are left as they are.
    """
    import sqlalchemy

    if engine.dialect.name != "sqlite":
        return

    @sqlalchemy.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections made before the listener get the pragmas too
