import asyncpg
import pytest

from hub import migrate

DESIGN_TABLES = {
    "federation_peer",
    "acceptance_token",
    "federation_grant",
    "node_instance",
    "node_template",
    "intervention_policy",
    "finding",
    "audit_event",
    "operator_token",
}


@pytest.fixture
async def empty_database(databases):
    name = databases.new_name("migrations")
    yield await databases.create(name)
    await databases.drop(name)


async def tables(url):
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await connection.close()
    return {row["table_name"] for row in rows}


async def test_upgrade_creates_the_design_tables(empty_database):
    await migrate.upgrade(empty_database)

    assert DESIGN_TABLES <= await tables(empty_database)
    assert await migrate.current_revision(empty_database) == migrate.head_revision()


async def test_downgrade_to_base_removes_them_and_upgrade_works_again(empty_database):
    await migrate.upgrade(empty_database)

    await migrate.downgrade(empty_database)
    after_downgrade = await tables(empty_database)
    await migrate.upgrade(empty_database)

    assert after_downgrade <= {"alembic_version"}
    assert await migrate.current_revision(empty_database) == migrate.head_revision()
    assert DESIGN_TABLES <= await tables(empty_database)


async def test_each_test_database_is_a_migrated_clone(database_url):
    assert DESIGN_TABLES <= await tables(database_url)
    assert await migrate.current_revision(database_url) == migrate.head_revision()
