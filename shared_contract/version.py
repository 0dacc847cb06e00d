"""The federation contract version: the integer accept carries and the payload's "v1" label."""

from collections.abc import Iterable
from importlib import metadata

CONTRACT_VERSION = 1
CONTRACT_VERSION_LABEL = "v1"
SUPPORTED_CONTRACT_VERSIONS: tuple[int, ...] = (1,)
# Semver of the committed JSON Schemas; a breaking schema change needs a major bump.
SCHEMA_VERSION = "1.0.0"


def _platform_version() -> str:
    try:
        return metadata.version("powernode-spawn")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0.1.0"


# The platform's own version: heartbeats report it, the parent negotiates schema compatibility on it.
PLATFORM_VERSION = _platform_version()


class UnsupportedContractVersion(ValueError):
    """No contract version is both offered and supported; the message is the wire's 422 text."""

    def __init__(self, offered: int | Iterable[int], supported: Iterable[int]) -> None:
        self.offered = offered if isinstance(offered, int) else sorted(offered)
        self.supported = sorted(supported)
        super().__init__(f"Unsupported contract_version {self.offered}; supported: {self.supported}")


def parse_contract_version(value: int | str) -> int:
    """Return the version number of 1, "1" or "v1"; raise ValueError for anything else."""
    text = value.strip().removeprefix("v") if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if text and text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"Invalid contract_version {value!r}; expected e.g. 1, '1' or 'v1'")


def negotiate(
    offered: int | Iterable[int],
    supported: Iterable[int] = SUPPORTED_CONTRACT_VERSIONS,
) -> int:
    """Return the highest version both sides support, or raise UnsupportedContractVersion."""
    offered_set = {offered} if isinstance(offered, int) else set(offered)
    supported_set = set(supported)
    common = offered_set & supported_set
    if not common:
        raise UnsupportedContractVersion(offered, supported_set)
    return max(common)
