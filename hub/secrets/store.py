"""Where secrets live: Vault/OpenBao KV v2 when configured, else a local encrypted store."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cryptography.fernet import Fernet, InvalidToken

from hub.config import Settings
from hub.exceptions import ServiceUnavailable

log = logging.getLogger(__name__)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/]{1,200}$")


class SecretStoreUnavailable(ServiceUnavailable):
    code = "SECRET_STORE_UNAVAILABLE"


class SecretStore(Protocol):
    kind: str

    async def put(self, path: str, data: dict[str, Any]) -> None: ...

    async def create(self, path: str, data: dict[str, Any]) -> bool: ...

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def delete(self, path: str) -> None: ...


def _check_path(path: str) -> str:
    if not _SAFE_PATH.match(path) or ".." in path or path.startswith("/"):
        raise ValueError(f"invalid secret path {path!r}")
    return path


def _private_temp(path: Path, data: bytes) -> Path:
    """A complete 0600 copy of `data` beside `path`, named for this writer alone."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:  # a nearly full disk may take part of a write
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial secret behind
        raise
    finally:
        os.close(fd)
    return tmp


def write_private_file(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte on."""
    os.replace(_private_temp(path, data), path)


def create_private_file(path: Path, data: bytes) -> bool:
    """Like write_private_file, but only if `path` does not exist; False when another writer was first.

    A hard link never replaces its target, so of two processes starting at once exactly one
    creates the file and the other then reads what the first wrote."""
    tmp = _private_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock across the processes sharing a data dir, for first-start work on its files."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class LocalEncryptedStore:
    """Fernet-encrypted files under `<data_dir>/secrets/`; the key file is mode 0600."""

    kind = "local"

    def __init__(self, data_dir: Path):
        self.root = data_dir / "secrets"
        key_file = data_dir / "secrets.key"
        if not key_file.exists():
            # Two processes starting at once on one data dir must end up with the same key.
            create_private_file(key_file, Fernet.generate_key())
        self._fernet = Fernet(key_file.read_bytes().strip())

    def __repr__(self) -> str:
        return f"LocalEncryptedStore(root={str(self.root)!r})"

    def _file(self, path: str) -> Path:
        return self.root / (_check_path(path) + ".enc")

    async def put(self, path: str, data: dict[str, Any]) -> None:
        write_private_file(self._file(path), self._fernet.encrypt(json.dumps(data).encode()))

    async def create(self, path: str, data: dict[str, Any]) -> bool:
        return create_private_file(self._file(path), self._fernet.encrypt(json.dumps(data).encode()))

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            sealed = self._file(path).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken as e:
            raise SecretStoreUnavailable(f"secret at {path} cannot be decrypted with this key") from e

    async def delete(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)


class VaultStore:
    """HashiCorp Vault or OpenBao, KV v2; hvac is blocking, so every call runs in a thread."""

    kind = "vault"

    def __init__(self, *, addr: str, token: str, mount: str, namespace: str | None, timeout: float):
        # Imported here, not with the module: hvac pulls in requests, seconds of start-up for a
        # hub that never talks to Vault (every hub on the local store, a child in an emulated guest).
        import hvac

        self.addr = addr
        self.mount = mount
        self._client = hvac.Client(url=addr, token=token, namespace=namespace, timeout=timeout)

    def __repr__(self) -> str:
        return f"VaultStore(addr={self.addr!r}, mount={self.mount!r})"

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        import hvac.exceptions
        import requests

        try:
            return await asyncio.to_thread(fn, mount_point=self.mount, **kwargs)
        except hvac.exceptions.InvalidPath:
            return None
        except (hvac.exceptions.VaultError, requests.RequestException, OSError) as e:
            raise SecretStoreUnavailable(f"Vault at {self.addr} is unavailable ({type(e).__name__})") from e

    async def put(self, path: str, data: dict[str, Any]) -> None:
        kv = self._client.secrets.kv.v2
        await self._call(kv.create_or_update_secret, path=_check_path(path), secret=data)

    async def create(self, path: str, data: dict[str, Any]) -> bool:
        """Check-and-set 0: written only if the path holds nothing yet; False when someone was first."""
        import hvac.exceptions

        kv = self._client.secrets.kv.v2
        try:
            await self._call(kv.create_or_update_secret, path=_check_path(path), secret=data, cas=0)
        except SecretStoreUnavailable as e:
            cause = e.__cause__
            if isinstance(cause, hvac.exceptions.InvalidRequest) and "check-and-set" in str(cause):
                return False  # another hub wrote it first
            raise
        return True

    async def get(self, path: str) -> dict[str, Any] | None:
        kv = self._client.secrets.kv.v2
        response = await self._call(
            kv.read_secret_version, path=_check_path(path), raise_on_deleted_version=False
        )
        if not response:
            return None
        return response["data"]["data"]

    async def delete(self, path: str) -> None:
        kv = self._client.secrets.kv.v2
        await self._call(kv.delete_metadata_and_all_versions, path=_check_path(path))


def open_store(settings: Settings) -> SecretStore:
    vault = settings.vault
    if vault.addr:
        if vault.token is None:
            raise ValueError("VAULT_ADDR is set but VAULT_TOKEN is not")
        return VaultStore(
            addr=vault.addr,
            token=vault.token.get_secret_value(),
            mount=vault.kv_mount,
            namespace=vault.namespace,
            timeout=vault.timeout_seconds,
        )
    log.warning(
        "secrets go to the local encrypted store in %s (set VAULT_ADDR for Vault/OpenBao)",
        settings.data_dir,
    )
    return LocalEncryptedStore(settings.data_dir)
