"""``python -m broker create-admin NAME``: the broker's first admin, made on the server itself;
``python -m broker secrets-key FILE``: a new secrets key file (``CONVEYOR_SECRETS_KEY_FILE``).

No default credentials exist anywhere: the first admin and its token come from this command, run where the
broker's settings (``CONVEYOR_*``) reach its database. The token is printed once, on stdout, alone, so that
``T=$(python -m broker create-admin ops)`` captures it; everything else goes to stderr. The key file is made
mode 0600 and never replaces an existing file; the key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from broker.db.engine import database_from_settings
from broker.db.migrate import schema_is_current
from broker.identity.service import DEFAULT_TOKEN_DAYS, AlreadyInitialized, IdentityService
from broker.secret_box import write_key_file
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


def secrets_key(path: Path) -> int:
    try:
        write_key_file(path)
    except OSError as exc:
        print(f"cannot make the secrets key file {path}: {exc}", file=sys.stderr)
        return 1
    print(f"made the secrets key file {path} (mode 0600): set CONVEYOR_SECRETS_KEY_FILE={path} on every replica",
          file=sys.stderr)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help="create the first admin and print its token once")
    admin.add_argument("name")
    admin.add_argument("--days", type=int, default=DEFAULT_TOKEN_DAYS, help="token lifetime in days")
    key = commands.add_parser("secrets-key", help="make a new secrets key file (mode 0600; never replaces one)")
    key.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "secrets-key":
        return secrets_key(args.file)
    return asyncio.run(create_admin(args.name, args.days))


if __name__ == "__main__":
    raise SystemExit(main())
