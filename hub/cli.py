"""`powernode-hub`: the hub's command line (DESIGN §11)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings

from hub import dbroles, migrate, operator_cli
from hub.config import Settings, UnsafeProduction
from hub.database import create_engine, create_sessionmaker, session_scope
from hub.embedded.process import PRIVATE_UMASK, EmbeddedError, harden_data_dir
from hub.embedded.services import EmbeddedServices
from hub.federation import bootstrap
from hub.observability import logging as hub_logging
from hub.observability.redaction import secret_values
from hub.operators import service as operators_service
from hub.operators.permissions import ALL_PERMISSIONS, ROLES
from hub.supervision.serve import StartupError, run_worker, serve

log = logging.getLogger("hub.cli")

SERVE_HELP = """\
With nothing configured this is the embedded default: PostgreSQL and Redis are started in the data
dir, the schema is migrated, and on first start an operator token with every permission is written
to DIR/operator-token (mode 0600). With DATABASE_URL (and REDIS_URL) set, the hub uses those and
only checks that the schema is at head: run `powernode-hub migrate` first.
Delete DIR/operator-token to have the next start mint a new token.
With --no-worker it serves the API only: run `powernode-hub worker` processes beside it (any number
of each may share one PostgreSQL, Redis and data dir).
Stops cleanly, with everything it started, on Ctrl-C or SIGTERM."""
WORKER_HELP = """\
Runs the jobs and cron jobs (each cron job runs once per period, however many workers run) against
DATABASE_URL and REDIS_URL. Stops on Ctrl-C or SIGTERM."""


def environment_help(model: type[BaseModel] = Settings, prefix: str = "POWERNODE_") -> str:
    """Every setting as its environment variable, with its default: generated, so none is missing."""
    lines = []
    for name, field in model.model_fields.items():
        group = field.default_factory
        if isinstance(group, type) and issubclass(group, BaseSettings):
            lines.append(environment_help(group, group.model_config.get("env_prefix", "")))
            continue
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None or isinstance(default, SecretStr) else default
        lines.append(f"  {(prefix + name).upper():<48} {shown}")
    body = "\n".join(lines)
    return body if model is not Settings else "environment (or ./.env), with defaults:\n" + body


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powernode-hub", description="Powernode Spawn hub: spawns child platforms."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser(
        "serve",
        help="run the API and the worker",
        description=SERVE_HELP,
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_dir_option(serve_cmd)
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    serve_cmd.add_argument(
        "--federation-port",
        type=int,
        help="port of the federation HTTPS (mTLS) listener (default: --port + 1)",
    )
    serve_cmd.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; `powernode-hub worker` runs the jobs (needs DATABASE_URL, REDIS_URL)",
    )
    serve_cmd.set_defaults(handler=_serve)

    worker_cmd = commands.add_parser(
        "worker",
        help="run only the job worker (needs DATABASE_URL and REDIS_URL)",
        description=WORKER_HELP,
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker_cmd.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve this process's metrics on P (default: not served)",
    )
    worker_cmd.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="H", help="address for --metrics-port (%(default)s)"
    )
    worker_cmd.set_defaults(handler=_worker)

    migrate_cmd = commands.add_parser(
        "migrate",
        help="migrate the database schema",
        description="Migrate DATABASE_URL, or with nothing configured the embedded PostgreSQL "
        "of the data dir (which must not be in use by a running hub).",
    )
    _data_dir_option(migrate_cmd)
    migrate_cmd.add_argument("--revision", default="head", help="target revision (%(default)s)")
    migrate_cmd.set_defaults(handler=_migrate)

    bootstrap_cmd = commands.add_parser(
        "bootstrap-database",
        help="create the hub's owner role and database on an external PostgreSQL (as a superuser)",
        description="With a superuser's URL in POWERNODE_BOOTSTRAP_SUPERUSER_URL: create the role "
        "and password named in DATABASE_URL (no superuser, no CREATEROLE), its database, and the "
        "narrow replication admin role and functions cluster_member needs. Run once, before migrate "
        "(`migrate` does it first itself when POWERNODE_BOOTSTRAP_SUPERUSER_URL is set).",
    )
    bootstrap_cmd.set_defaults(handler=_bootstrap_database)

    token_cmd = commands.add_parser("operator-token", help="manage operator tokens")
    token_sub = token_cmd.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create",
        help="mint an operator token (printed once)",
        description="Mint an operator token against DATABASE_URL, or the embedded database of the "
        f"data dir. Permissions: {', '.join(ALL_PERMISSIONS)}.",
    )
    _data_dir_option(create)
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--permission", action="append", default=[], help="repeatable")
    create.add_argument("--role", choices=sorted(ROLES), help="a bundle: viewer or operator")
    create.add_argument(
        "--expires-in-days", type=int, metavar="D", help="the token stops working after D days (1-3650)"
    )
    create.set_defaults(handler=_operator_token_create)
    operator_cli.register_token_commands(token_sub)

    operator_cli.register(commands)
    return parser


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the embedded default keeps its data (env POWERNODE_DATA_DIR, else ./.powernode)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "func"):  # operator commands talk to a running hub over its API
        try:
            args.func(args)
        except operator_cli.CliError as e:
            return _fail(str(e))
        return 0
    handler: Callable[[argparse.Namespace, Settings], None] = args.handler
    try:
        settings = _settings(args)
        hub_logging.configure(
            level=settings.log_level, fmt=settings.log_format, secrets=secret_values(settings)
        )
        # Nothing the hub, its servers or its children write is for other users (issue 11 #15).
        os.umask(PRIVATE_UMASK)
        harden_data_dir(settings.data_dir)
        handler(args, settings)
    except (StartupError, EmbeddedError, UnsafeProduction) as e:
        return _fail(str(e))
    except ValidationError as e:
        first = e.errors()[0]
        return _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for people; the traceback at DEBUG for developers
        log.debug("unexpected error", exc_info=True)
        return _fail(f"{type(e).__name__}: {e}")
    return 0


def _fail(message: str) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    shown = operator_cli.printable(hub_logging.REDACTOR.text(first_line))
    print(f"powernode-hub: error: {shown}", file=sys.stderr)
    return 1


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir.expanduser().absolute()})
    return settings


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    serve(
        settings,
        host=args.host,
        port=args.port,
        federation_port=args.federation_port,
        worker=not args.no_worker,
        on_start=[bootstrap.ingest_first_run],
    )


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    address = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None
    if address and settings.metrics_token_required and not _loopback(args.metrics_host):
        # The worker's metrics server has no authentication of its own: with a token required it stays
        # on this host (a local scraper, or the hub's /metrics with a token).
        print(
            f"--metrics-host {args.metrics_host} would serve the worker's metrics without a token; "
            "POWERNODE_METRICS_REQUIRE_TOKEN is on: use a loopback address (127.0.0.1 or ::1)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    run_worker(settings, metrics_address=address)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _operator_token_create(args: argparse.Namespace, settings: Settings) -> None:
    async def create(url: str) -> str:
        runtime_engine = create_engine(url)
        try:
            async with session_scope(create_sessionmaker(runtime_engine)) as session:
                _, plaintext = await operators_service.create_operator_token(
                    session,
                    name=args.name,
                    permissions=args.permission,
                    role=args.role,
                    expires_in_days=args.expires_in_days,
                )
        finally:
            await runtime_engine.dispose()
        return plaintext

    if settings.embedded:
        with EmbeddedServices(settings.data_dir, redis=False) as services:
            plaintext = asyncio.run(create(services.database_url))
    else:
        plaintext = asyncio.run(create(settings.database_url()))
    print("Operator token (shown ONCE; store it now):", file=sys.stderr)
    print(plaintext)


def _bootstrap_database(args: argparse.Namespace, settings: Settings) -> None:
    superuser_url = os.environ.get("POWERNODE_BOOTSTRAP_SUPERUSER_URL")
    if not superuser_url or settings.embedded:
        print(
            "bootstrap-database needs DATABASE_URL (the hub's role) and "
            "POWERNODE_BOOTSTRAP_SUPERUSER_URL (a superuser, used only now); "
            "the embedded default bootstraps itself",
            file=sys.stderr,
        )
        raise SystemExit(2)
    database = asyncio.run(dbroles.bootstrap(superuser_url, settings.database_url()))
    print(f"Database {database} is owned by the hub's role; now run `powernode-hub migrate`")


def _migrate(args: argparse.Namespace, settings: Settings) -> None:
    if not settings.embedded and os.environ.get("POWERNODE_BOOTSTRAP_SUPERUSER_URL"):
        _bootstrap_database(args, settings)
    if not settings.embedded:
        asyncio.run(migrate.upgrade(settings.database_url(), args.revision))
        print(f"Migrated DATABASE_URL to {args.revision}")
        return
    with EmbeddedServices(settings.data_dir, redis=False) as services:
        asyncio.run(migrate.upgrade(services.database_url, args.revision))
    print(f"Migrated the embedded database in {settings.data_dir} to {args.revision}")


if __name__ == "__main__":
    sys.exit(main())
