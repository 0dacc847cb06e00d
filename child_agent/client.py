"""The agent's calls to the parent: accept (the token in the body) and, over mutual TLS, the
cluster_member's replication credential.

The parent is trusted only through the CA chain in the payload, never the system trust store: the
token must not reach anyone else. Transient failures (no route yet, resets, timeouts, 5xx, 429) are
retried with backoff until the caller's deadline; any other answer is final.
"""

import logging
import ssl
import time
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from child_agent import USER_AGENT
from child_agent.backoff import Backoff
from child_agent.errors import AgentError, ParentRefused, PayloadInvalid, describe_validation, one_line
from shared_contract.accept import AcceptRequest, AcceptResponseData
from shared_contract.envelope import SuccessEnvelope
from shared_contract.payload import SpawnPayload
from shared_contract.replication import ReplicationCredential

log = logging.getLogger(__name__)

API_BASE = "/api/v1/system/federation_api"
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# The parent prepares the credential in a background job; these answers mean "not yet".
CREDENTIAL_NOT_READY = frozenset({425, 503})  # 409 ALREADY_DELIVERED is final
DataT = TypeVar("DataT", bound=BaseModel)


class _Call(NamedTuple):
    name: str  # what failed, for messages
    sends: str  # what the agent would have sent, for the TLS refusal


_ACCEPT = _Call("accept", "refused to send the acceptance token")
_CREDENTIAL = _Call("replication credential request", "refused to request the replication credential")


class _Transient(NamedTuple):
    reason: str
    retry_after: float | None


def tls_context(ca_pem: str, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Verify the parent against ca_pem alone; present client_cert (certificate, key) if given."""
    if not ca_pem:
        log.warning("the payload has no ca_pem; verifying the parent against the system trust store")
    try:
        context = ssl.create_default_context(cadata=ca_pem or None)
    except ssl.SSLError as e:
        raise PayloadInvalid("ca_pem in the payload is not a usable CA certificate") from e
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return context


class ParentClient:
    """One parent, reached at the payload's parent_url (or the federation URL it named at accept),
    always verified against the payload's CA; use it as a context manager."""

    def __init__(
        self,
        payload: SpawnPayload,
        *,
        client_cert: tuple[Path, Path] | None = None,
        base_url: str | None = None,
    ) -> None:
        # base_url: the parent's federation URL from the accept answer, for calls with client_cert.
        self.base_url = (base_url or payload.parent_url).rstrip("/")
        scheme = urlsplit(self.base_url).scheme
        if scheme != "https" and not (scheme == "http" and payload.allows_plain_http):
            raise PayloadInvalid(
                f"refusing to contact the parent over {scheme or 'no scheme'}: parent_url must be https "
                f"(plain http only for the local/dev provisioners, not {payload.provisioner!r})"
            )
        self._http = httpx.Client(
            verify=tls_context(payload.ca_pem, client_cert), headers={"User-Agent": USER_AGENT}
        )

    def __repr__(self) -> str:
        return f"ParentClient(base_url='{self.base_url}')"

    def __enter__(self) -> "ParentClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def accept(self, request: AcceptRequest, *, backoff: Backoff) -> AcceptResponseData:
        """POST accept until a final answer or the deadline."""
        response = self._call(_ACCEPT, "POST", "/accept", backoff=backoff, body=request.to_wire())
        return _parse(response, AcceptResponseData, _ACCEPT)

    def replication_credential(self, *, backoff: Backoff) -> ReplicationCredential:
        """GET the one-time replication credential, waiting while the parent is still preparing it."""
        response = self._call(
            _CREDENTIAL, "GET", "/replication_credential", backoff=backoff, retry_also=CREDENTIAL_NOT_READY
        )
        return _parse(response, ReplicationCredential, _CREDENTIAL)

    def _call(
        self,
        call: _Call,
        method: str,
        path: str,
        *,
        backoff: Backoff,
        body: dict[str, Any] | None = None,
        retry_also: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        attempts = 0
        while True:
            attempts += 1
            outcome = self._attempt(call, method, path, body, retry_also, backoff)
            if isinstance(outcome, httpx.Response):
                return outcome
            delay = backoff.next_delay(outcome.retry_after)
            if delay is None:
                raise AgentError(
                    f"{call.name} to {self.base_url} gave up after {attempts} attempts in "
                    f"{backoff.elapsed:.0f}s; last error: {outcome.reason}"
                )
            log.info(
                "%s: attempt %d failed (%s); retrying in %.1fs", call.name, attempts, outcome.reason, delay
            )
            time.sleep(delay)

    def _attempt(
        self,
        call: _Call,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        retry_also: frozenset[int],
        backoff: Backoff,
    ) -> httpx.Response | _Transient:
        # A blackholed parent must not hold a short deadline hostage for the whole connect timeout.
        connect = min(CONNECT_TIMEOUT, max(1.0, backoff.deadline - time.monotonic()))
        try:
            response = self._http.request(
                method,
                self.base_url + API_BASE + path,
                json=body,
                timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=connect),
            )
        except httpx.TransportError as e:
            if (refused := _certificate_rejected(e)) is not None:
                raise ParentRefused(
                    f"{call.sends}: the parent's TLS certificate at {self.base_url} does not verify "
                    f"against the CA in the payload ({refused.verify_message or refused.reason})"
                ) from None
            return _Transient(one_line(str(e) or type(e).__name__, 200), None)
        if response.is_success:
            return response
        status, message = response.status_code, _error_message(response)
        if status >= 500 or status == 429 or status in retry_also:
            return _Transient(f"HTTP {status}: {message}", _retry_after(response))
        raise ParentRefused(f"the parent rejected the {call.name}: HTTP {status}: {message}")


def _certificate_rejected(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """Find a certificate verification failure in httpx's chain of wrapped exceptions."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _error_message(response: httpx.Response) -> str:
    """The envelope's ``error``, else the reason phrase (a proxy's HTML page is not a message)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return one_line(error if isinstance(error, str) and error else response.reason_phrase, 300)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _parse(response: httpx.Response, model: type[DataT], call: _Call) -> DataT:
    try:
        return SuccessEnvelope[model].model_validate_json(response.content).data  # type: ignore[valid-type]
    except ValidationError as e:
        raise ParentRefused(
            f"the parent's answer to the {call.name} (HTTP {response.status_code}) is not a valid "
            f"Powernode response: {describe_validation(e)}"
        ) from None
