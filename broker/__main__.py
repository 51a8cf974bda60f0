"""``python -m broker create-admin NAME``: the broker's first admin, made on the server itself.

No default credentials exist anywhere: the first admin and its token come from this command, run where the
broker's settings (``CONVEYOR_*``) reach its database. The token is printed once, on stdout, alone, so that
``T=$(python -m broker create-admin ops)`` captures it; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from broker.db.engine import database_from_settings
from broker.db.migrate import schema_is_current
from broker.identity.service import DEFAULT_TOKEN_DAYS, AlreadyInitialized, IdentityService
from broker.settings import Settings


async def create_admin(name: str, days: int) -> int:
    database = database_from_settings(Settings())
    try:
        if not await schema_is_current(database):
            print("the database schema is not current: run `alembic upgrade head` first", file=sys.stderr)
            return 2
        try:
            user, issued = await IdentityService(database).create_first_admin(name, days=days)
        except AlreadyInitialized as exc:
            print(exc.message, file=sys.stderr)
            return 1
    finally:
        await database.dispose()
    print(f"admin {user.name!r} is {user.id}; its token (shown once) expires {issued.token.expires_at:%Y-%m-%d}",
          file=sys.stderr)  # fmt: skip
    print(issued.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help="create the first admin and print its token once")
    admin.add_argument("name")
    admin.add_argument("--days", type=int, default=DEFAULT_TOKEN_DAYS, help="token lifetime in days")
    args = parser.parse_args(argv)
    return asyncio.run(create_admin(args.name, args.days))


if __name__ == "__main__":
    raise SystemExit(main())
