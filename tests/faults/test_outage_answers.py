"""Which database errors are an outage (503 with Retry-After) rather than a bug (500): pure, no server.

The errors are built the way SQLAlchemy builds them from asyncpg's, so this checks the real wrapping: a
PostgreSQL that is shutting down or starting up refuses connections with SQLSTATE 57P03 before its port
closes, and SQLAlchemy hands that over as a plain DBAPIError (not OperationalError, not invalidated).
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import exc as sa
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection, dialect

from app.problems import _is_database_outage


def _as_sqlalchemy_raises(orig: Exception) -> BaseException:
    """What a connect that failed with ``orig`` raises out of SQLAlchemy's asyncpg dialect."""
    pg = dialect()  # type: ignore[no-untyped-call]
    pg.dbapi = dialect.import_dbapi()  # type: ignore[no-untyped-call]
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(pg.dbapi, orig)
    except Exception as translated:  # the translation is what is inspected
        if isinstance(translated, OSError):
            return translated  # raised as is, like ConnectionRefusedError
        return sa.DBAPIError.instance("SELECT 1", None, translated, pg.dbapi.Error, dialect=pg)
    raise AssertionError("the dialect did not raise")


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_stopping_or_stopped_postgresql_is_an_outage(orig: Exception) -> None:
    assert _is_database_outage(_as_sqlalchemy_raises(orig))


@pytest.mark.parametrize(
    "orig",
    [
        asyncpg.exceptions.UndefinedTableError('relation "jobs" does not exist'),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_wrong_query_is_not_an_outage(orig: Exception) -> None:
    assert not _is_database_outage(_as_sqlalchemy_raises(orig))
