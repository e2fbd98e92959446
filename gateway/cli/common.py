"""What every ``conduit`` command shares: its common flags, the settings they select, and
running database work with one operator-readable line for an unreachable database.

Imports no command module (they all import this one), so the CLI package has no cycle.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.config import Overrides, Settings, load_settings
from gateway.db import migrate
from gateway.errors import ConduitError
from gateway.keys import load_keyring

if TYPE_CHECKING:
    from gateway.services import Services

T = TypeVar("T")


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="F", help="configuration file (TOML)")
    common.add_argument("--data-dir", type=Path, metavar="D", help="data directory")
    return common


def settings_from(args: argparse.Namespace, *, portal_tls: bool | None = None) -> Settings:
    return load_settings(
        args.config,
        Overrides(
            data_dir=args.data_dir,
            portal_listen=getattr(args, "portal_listen", None),
            ssh_listen=getattr(args, "ssh_listen", None),
            portal_tls=portal_tls,
        ),
    )


def run_db(func: Callable[[], Awaitable[T]]) -> T:
    """Run a database coroutine; unreachable servers become one operator-readable line."""
    try:
        return asyncio.run(func())  # type: ignore[arg-type]
    except BrokenPipeError:
        raise  # our reader left (`| head`): not the database's fault; the CLI ends quietly
    except (OperationalError, DBAPIError, OSError) as exc:
        # str(exc) may hold SQL but never the URL's password; keep only the first line.
        first = str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConduitError(f"cannot use the database: {first}") from None


def with_services(args: argparse.Namespace, work: Callable[[Services], Awaitable[T]]) -> T:
    """Run ``work`` against a full ``Services`` of this installation (keys, current schema)."""
    from gateway.services import Services

    settings = settings_from(args)
    keys = load_keyring(settings)

    async def run() -> T:
        services = Services.build(settings, keys)
        try:
            await migrate.require_current(services.engine)
            return await work(services)
        finally:
            await services.close()

    return run_db(run)
