"""Hubs starting at once on one data dir, or one Vault, end up with one CA and one secrets key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hub.secrets import ca as ca_service
from hub.secrets.store import LocalEncryptedStore, VaultStore

STARTERS = 4
# Each process waits for the go file, then does what a hub does first: load the CA, open the store.
_START = """
import asyncio, sys, time
from pathlib import Path
from hub.secrets import ca
from hub.secrets.store import LocalEncryptedStore
data, me = Path(sys.argv[1]), sys.argv[2]
(data.parent / f"ready-{me}").touch()
while not (data.parent / "go").exists():
    time.sleep(0.001)
print(ca.cert_fingerprint(ca._load_or_create_files(data / "ca", "test CA").cert))
store = LocalEncryptedStore(data)
asyncio.run(store.put(f"from/{me}", {"me": me}))
"""


def test_processes_starting_at_once_share_one_local_ca_and_one_secrets_key(tmp_path: Path):
    data = tmp_path / "data"
    starters = [
        subprocess.Popen([sys.executable, "-c", _START, str(data), str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(STARTERS)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < STARTERS and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=60)[0].strip() for p in starters]

    assert [p.returncode for p in starters] == [0] * STARTERS
    on_disk = ca_service.cert_fingerprint(
        ca_service._from_pems(
            (data / "ca" / "ca.key").read_bytes(), (data / "ca" / "ca.crt").read_bytes()
        ).cert
    )
    assert set(outputs) == {on_disk}
    store = LocalEncryptedStore(data)  # every process wrote with the key that is on disk
    assert [asyncio.run(store.get(f"from/{i}")) for i in range(STARTERS)] == [
        {"me": str(i)} for i in range(STARTERS)
    ]


async def test_hubs_starting_at_once_on_one_vault_adopt_one_ca(openbao, tmp_path: Path):
    def store() -> VaultStore:
        return VaultStore(addr=openbao.addr, token=openbao.token, mount="secret", namespace=None, timeout=5)

    await store().delete(ca_service.CA_SECRET_PATH)  # as on a fresh Vault

    loaded = await asyncio.gather(
        *(ca_service.load_or_create(data_dir=tmp_path, store=store()) for _ in range(STARTERS))
    )

    stored = await store().get(ca_service.CA_SECRET_PATH)
    assert stored is not None
    assert {ca.chain_pem for ca in loaded} == {stored["cert_pem"]}


async def test_vault_create_is_check_and_set(openbao):
    vault = VaultStore(addr=openbao.addr, token=openbao.token, mount="secret", namespace=None, timeout=5)
    path = f"powernode/test/{uuid.uuid4().hex}"

    first = await vault.create(path, {"v": 1})
    second = await vault.create(path, {"v": 2})

    assert (first, second) == (True, False)
    assert await vault.get(path) == {"v": 1}
    await vault.delete(path)
