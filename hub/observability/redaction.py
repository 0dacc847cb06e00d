"""What log output may never carry (DESIGN §9), removed from the text of every line.

Redaction works on the rendered text, not on what a caller meant to log, so a secret is removed
wherever it ends up: in the message, its arguments, extra fields or an exception's text. The shapes
we know are matched by pattern; the values of the hub's own `SecretStr` settings (which may have
no recognisable shape) are registered at start and removed verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

from hub.config import PLACEHOLDER_SECRETS

REDACTED = "[REDACTED]"
_MIN_KNOWN_SECRET = 8  # shorter values would blank out ordinary words

_QUOTE = r"(?:\\?[\"'])?"  # a quote, possibly escaped inside an already-quoted string
_SECRET_KEY = r"[A-Za-z0-9_.\-]*(?:password|passwd|secret|token|api_?key)"
# Each pattern with a literal that any match contains, in lower case: an ASCII line without it
# cannot match, so the (much cheaper) substring test skips the pattern. A line per request is
# redacted.
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    # PEM private keys of any kind; a truncated one up to the end of the text.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
        ),
        "[REDACTED PRIVATE KEY]",
        ("private key",),
    ),
    # Our bearer secrets (hub.secrets.tokens): the prefix stays, it tells what leaked.
    (re.compile(r"(pn(?:at|op|gb)_)[A-Za-z0-9_\-]+"), rf"\1{REDACTED}", ("pnat_", "pnop_", "pngb_")),
    # Authorization headers, whatever the scheme, and bare "Bearer <credential>".
    (
        re.compile(
            rf"(?i)(authorization{_QUOTE}\s*[:=]\s*{_QUOTE})(?:(?:bearer|basic|token)\s+)?[^\s\"',;}}\\]+"
        ),
        rf"\1{REDACTED}",
        ("authorization",),
    ),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1{REDACTED}", ("bearer",)),
    # Passwords in URLs: scheme://user:password@host (the user name may be empty, as in Redis URLs).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s/]*@"), rf"\1{REDACTED}@", ("://",)),
    # password=…, PGPASSWORD=…, "secret": "…", token: … (quoted or not, in repr or JSON text).
    # A quoted value keeps its quotes; an already redacted value is left alone.
    (
        re.compile(
            rf"(?i)\b({_SECRET_KEY}{_QUOTE}\s*[:=]\s*)"
            r"(?:(\\?[\"'])(?!\[REDACTED)(?:(?!\2).)*\2|(?!\[REDACTED)[^\s\"',;&)}\\]+)"
        ),
        rf"\1\2{REDACTED}\2",
        ("password", "passwd", "secret", "token", "api_key", "apikey"),
    ),
)
_SECRET_FIELD = re.compile(rf"(?i){_SECRET_KEY}|[A-Za-z0-9_.\-]*(?:authorization|private_key|bearer)")


def _mentions(text: str, literals: tuple[str, ...]) -> bool:
    """`any(literal in text …)` without a generator: asked six times for every log line."""
    for literal in literals:
        if literal in text:
            return True
    return False


class Redactor:
    """Removes the known secret shapes and the registered secret values from text."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._known_pattern: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"Redactor(known_values={len(self._known)})"

    def register(self, values: Iterable[str]) -> None:
        """Values that must never appear, whatever their shape (passwords, Vault tokens)."""
        # Placeholders are public words: redacting them would only garble the refusal naming them.
        self._known.update(
            v for v in values if len(v) >= _MIN_KNOWN_SECRET and v.lower() not in PLACEHOLDER_SECRETS
        )
        if self._known:
            # Longest first, so a secret that contains another is removed whole.
            ordered = sorted(self._known, key=len, reverse=True)
            self._known_pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def text(self, value: str) -> str:
        if self._known_pattern is not None:
            value = self._known_pattern.sub(REDACTED, value)
        # Outside ASCII, case-insensitive matching has its own equivalences (the long s, U+017F,
        # matches s): there every pattern runs. A substitution only puts ASCII in.
        every = not value.isascii()
        lowered = value.lower()
        for pattern, replacement, literals in _PATTERNS:
            if every or _mentions(lowered, literals):
                redacted = pattern.sub(replacement, value)
                if redacted != value:
                    value, lowered = redacted, redacted.lower()
        return value

    def value(self, value: Any) -> Any:
        """A JSON-ready copy of an extra field's value; fields named like secrets lose their value."""
        if isinstance(value, SecretStr | SecretBytes):
            return REDACTED
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED if _SECRET_FIELD.fullmatch(str(k)) else self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(value if isinstance(value, str) else str(value))


def secret_values(model: BaseModel) -> list[str]:
    """Every SecretStr value in a settings model, and the password part of those that are URLs."""
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found.extend(secret_values(value))
        elif isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if "://" not in secret:
                found.append(secret)
            elif password := urlsplit(secret).password:  # the rest of a URL is no secret
                found.append(password)
    return found
