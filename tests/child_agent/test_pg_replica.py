"""The cluster_member standby against a real primary, and promote through the CLI.

The tests in this module share one primary and one streaming standby (built once, from a
half-done backup a crashed earlier run left); the promotion test promotes a standby of its own, so
the tests pass alone and in any order.
"""

import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from child_agent import pg_replica
from child_agent.errors import AgentError
from child_agent.pg_local import pg_bin_dir, server_user
from hub.embedded.postgres import PostgresServer
from hub.embedded.process import pid_alive, run, stop_pid, wait_until
from shared_contract.accept import ClusterPgBlock
from shared_contract.first_run import FirstRunResult
from shared_contract.replication import ReplicationCredential
from tests.child_agent.helpers import TcpRelay, assert_one_error_line, file_mode, free_port, run_agent

SLOT = "powernode_repl_" + "ab" * 16
ROLE = "powernode_repl_" + "ab" * 8


@pytest.fixture(scope="module")
def module_dir(harness_dir: Path) -> Path:
    """Under the session's harness dir, whose finalizer also kills anything a failed test left running."""
    path = Path(tempfile.mkdtemp(prefix="child-agent-", dir=harness_dir))
    path.chmod(0o755)  # the server user must reach the data directories below
    return path


@pytest.fixture(scope="module")
def primary(module_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(module_dir / "parent-pg").init(durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def credential(primary: PostgresServer) -> ReplicationCredential:
    password = secrets.token_urlsafe(32)
    primary.psql(f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{password}'")
    primary.psql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
    return ReplicationCredential(
        slot_name=SLOT,
        primary_host="127.0.0.1",
        primary_port=primary.port,
        username=ROLE,
        password=password,
        credential_id="test-credential",
    )


@pytest.fixture(scope="module")
def half_done(module_dir: Path) -> pg_replica.Standby:
    """A standby whose directory holds a half-done backup left by a crashed earlier run."""
    data_dir = module_dir / "child" / "pg-replica" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "PG_VERSION").write_text("18\n")
    (data_dir / "half-copied-file").write_bytes(b"\0" * 1024)
    data_dir.with_name("data.basebackup-in-progress").touch()
    return pg_replica.Standby(
        data_dir, port=free_port(), pg_bin=pg_bin_dir(), owner=server_user(), login_role=ROLE
    )


@pytest.fixture(scope="module")
def standby_info(
    half_done: pg_replica.Standby, credential: ReplicationCredential
) -> Iterator[pg_replica.StandbyInfo]:
    """What the agent's first run does with it: redo the backup, start streaming."""
    try:
        yield pg_replica.ensure_standby(half_done, credential=credential)
    finally:
        _stop(half_done.data_dir)


@pytest.fixture(scope="module")
def standby(half_done: pg_replica.Standby, standby_info: pg_replica.StandbyInfo) -> pg_replica.Standby:
    """The streaming standby."""
    return half_done


def _stop(data_dir: Path) -> None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if pid_alive(pid):
        stop_pid(pid, timeout=30)


def _sql(primary: PostgresServer, port: int, sql: str) -> str:
    """SQL over TCP as the primary's superuser: the standby has the same roles."""
    return run(
        [
            pg_bin_dir() / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            primary.superuser,
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        env={"PGPASSWORD": primary.password},
    ).strip()


def test_a_half_done_backup_is_redone_and_the_standby_streams(
    primary: PostgresServer, standby_info: pg_replica.StandbyInfo, standby: pg_replica.Standby
) -> None:
    info = standby_info
    assert (info.data_dir, info.port) == (str(standby.data_dir), standby.port)
    assert not (standby.data_dir / "half-copied-file").exists()
    assert not standby.marker.exists()
    assert (standby.data_dir / "standby.signal").is_file()
    assert _sql(primary, standby.port, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    assert primary.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'") == "t"


def test_the_password_stays_where_postgresql_needs_it(
    credential: ReplicationCredential, standby: pg_replica.Standby
) -> None:
    owner = server_user()
    data = standby.data_dir.stat()
    assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (owner.uid, 0o700)
    assert file_mode(standby.data_dir / "postgresql.auto.conf") == 0o600
    assert credential.password in (standby.data_dir / "postgresql.auto.conf").read_text()
    assert credential.password not in standby.log_file.read_text()


def test_rows_written_on_the_primary_appear_on_the_standby(
    primary: PostgresServer, standby: pg_replica.Standby
) -> None:
    primary.psql("CREATE TABLE replicated (note text); INSERT INTO replicated VALUES ('from the parent')")
    assert _replayed(primary, standby, "replicated")
    assert _sql(primary, standby.port, "SELECT pg_is_in_recovery()") == "t"


def _replayed(primary: PostgresServer, standby: pg_replica.Standby, table: str) -> bool:
    def replayed() -> bool:
        try:
            return _sql(primary, standby.port, f"SELECT note FROM {table}") == "from the parent"
        except Exception:
            return False

    return wait_until(replayed, timeout=30, interval=0.1)


def test_a_rerun_reuses_the_complete_backup_without_a_credential(standby: pg_replica.Standby) -> None:
    sentinel = standby.data_dir / "agent-test-sentinel"
    sentinel.touch()
    pg_replica.ensure_standby(standby, credential=None)
    assert sentinel.exists()


def test_foreign_data_is_never_deleted(tmp_path: Path, credential: ReplicationCredential) -> None:
    data_dir = tmp_path / "someone-elses-cluster"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("18\n")
    node = pg_replica.Standby(
        data_dir, port=free_port(), pg_bin=pg_bin_dir(), owner=server_user(), login_role=ROLE
    )
    with pytest.raises(AgentError, match="not a standby base backup"):
        pg_replica.base_backup(node, credential)
    assert (data_dir / "PG_VERSION").exists()


def _write_state(state: Path, credential: ReplicationCredential, standby: pg_replica.Standby) -> Path:
    """The state a cluster_member's first run leaves behind."""
    block = ClusterPgBlock(state="ready", **credential.model_dump()).without_password()
    FirstRunResult(
        peer_id="3b0c0000-0000-4000-8000-000000000003",
        parent_peer_id="6f1c2a8e-0000-4000-8000-000000000001",
        parent_url="https://parent.example.test",
        spawn_mode="cluster_member",
        contract_version_agreed=1,
        accepted_at="2030-01-01T00:00:00+00:00",
        cluster_pg=block,
        standby=standby.info(),
        completed_at="2030-01-01T00:00:05+00:00",
    ).write(state / "first-run-result.json")
    return state


@pytest.fixture(scope="module")
def state_dir(module_dir: Path, credential: ReplicationCredential, standby: pg_replica.Standby) -> Path:
    return _write_state(module_dir / "agent-state", credential, standby)


@pytest.fixture
def own_standby(
    module_dir: Path, primary: PostgresServer, credential: ReplicationCredential
) -> Iterator[tuple[pg_replica.Standby, ReplicationCredential]]:
    """A streaming standby of its own (its own slot), for a test that promotes it."""
    slot = "powernode_repl_" + secrets.token_hex(16)
    primary.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    own = credential.model_copy(update={"slot_name": slot})
    directory = Path(tempfile.mkdtemp(prefix="own-", dir=module_dir))
    directory.chmod(0o755)  # the server user must reach the data directory below
    node = pg_replica.Standby(
        directory / "data", port=free_port(), pg_bin=pg_bin_dir(), owner=server_user(), login_role=ROLE
    )
    try:
        pg_replica.ensure_standby(node, credential=own)
        yield node, own
    finally:
        _stop(node.data_dir)
        primary.psql(f"SELECT pg_drop_replication_slot('{slot}')")


def test_promote_is_refused_while_the_old_primary_answers(
    primary: PostgresServer, standby: pg_replica.Standby, state_dir: Path
) -> None:
    done = run_agent("promote", "--state-dir", state_dir, "--yes")
    assert done.returncode == 1
    assert_one_error_line(done, f"127.0.0.1:{primary.port} still answers", "--force")
    assert _sql(primary, standby.port, "SELECT pg_is_in_recovery()") == "t"


def test_promote_without_a_terminal_needs_yes(
    primary: PostgresServer, standby: pg_replica.Standby, state_dir: Path
) -> None:
    done = run_agent("promote", "--state-dir", state_dir, "--force")
    assert done.returncode == 1
    assert_one_error_line(done, "stdin is not a terminal", "--yes")
    assert _sql(primary, standby.port, "SELECT pg_is_in_recovery()") == "t"


def test_promote_yes_force_makes_the_standby_writable(
    primary: PostgresServer, own_standby: tuple[pg_replica.Standby, ReplicationCredential], tmp_path: Path
) -> None:
    standby, credential = own_standby
    state_dir = _write_state(tmp_path / "agent-state", credential, standby)
    primary.psql("CREATE TABLE promoted (note text); INSERT INTO promoted VALUES ('from the parent')")
    assert _replayed(primary, standby, "promoted")

    done = run_agent("promote", "--state-dir", state_dir, "--yes", "--force")
    assert done.returncode == 0, done.stderr
    assert f"primary on port {standby.port}" in done.stdout
    _sql(primary, standby.port, "INSERT INTO promoted VALUES ('written on the promoted child')")
    assert _sql(primary, standby.port, "SELECT count(*) FROM promoted") == "2"
    assert (state_dir / "promotion.json").exists() and file_mode(state_dir / "promotion.json") == 0o600
    again = run_agent("promote", "--state-dir", state_dir, "--yes")
    assert again.returncode == 0 and "already promoted" in again.stdout
    assert credential.password not in done.stdout + done.stderr + again.stdout


def test_promote_needs_a_cluster_member_result(tmp_path: Path) -> None:
    done = run_agent("promote", "--state-dir", tmp_path / "empty", "--yes")
    assert done.returncode == 1
    assert_one_error_line(done, "no first-run result")


def test_the_base_backup_waits_for_a_primary_that_is_not_reachable_yet(
    module_dir: Path, primary: PostgresServer, credential: ReplicationCredential
) -> None:
    """At boot the route to the primary may come up after the agent starts: here, a late TCP relay."""
    slot = "powernode_repl_" + "cd" * 16
    primary.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    relay_port = free_port()
    late = credential.model_copy(update={"slot_name": slot, "primary_port": relay_port})
    node = pg_replica.Standby(
        module_dir / "late" / "data",
        port=free_port(),
        pg_bin=pg_bin_dir(),
        owner=server_user(),
        login_role=ROLE,
    )
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_ensure(node, late)))
    worker.start()
    time.sleep(1.5)
    relay = TcpRelay(relay_port, primary.port)
    try:
        worker.join(90)
    finally:
        _stop(node.data_dir)
        relay.close()
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert (node.data_dir / "standby.signal").is_file()


def _ensure(node: pg_replica.Standby, credential: ReplicationCredential) -> object:
    try:
        return pg_replica.ensure_standby(node, credential=credential, connect_wait=30)
    except Exception as e:
        return e
