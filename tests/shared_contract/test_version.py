import pytest

from shared_contract.version import (
    CONTRACT_VERSION,
    CONTRACT_VERSION_LABEL,
    SUPPORTED_CONTRACT_VERSIONS,
    UnsupportedContractVersion,
    negotiate,
    parse_contract_version,
)


@pytest.mark.parametrize("value", [1, "1", "v1", " v1\n"])
def test_parse_accepts_the_integer_and_the_label(value):
    assert parse_contract_version(value) == 1


@pytest.mark.parametrize("value", ["", "v", "one", "1.0", "v-1", 0, -1, True, "v1x"])
def test_parse_refuses_anything_else(value):
    with pytest.raises(ValueError, match="Invalid contract_version"):
        parse_contract_version(value)


def test_label_and_integer_agree():
    assert parse_contract_version(CONTRACT_VERSION_LABEL) == CONTRACT_VERSION
    assert CONTRACT_VERSION in SUPPORTED_CONTRACT_VERSIONS


def test_negotiate_picks_the_highest_common_version():
    assert negotiate(1) == 1
    assert negotiate([1, 2, 3], supported=(1, 2)) == 2


def test_negotiate_refuses_99_with_the_wire_message():
    with pytest.raises(UnsupportedContractVersion) as excinfo:
        negotiate(99)

    assert str(excinfo.value) == "Unsupported contract_version 99; supported: [1]"
    assert isinstance(excinfo.value, ValueError)


def test_negotiate_refuses_a_list_without_overlap():
    with pytest.raises(UnsupportedContractVersion, match=r"\[2, 3\]; supported: \[1\]"):
        negotiate([3, 2])
