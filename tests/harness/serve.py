"""`powernode-hub serve` as a real subprocess, for tests that need the whole process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

from hub.embedded.process import free_port
from hub.localhub import serve_command

_CONFIG_PREFIXES = ("DATABASE_", "REDIS_", "VAULT_", "POWERNODE_")


class ServeProcess:
    """Started with nothing configured (the embedded default), whatever the test session uses."""

    def __init__(
        self, data_dir: Path, port: int, federation_port: int | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.port = port
        self.federation_port = federation_port or free_port()
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_file = data_dir.with_name(data_dir.name + ".stderr")
        self.process: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"ServeProcess(data_dir='{self.data_dir}', port={self.port}, pid={pid})"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)} | self.extra_env
        with self.stderr_file.open("a") as stderr:
            self.process = subprocess.Popen(
                serve_command(self.data_dir, self.port, self.federation_port),
                cwd=self.data_dir.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def read_line(self, timeout: float = 60.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"serve printed nothing in {timeout}s:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.stderr_file.read_text() if self.stderr_file.exists() else ""

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """The finalizer: whatever the test did, the process ends (its servers are the test's)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
