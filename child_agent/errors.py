"""The failures the agent reports: one line on stderr and an exit code that scripts can rely on."""

from pydantic import ValidationError

EXIT_FAILURE = 1  # something went wrong that a retry (or the operator) may fix
EXIT_BAD_INPUT = 2  # the payload or the command line is unusable; retrying will not help
EXIT_REFUSED = 3  # the parent said no, or the agent refused to trust the parent


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace so that a message is exactly one line, and bound its length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_validation(error: ValidationError) -> str:
    """Name the failing fields without the input values (they may hold a token or a password)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}" for err in error.errors()[:5]
    )


class AgentError(Exception):
    """A failure the operator should read; the message is one line and never carries a secret."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class PayloadInvalid(AgentError):
    """The spawn payload is missing, corrupt or incomplete."""

    exit_code = EXIT_BAD_INPUT


class ParentRefused(AgentError):
    """A final answer: the parent rejected the request, or its TLS certificate is not trusted."""

    exit_code = EXIT_REFUSED
