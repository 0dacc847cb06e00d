"""The one serializer of every arq queue: JSON data, never pickle.

arq pickles jobs and results by default, so whoever can write to the queue's Redis keys could make a
worker run code while it merely reads a job. Jobs here carry ids and flags only; results are JSON
documents. A payload that is not a JSON object of the expected shape (a pickle, say) is refused and
logged, and the worker records the job as failed without running anything.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

# What arq puts in a job ('t' tries, 'f' function, 'a' args, 'k' kwargs, 'et' enqueue time) and,
# for results, also 's' success, 'r' result, 'st'/'ft' start/finish, 'q' queue, 'id' job id.
_JOB_FIELDS: dict[str, tuple[type, ...]] = {
    "f": (str,),
    "a": (list,),
    "k": (dict,),
    "et": (int,),
    "t": (int, type(None)),
}
_RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "s": (bool,),
    "st": (int,),
    "ft": (int,),
}


class PayloadRefused(ValueError):
    """A queue payload that is not a JSON job or result."""


def _encode(value: Any) -> Any:
    if isinstance(value, BaseException):
        # A failed job's result: its kind and message, never the object itself.
        return {"error": type(value).__name__, "message": str(value)}
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int to isinstance; here it counts only where it is named.
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=_encode, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """A job or result written by `serialize`; anything else raises (and is logged) unread."""
    try:
        if raw[:1] != b"{":
            raise PayloadRefused("not a JSON object")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise PayloadRefused("not a JSON object")
        for fields in (_JOB_FIELDS, _RESULT_FIELDS if "s" in data else {}):
            for key, types in fields.items():
                if not _is(data.get(key), types):
                    raise PayloadRefused(f"field {key!r} is missing or of the wrong type")
    except (PayloadRefused, ValueError, UnicodeDecodeError) as e:
        log.warning(
            "refused a queue payload that is not a JSON job (%s; %d bytes, starting %r): nothing was run",
            e,
            len(raw),
            bytes(raw[:2]),
        )
        raise PayloadRefused(str(e)) from None
    return data


ARQ_CODEC: dict[str, Any] = {"job_serializer": serialize, "job_deserializer": deserialize}
