"""``python -m app.gateway`` (or ``conveyor-gateway``): the Antenna gateway on one uvicorn worker.

A configuration it cannot run with stops it before it listens, with the reason on stderr and exit status 2
(no traceback: the operator needs the setting to fix, not the call stack). ``--public-jwks`` prints the public
half of the signing keys, the JWKS a broker admin registers for this Antenna, and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.gateway.main import create_app
from app.gateway.settings import GatewayConfigError, GatewaySettings, explain_settings, load_signing_key
from app.serving import serve

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="conveyor-gateway",
        description="The Conveyor Antenna gateway; configured by CONVEYOR_GATEWAY_* environment variables.",
    )
    parser.add_argument(
        "--public-jwks", action="store_true", help="print the public JWKS to register at the broker, and exit"
    )
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings()  # the required fields come from the environment
        if args.public_jwks:
            key = load_signing_key(settings.signing_keys_file, settings.signing_kid)
            print(json.dumps(key.public_jwks, indent=2))
            return
        app = create_app(settings)
    except ValidationError as exc:
        _refuse(explain_settings(exc))
    except (GatewayConfigError, SettingsError) as exc:
        _refuse(str(exc))
    serve(app, host=settings.host, port=settings.port)


def _refuse(message: str) -> NoReturn:
    print(f"conveyor-gateway: refusing to start:\n{message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


if __name__ == "__main__":
    main()
