"""`powernode-hub serve` and `worker`: the API and the arq worker in one asyncio loop, or apart.

With nothing configured the hub is the embedded default: it starts PostgreSQL and Redis in the data
dir, migrates, and on first start writes an operator token with every permission to
`DIR/operator-token`. While it runs, `DIR/serve.json` says where it answers. With `DATABASE_URL` set
it only checks that the schema is at head, and any number of `serve --no-worker` and `worker`
processes may share database, Redis and data dir. SIGINT and SIGTERM stop everything it started."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import arq
import uvicorn
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError

from hub import migrate
from hub.config import Settings
from hub.database import session_scope
from hub.embedded.process import write_private
from hub.embedded.services import EmbeddedServices
from hub.federation import endpoints, member
from hub.main import create_app
from hub.observability import logging as hub_logging
from hub.observability import metrics
from hub.operators import service as operators_service
from hub.runtime import HubRuntime
from hub.secrets.store import exclusive_lock
from hub.supervision import announce, federation_tls, keeper
from hub.supervision.keeper import Start
from hub.worker import heartbeat_loop, worker_settings

log = logging.getLogger(__name__)

TOKEN_FILE = "operator-token"
StartHook = Callable[[HubRuntime], Awaitable[Any]]
DATA_DIR_TOKEN_NAME = "embedded-default"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_SECONDS = 20.0  # uvicorn's graceful timeout (10 s) plus a worker's bounded stop


class StartupError(RuntimeError):
    """The hub cannot start; the message is one line for the operator."""


class _ApiServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The hub owns SIGINT/SIGTERM: uvicorn would re-raise them after its own shutdown, and
        # that would end the process before PostgreSQL and Redis are stopped.
        yield


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    federation_port: int | None = None,
    worker: bool = True,
    on_start: Sequence[StartHook] = (),
) -> None:
    """Run until SIGINT/SIGTERM (`worker=False`: the API alone); raises StartupError or EmbeddedError.

    `on_start` runs once the runtime is open, before the API listens (the child-side bootstrap
    ingests its first-run result there)."""
    settings = member.configure(settings)
    settings.check_production()
    if not settings.embedded and settings.redis.url is None:
        raise StartupError("REDIS_URL must be set when DATABASE_URL is")
    if settings.embedded and not worker:
        raise StartupError("--no-worker needs DATABASE_URL and REDIS_URL (for a `worker` to run jobs)")
    listener = bind_listener(host, port)
    try:
        tls_listener = bind_listener(host, federation_port if federation_port is not None else port + 1)
    except StartupError:
        listener.close()
        raise
    services: EmbeddedServices | None = None
    # Until the loop takes over, SIGTERM interrupts like Ctrl-C so the finally below still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if settings.embedded:
            services = EmbeddedServices(settings.data_dir, redis=settings.redis.url is None)
            services.start()
            settings = with_embedded_urls(settings, services)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(
                _serve(
                    settings,
                    listener,
                    tls_listener,
                    services=services,
                    worker=worker,
                    on_start=on_start,
                )
            )
    except KeyboardInterrupt:
        log.info("interrupted; stopping")
    finally:
        with _signals_ignored():
            if services is not None:
                services.stop()
            listener.close()
            tls_listener.close()


def run_worker(settings: Settings, *, metrics_address: tuple[str, int] | None = None) -> None:
    """`powernode-hub worker`: the arq worker alone; its metrics on `metrics_address` (it has no API)."""
    settings.check_production()
    if settings.embedded or settings.redis.url is None:
        raise StartupError(
            "the worker needs DATABASE_URL and REDIS_URL (`serve` runs its own worker otherwise)"
        )
    with metrics.served_on(metrics_address):
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_worker(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn only picks it in Server.run(), which the hub does not use)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a port in use fails fast and leaves nothing behind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only for sockets made
    # with it, and without it every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def with_embedded_urls(settings: Settings, services: EmbeddedServices) -> Settings:
    database = settings.database.model_copy(update={"url": SecretStr(services.database_url)})
    update: dict[str, Any] = {"database": database}
    if services.redis is not None:
        update["redis"] = settings.redis.model_copy(update={"url": SecretStr(services.redis_url)})
    return settings.model_copy(update=update)


async def _serve(
    settings: Settings,
    listener: socket.socket,
    tls_listener: socket.socket,
    *,
    services: EmbeddedServices | None,
    worker: bool,
    on_start: Sequence[StartHook],
) -> None:
    stop = _stop_event()
    embedded = services is not None
    if not await _prepare_schema(settings, stop, embedded=embedded):
        return
    public_url_configured = bool(settings.public_url)
    settings = _with_public_url(settings, listener)
    runtime = await _open_runtime(settings, stop)
    if runtime is None:
        return
    runtime.extras[endpoints.EXTRAS_KEY] = endpoints.Listeners(
        api_url=_url("http", listener),
        federation_url=_url("https", tls_listener),
        public_url_configured=public_url_configured,
    )
    try:
        token_file = await _first_start_token(settings, runtime) if embedded else None
        for hook in on_start:
            await hook(runtime)
        app = create_app(settings, runtime)
        config = uvicorn.Config(
            app,
            log_level=settings.log_level.lower(),
            lifespan="on",
            timeout_graceful_shutdown=10,
            proxy_headers=False,  # hub/edge.py believes X-Forwarded-For only from trusted proxies
            access_log=False,  # hub/edge.py writes the access line
        )
        api = _ApiServer(config)
        with exclusive_lock(settings.data_dir / "tls.lock"):  # API processes share the data dir's files
            federation = _ApiServer(federation_tls.uvicorn_config(app, runtime, settings))
            federation.config.load()
        hub_logging.route_uvicorn_loggers()  # each uvicorn.Config installed uvicorn's own handlers
        tasks = {
            "API": lambda: api.serve(sockets=[listener]),
            "federation TLS listener": lambda: federation.serve(sockets=[tls_listener]),
            "announcer": lambda: _announce(
                api, listener, tls_listener, settings.data_dir, token_file, _guidance(settings, runtime)
            ),
        }
        # Start-up leaves ~150k long-lived objects; a full collection over them stalls every
        # request in flight for ~100 ms. Frozen, they are never scanned again.
        gc.freeze()
        kept = _kept_parts(settings, runtime, workers=worker)
        if services is not None:
            watched = services
            kept["embedded services watchdog"] = lambda: keeper.watch_embedded(watched, stop)
        await _supervise(stop, kept, tasks, api, federation)
    finally:
        announce.clear(settings.data_dir)
        await _close_runtime(runtime)


async def _worker(settings: Settings) -> None:
    stop = _stop_event()
    runtime = await _open_runtime(settings, stop)
    if runtime is None:
        return
    try:
        await _supervise(stop, _kept_parts(settings, runtime), {})
    finally:
        await _close_runtime(runtime)


async def _open_runtime(settings: Settings, stop: asyncio.Event) -> HubRuntime | None:
    """Open the runtime, waiting with backoff while the database or Redis cannot be reached (a
    cluster member's parent may be restarting); None if a signal came first."""
    delay = keeper.BACKOFF_FIRST
    while True:
        try:
            return await HubRuntime.open(settings)
        except (OSError, RedisConnectionError, RedisTimeoutError) as e:
            log.warning("cannot reach Redis or the database yet (%s); trying again in %.1fs", e, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, keeper.BACKOFF_MAX)


async def _close_runtime(runtime: HubRuntime) -> None:
    try:
        await asyncio.wait_for(runtime.close(), keeper.STOP_SECONDS)
    except (Exception, asyncio.CancelledError) as e:
        log.warning("closing connections took too long (%s); leaving them", type(e).__name__)


async def _prepare_schema(settings: Settings, stop: asyncio.Event, *, embedded: bool) -> bool:
    """Migrate (embedded) or check the schema is at head; waits while the database is unreachable.
    False if a signal came first."""
    url = settings.database_url()
    delay = keeper.BACKOFF_FIRST
    while True:
        try:
            if embedded:
                await migrate.upgrade(url)
                return True
            current, head = await migrate.current_revision(url), migrate.head_revision()
            break
        except (OSError, SQLAlchemyError) as e:
            if not _unreachable(e):
                raise StartupError(f"cannot use the database: {type(e).__name__}: {e}") from e
            log.warning("cannot reach the database yet (%s); trying again in %.1fs", e, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return False
        delay = min(delay * 2, keeper.BACKOFF_MAX)
    if current != head:
        raise StartupError(
            f"the database schema is at {current or 'nothing'}, not at {head}: "
            "run `powernode-hub migrate` first"
        )
    return True


def _unreachable(error: BaseException) -> bool:
    """A refused or dropped connection (worth waiting for), not a wrong password or a bad URL."""
    chain: BaseException | None = error
    while chain is not None:
        if isinstance(chain, ConnectionError | TimeoutError) or (
            isinstance(chain, OSError) and chain.errno is not None
        ):
            return True
        if type(chain).__name__ in ("CannotConnectNowError", "ConnectionDoesNotExistError"):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


async def _first_start_token(settings: Settings, runtime: HubRuntime) -> Path:
    """Mint the operator token once; its file (0600) is written before the row commits. Deleting
    the file rotates it: the next start mints a new one and revokes the old."""
    path = settings.data_dir / TOKEN_FILE
    if path.exists():
        return path
    try:
        async with session_scope(runtime.sessionmaker) as session:
            row, plaintext = await operators_service.create_operator_token(
                session, name=DATA_DIR_TOKEN_NAME, permissions=operators_service.ALL_PERMISSIONS
            )
            # A rotated data-dir token (its file deleted) takes its predecessors with it.
            await operators_service.revoke_by_name(session, DATA_DIR_TOKEN_NAME, keep=row.id)
            write_private(path, plaintext + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _url(scheme: str, listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - display only
    return f"{scheme}://[{shown}]:{port}" if ":" in shown else f"{scheme}://{shown}:{port}"


def _with_public_url(settings: Settings, listener: socket.socket) -> Settings:
    if settings.public_url:
        return settings
    return settings.model_copy(update={"public_url": _url("http", listener)})


async def _announce(
    api: _ApiServer,
    listener: socket.socket,
    tls_listener: socket.socket,
    data_dir: Path,
    token_file: Path | None,
    guidance: str,
) -> None:
    await api.ready.wait()
    url, federation_url = _url("http", listener), _url("https", tls_listener)
    print(f"Powernode hub: {url}", flush=True)
    print(f"Federation (mTLS): {federation_url}", flush=True)
    if token_file is not None:
        print(f"Operator token: {token_file}", flush=True)
    print(guidance, flush=True)
    # The operator commands (`powernode-hub spawn` …) find this hub through it.
    state = {"url": url, "federation_url": federation_url, "pid": os.getpid()}
    announce.write(data_dir, state)
    await asyncio.Event().wait()  # stay pending: only the API and the worker end the supervision


def _guidance(settings: Settings, runtime: HubRuntime) -> str:
    """Which URL is for whom, in one line: the first question of anyone who just started a hub."""
    bound = endpoints.listeners(runtime.extras)
    federation_url = endpoints.federation_url(settings, runtime.extras, request_host=None)
    if bound is None or bound.public_url_configured or settings.federation_url:
        return (
            f"Operators use {settings.public_url}; children use it as their parent_url and present "
            f"their client certificate at {federation_url or settings.public_url}."
        )
    return (
        f"Operators and the CLI use {bound.api_url}. As a spawn's parent_url either URL works: "
        f"children accept there and are told to enroll and heartbeat at {bound.federation_url}."
    )


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _supervise(
    stop: asyncio.Event,
    kept: dict[str, Start],
    tasks: dict[str, Start],
    *servers: uvicorn.Server,
) -> None:
    """Run `tasks` until a signal arrives or one of them ends, and the `kept` ones (workers,
    heartbeats, the embedded watchdog) started again whenever they end; then stop them all within
    SHUTDOWN_SECONDS, whatever state the dependencies are in."""
    running: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(start()): name for name, start in tasks.items()
    }
    keepers = [asyncio.ensure_future(keeper.keep_running(name, start, stop)) for name, start in kept.items()]
    signalled = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([*running, signalled], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for server in servers:
        server.should_exit = True
    for task in [*keepers, *running]:
        if running.get(task) not in ("API", "federation TLS listener"):
            task.cancel()  # the servers finish their requests (uvicorn's graceful timeout)
    everything = [signalled, *keepers, *running]
    _, late = await asyncio.wait(everything, timeout=SHUTDOWN_SECONDS)
    if late:
        log.warning("%d part(s) did not stop within %.0fs; cancelling them", len(late), SHUTDOWN_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=keeper.STOP_SECONDS)
    for task in done - {signalled}:
        error = None if task.cancelled() else task.exception()
        raise StartupError(f"the {running[task]} stopped: {error or 'no reason given'}")


def _kept_parts(settings: Settings, runtime: HubRuntime, *, workers: bool = True) -> dict[str, Start]:
    """The platform queue's worker, the primary-duties worker unless this node has none (both on
    this process's runtime), and this node's heartbeat sender, which needs no Redis."""
    parts: dict[str, Start] = {"heartbeat sender": lambda: heartbeat_loop(runtime)}
    if not workers:
        return parts
    parts["worker 1"] = keeper.worker_runner(
        lambda: arq.Worker(**worker_settings(settings, runtime=runtime, heartbeats=False))
    )
    if settings.primary_duties:
        parts["worker 2"] = keeper.worker_runner(
            lambda: arq.Worker(**worker_settings(settings, primary=True, runtime=runtime))
        )
    return parts


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While the hub stops its servers a second Ctrl-C must not leave them half-stopped."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
