"""Names and literals the setup builds its SQL from (the verifier itself is proven by real logins)."""

import uuid

import pytest

from hub.replication.credentials import Credential, ReplicaNames, peer_of_slot, quote_ident, quote_literal

PEER = uuid.UUID("6f1c2a8e-1234-4abc-8def-0123456789ab")


def test_names_follow_the_wire_contract():
    names = ReplicaNames.of(PEER)

    assert names.slot == "powernode_repl_6f1c2a8e12344abc8def0123456789ab"
    assert names.role == "powernode_repl_6f1c2a8e12344abc"
    assert names.secret_path == f"cluster_member_pg_replica/{PEER}"
    assert len(names.slot) <= 63 and len(names.role) <= 63  # PostgreSQL's identifier limit


def test_a_slot_maps_back_to_its_peer_and_foreign_slots_to_none():
    assert peer_of_slot(ReplicaNames.of(PEER).slot) == PEER
    assert peer_of_slot("powernode_repl_not-hex") is None
    assert peer_of_slot("standby_1") is None


def test_literals_and_identifiers_are_quoted_and_backslashes_refused():
    assert quote_literal("it's") == "'it''s'"
    assert quote_ident('a"b') == '"a""b"'
    with pytest.raises(ValueError):
        quote_literal("back\\slash")


def test_the_credential_survives_the_store_and_hides_its_password():
    credential = Credential.new(username="powernode_repl_x", ttl_days=30)

    assert Credential.from_secret(credential.to_secret()) == credential
    assert credential.password not in repr(credential)
    assert Credential.from_secret({"username": "u"}) is None
    assert credential.scram_verifier().startswith("SCRAM-SHA-256$4096:")
    assert credential.password not in credential.scram_verifier()
