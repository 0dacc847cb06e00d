"""The child agent: the first run of a spawned child platform, and the promotion of a cluster_member.

It reads the payload the parent injected (fw_cfg or the JSON fallback), redeems the acceptance
token for a client certificate, starts the streaming standby of a cluster_member, and hands over
to the child hub through the first-run result file. It depends on ``shared_contract``, httpx and
cryptography only, never on ``hub``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("powernode-spawn")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0"

USER_AGENT = f"powernode-child-agent/{__version__}"
