"""Log output: JSON lines or text, the request and peer on each line, and no secret, wherever it hides."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from hub.config import DatabaseSettings, Settings, VaultSettings
from hub.observability import logging as hub_logging
from hub.observability.context import RequestContextMiddleware, binds_peer
from hub.observability.redaction import secret_values
from hub.secrets import tokens

log = logging.getLogger("tests.observability")
VAULT_TOKEN = "hvs.CAESIJfakeVaultTokenValue42"
DB_PASSWORD = "Zq8-not-a-shape-4you"
SETTINGS = Settings(
    database=DatabaseSettings(url=SecretStr(f"postgresql://hub:{DB_PASSWORD}@db.internal:5432/hub")),
    vault=VaultSettings(addr="https://vault.internal", token=SecretStr(VAULT_TOKEN)),
)


def _pem(private_format: serialization.PrivateFormat) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode()


def _secrets() -> dict[str, tuple[str, str]]:
    """name -> (text that carries the secret, the part that must never be printed)."""
    found = {}
    for prefix in (tokens.ACCEPTANCE_TOKEN_PREFIX, tokens.OPERATOR_TOKEN_PREFIX, tokens.GRANT_BEARER_PREFIX):
        token = tokens.issue(prefix).plaintext
        found[prefix] = (f"token {token} seen", token.split("_", 2)[2])
    for name, fmt in (
        ("pkcs8", serialization.PrivateFormat.PKCS8),
        ("ec", serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        pem = _pem(fmt)
        found[name] = (f"key:\n{pem}", pem.splitlines()[2])
    found["password="] = ("connect host=db password=hunter2-hunter2 user=hub", "hunter2-hunter2")
    found["PGPASSWORD="] = ("env PGPASSWORD=Pg-Secret-99 psql", "Pg-Secret-99")
    found["url"] = ("dsn postgresql://hub:U4l-pa55@db:5432/hub", "U4l-pa55")
    found["redis url"] = ("redis://:R3dis-pa55@cache:6379/0 down", "R3dis-pa55")
    found["header"] = ("headers {'authorization': 'Bearer eyJhbGciOi.J9x.sig'}", "eyJhbGciOi.J9x.sig")
    found["bearer"] = ("Authorization: Bearer abcDEF123456", "abcDEF123456")
    found["json"] = ('body {"password": "js0n-Secret", "user": "x"}', "js0n-Secret")
    # Case-insensitive matching has equivalences beyond ASCII (the long s is an s, the Kelvin
    # sign a k): still redacted.
    found["long s"] = ("connect pa\u017fsword=Long-S-pa55 user=hub", "Long-S-pa55")
    found["kelvin"] = ("set api_\u212aey=Kelvin-Secret-99 now", "Kelvin-Secret-99")
    found["vault token"] = (f"vault said no to {VAULT_TOKEN}", VAULT_TOKEN)
    found["db password"] = (f"the password is {DB_PASSWORD}", DB_PASSWORD)
    return found


SECRETS = _secrets()


@contextmanager
def captured(
    fmt: Literal["auto", "json", "text"], stream: io.StringIO | None = None
) -> Iterator[io.StringIO]:
    """The hub's logging set up as `powernode-hub` does, writing to a string, undone afterwards."""
    stream = stream or io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = hub_logging.configure(fmt=fmt, secrets=secret_values(SETTINGS), stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.fixture(params=["json", "text"])
def output(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    with captured(request.param) as stream:
        yield stream


def _log_everywhere(carrier: str) -> None:
    log.warning(carrier)
    log.warning("in args: %s", carrier)
    log.warning("in extra", extra={"detail": carrier, "nested": {"items": [carrier]}})
    try:
        raise ValueError(carrier)
    except ValueError:
        log.exception("in an exception")


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_no_secret_reaches_the_output(output, kind):
    carrier, secret = SECRETS[kind]

    _log_everywhere(carrier)

    text = output.getvalue()
    assert secret not in text
    assert text.count("[REDACTED") >= 4 + (1 if "\n" in carrier else 0)


def test_secret_fields_and_secretstr_values_lose_their_value(output):
    log.warning(
        "with fields",
        extra={"password": "plain-Pw-123", "db": {"api_key": "k-1234567"}, "token": SecretStr("x-secret-1")},
    )
    log.warning("a SecretStr as an argument: %s", SecretStr("arg-secret-1"))

    text = output.getvalue()
    for secret in ("plain-Pw-123", "k-1234567", "x-secret-1", "arg-secret-1"):
        assert secret not in text


def _log_an_event_and_an_error() -> None:
    log.info("hello %s", "world", extra={"peer_count": 3})
    try:
        raise RuntimeError("multi\nline")
    except RuntimeError:
        log.exception("failed")


def test_json_is_one_event_per_line_with_the_standard_fields():
    with captured("json") as output:
        _log_an_event_and_an_error()

    lines = output.getvalue().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert set(first) >= {"time", "level", "logger", "message"} and first["time"].endswith("+00:00")
    assert (first["level"], first["logger"], first["message"]) == ("INFO", log.name, "hello world")
    assert first["peer_count"] == 3
    assert "Traceback" in second["exception"] and len(lines) == 2


def test_text_is_a_readable_line_with_the_fields_after_the_message():
    with captured("text") as output:
        _log_an_event_and_an_error()

    lines = output.getvalue().splitlines()
    assert lines[0].endswith(f"INFO {log.name}: hello world peer_count=3")
    assert lines[1].endswith("failed") and lines[2].startswith("Traceback")


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, expected in ((Terminal(), "TextFormatter"), (io.StringIO(), "JsonFormatter")):
        with captured("auto", stream):
            [handler] = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
            assert type(handler.formatter).__name__ == expected


def test_uvicorn_lines_go_through_the_same_handler(output):
    uvicorn.Config(app=FastAPI())  # installs uvicorn's own handlers, as serve does
    hub_logging.route_uvicorn_loggers()

    logging.getLogger("uvicorn.error").warning("started with Authorization: Bearer uv-secret-99")

    text = output.getvalue()
    assert "uvicorn.error" in text and "uv-secret-99" not in text


class _Identity:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id


async def test_request_lines_carry_the_request_id_and_the_peer_bound_in_a_threadpool_dependency():
    @binds_peer
    def identify() -> _Identity:  # sync: FastAPI runs it in a thread, on a copy of the context
        return _Identity("6f1c0000-0000-4000-8000-000000000001")

    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.get("/peer")
    async def peer(identity: _Identity = Depends(identify)) -> dict:
        log.info("handled")
        return {}

    with captured("json") as output:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            given = await http.get("/peer", headers={"X-Request-ID": "req-42"})
            minted = await http.get("/peer")
            forged = await http.get("/peer", headers={"X-Request-ID": "bad id"})

    events = [json.loads(line) for line in output.getvalue().splitlines() if '"handled"' in line]
    assert given.headers["x-request-id"] == "req-42" and events[0]["request_id"] == "req-42"
    assert events[0]["peer_id"] == "6f1c0000-0000-4000-8000-000000000001"
    assert (
        len(minted.headers["x-request-id"]) == 16
        and events[1]["request_id"] == minted.headers["x-request-id"]
    )
    assert forged.headers["x-request-id"] != "bad id" and events[2]["request_id"] != "bad id"
