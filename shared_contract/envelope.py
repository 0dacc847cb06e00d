"""The JSON envelope around every operator and federation API response."""

from typing import Any, Generic, Literal, TypeVar

from shared_contract._base import JsonObject, WireModel

DataT = TypeVar("DataT")


class _Envelope(WireModel):
    """Leaves out only the envelope's own None fields: nulls inside ``data`` are meaningful."""

    def to_wire(self) -> dict[str, Any]:
        """Dump to JSON types without the envelope's optional fields that are None."""
        unset = {name for name in type(self).model_fields if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset - {"data"})


class ErrorEnvelope(_Envelope):
    """``{"success": false, "error": ..., "code"?: ..., "details"?: {...}}``."""

    success: Literal[False] = False
    error: str
    code: str | None = None
    details: JsonObject | None = None


class SuccessEnvelope(_Envelope, Generic[DataT]):
    """``{"success": true, "data": ..., "meta"?: {...}, "message"?: ...}``; meta sits at the root."""

    success: Literal[True] = True
    data: DataT
    meta: JsonObject | None = None
    message: str | None = None


class PageMeta(WireModel):
    """Keyset pagination metadata for ``meta``; no next_cursor means the last page."""

    count: int
    limit: int | None = None
    next_cursor: str | None = None
