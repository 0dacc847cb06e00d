import socket
import time

from hub.embedded.postgres import PostgresServer


def test_a_deep_data_dir_still_gets_a_unix_socket(scratch_dir):
    deep = scratch_dir / ("d" * 60) / ("e" * 60) / "postgres"
    server = PostgresServer(deep).init(durable=False)
    try:
        server.start()

        assert server.psql("SELECT 1") == "1"
        assert len(server.psql("SHOW unix_socket_directories")) < 90
    finally:
        server.stop(mode="immediate")


def test_restart_moves_to_a_free_port_when_its_port_was_taken(scratch_dir):
    server = PostgresServer(scratch_dir / "postgres").init(durable=False)
    server.start()
    server.stop()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", server.port))
    try:
        server.start()

        assert server.port != squatter.getsockname()[1]
        assert PostgresServer(server.data_dir).port == server.port  # remembered for next time
        assert server.psql("SELECT 1") == "1"
    finally:
        squatter.close()
        server.stop(mode="immediate")


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
