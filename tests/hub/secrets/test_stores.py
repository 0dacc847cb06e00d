"""Both secret stores keep the same promises: what is put is got back, `create` writes only once,
`delete` forgets (and forgetting twice is fine), a path that could escape is refused; the local
store keeps only ciphertext, in 0600 files, readable with its own key alone."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from hub.secrets.store import LocalEncryptedStore, SecretStoreUnavailable, VaultStore


@pytest.fixture(params=["local", "vault"])
def store(request, openbao, tmp_path: Path) -> LocalEncryptedStore | VaultStore:
    if request.param == "local":
        return LocalEncryptedStore(tmp_path / "data")
    return VaultStore(addr=openbao.addr, token=openbao.token, mount="secret", namespace=None, timeout=5)


def a_path() -> str:
    return f"powernode/test/{uuid.uuid4().hex}"


async def test_what_is_put_is_got_back_and_a_later_put_replaces_it(store):
    path = a_path()

    await store.put(path, {"bearer": "pngb_one"})
    first = await store.get(path)
    await store.put(path, {"bearer": "pngb_two", "n": 2})

    assert first == {"bearer": "pngb_one"}
    assert await store.get(path) == {"bearer": "pngb_two", "n": 2}
    assert await store.get(a_path()) is None
    await store.delete(path)


async def test_create_writes_only_the_first_time(store):
    path = a_path()

    first = await store.create(path, {"v": 1})
    second = await store.create(path, {"v": 2})

    assert (first, second) == (True, False)
    assert await store.get(path) == {"v": 1}
    await store.delete(path)


async def test_delete_forgets_only_that_secret_and_twice_is_no_error(store):
    gone, kept = a_path(), a_path()
    await store.put(gone, {"v": "gone"})
    await store.put(kept, {"v": "kept"})

    await store.delete(gone)
    await store.delete(gone)

    assert await store.get(gone) is None
    assert await store.get(kept) == {"v": "kept"}
    assert await store.create(gone, {"v": "again"}) is True
    await store.delete(gone)
    await store.delete(kept)


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "a/../../b", "spaces are not allowed", ""])
async def test_a_path_that_could_escape_is_refused(store, path):
    for call in (
        store.get(path),
        store.put(path, {"v": 1}),
        store.create(path, {"v": 1}),
        store.delete(path),
    ):
        with pytest.raises(ValueError, match="invalid secret path"):
            await call


async def test_the_local_store_keeps_only_ciphertext_in_0600_files(tmp_path: Path):
    store = LocalEncryptedStore(tmp_path / "data")
    await store.put("grants/one", {"bearer": "pngb_plaintext_secret"})
    await store.create("grants/two", {"bearer": "pngb_other_secret"})

    files = sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file())

    assert sorted(p.relative_to(tmp_path / "data").as_posix() for p in files) == [
        "secrets.key",
        "secrets/grants/one.enc",
        "secrets/grants/two.enc",
    ]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    assert not any(b"pngb_" in p.read_bytes() for p in files)


async def test_the_local_store_reads_with_its_own_key_only(tmp_path: Path):
    await LocalEncryptedStore(tmp_path / "data").put("grants/one", {"bearer": "pngb_x"})
    reopened = LocalEncryptedStore(tmp_path / "data")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "secrets").symlink_to(tmp_path / "data" / "secrets")
    stranger = LocalEncryptedStore(tmp_path / "other")

    assert await reopened.get("grants/one") == {"bearer": "pngb_x"}
    with pytest.raises(SecretStoreUnavailable, match="cannot be decrypted with this key") as refused:
        await stranger.get("grants/one")
    assert "pngb_x" not in str(refused.value)


def test_a_store_shows_where_it_is_never_its_key_or_token(openbao, tmp_path: Path):
    local = LocalEncryptedStore(tmp_path / "data")
    vault = VaultStore(addr=openbao.addr, token=openbao.token, mount="secret", namespace=None, timeout=5)

    assert repr(local) == f"LocalEncryptedStore(root={str(tmp_path / 'data' / 'secrets')!r})"
    assert repr(vault) == f"VaultStore(addr={openbao.addr!r}, mount='secret')"
    assert (tmp_path / "data" / "secrets.key").read_text().strip() not in repr(local)
    assert openbao.token not in repr(vault)
