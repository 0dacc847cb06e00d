import socket
import time

import pytest

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import EmbeddedError


def test_a_deep_data_dir_still_gets_a_unix_socket(scratch_dir):
    deep = scratch_dir / ("d" * 60) / ("e" * 60) / "postgres"
    server = PostgresServer(deep).init(durable=False)
    try:
        server.start()

        assert server.psql("SELECT 1") == "1"
        assert len(server.psql("SHOW unix_socket_directories")) < 90
    finally:
        server.stop(mode="immediate")


def time_wait_ports():
    """Local ports of TCP sockets in TIME_WAIT on loopback (state 06 in /proc/net/tcp)."""
    ports = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "06":
            ports.add(int(local.split(":")[1], 16))
    return ports


def test_restart_keeps_the_port_while_old_connections_linger_in_time_wait(scratch_dir):
    server = PostgresServer(scratch_dir / "postgres").init(durable=False)
    server.start()
    port = server.port
    client = socket.create_connection(("127.0.0.1", port))  # the server closes first: its side waits
    server.stop()
    client.close()
    assert port in time_wait_ports()
    try:
        server.start()

        assert server.port == port
        assert PostgresServer(server.data_dir).port == port
        assert server.psql("SELECT 1") == "1"
    finally:
        server.stop(mode="immediate")


def test_a_port_taken_by_someone_else_is_a_clear_error_naming_it(scratch_dir):
    server = PostgresServer(scratch_dir / "postgres").init(durable=False)
    server.start()
    server.stop()
    with socket.socket() as squatter:
        # The stopped server's connections may linger in TIME_WAIT on the port; a listener of our own
        # may still bind (as PostgreSQL itself would), and it keeps the port taken all the same.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()

        with pytest.raises(EmbeddedError, match=f"port {server.port} of the embedded PostgreSQL"):
            server.start()

    assert PostgresServer(server.data_dir).port == server.port
    assert not server.is_running()


def test_standby_replays_what_the_primary_writes(pg_pair):
    pg_pair.primary.psql("CREATE TABLE replicated (value text)")
    pg_pair.primary.psql("INSERT INTO replicated VALUES ('from the primary')")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # replay is asynchronous: poll, never assume
        if pg_pair.standby.psql("SELECT to_regclass('replicated') IS NOT NULL") == "t":
            if pg_pair.standby.psql("SELECT value FROM replicated") == "from the primary":
                break
        time.sleep(0.05)
    assert pg_pair.standby.psql("SELECT value FROM replicated") == "from the primary"
    assert pg_pair.standby.psql("SELECT pg_is_in_recovery()") == "t"
    active = pg_pair.primary.psql(
        f"SELECT active FROM pg_replication_slots WHERE slot_name = '{pg_pair.slot_name}'"
    )
    assert active == "t"
