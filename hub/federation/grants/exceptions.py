"""Why a call under a grant was refused; the codes travel to the caller, who acts on them."""

from __future__ import annotations

from hub.exceptions import Conflict, Forbidden, HubError, Unauthorized


class GrantRequired(Unauthorized):
    code = "GRANT_REQUIRED"


class GrantRevoked(Unauthorized):
    """Revoked, archived, or a bearer this hub never recorded: to the caller they are the same."""

    code = "GRANT_REVOKED"


class GrantExpired(Unauthorized):
    code = "GRANT_EXPIRED"


class GrantDenied(Forbidden):
    """The grant is live but its scopes or allowlists do not cover the action."""

    code = "GRANT_DENIED"


class NoLiveGrant(Conflict):
    """This hub held a grant on the peer and holds no live one now: it no longer calls."""

    code = "NO_LIVE_GRANT"


class ChildRefused(HubError):
    """The child answered our call with an error; `details` carries its status and code."""

    status_code = 502
    code = "CHILD_REFUSED"


class ChildUnreachable(HubError):
    status_code = 502
    code = "CHILD_UNREACHABLE"


class ChildUntrusted(Conflict):
    """What the child told us about its endpoint or CA is not something we call (DESIGN §5)."""

    code = "CHILD_UNTRUSTED"
