"""One line that lets figures from two machines be compared: fixed work, timed here and now.

A pure-Python loop (what the hub's request handling is bound by), SHA-256 over 64 MiB (C code,
memory bandwidth) and EC P-256 signatures (the CA's work). Figures from another machine scale
roughly by the ratio of these; verdicts never use them (every verdict is a ratio in the same run).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec


def _best(fn: Callable[[], object], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def _loop() -> None:
    total = 0
    for i in range(2_000_000):
        total += i * i % 7
    assert total >= 0


def _sha() -> None:
    hashlib.sha256(b"\0" * (64 << 20)).digest()


_KEY = ec.generate_private_key(ec.SECP256R1())


def _sign() -> None:
    for _ in range(200):
        _KEY.sign(b"calibration", ec.ECDSA(hashes.SHA256()))


def line() -> str:
    loop, sha, sign = _best(_loop), _best(_sha), _best(_sign)
    model = "?"
    try:
        for row in open("/proc/cpuinfo"):
            if row.startswith("model name"):
                model = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {os.cpu_count()} cores, {model}, Python {platform.python_version()}; "
        f"calibration: python loop 2M {loop * 1000:.0f} ms, sha256 64 MiB {sha * 1000:.0f} ms, "
        f"P-256 sign {sign / 200 * 1e6:.0f} µs"
    )
