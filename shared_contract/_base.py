"""The base of every wire model, and the size limits shared by the request models."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_ITEMS = 64
MAX_TOKEN = 512
MAX_CSR = 16 * 1024
MAX_PEM_CHAIN = 64 * 1024

ShortStr = Annotated[str, Field(max_length=255)]
UrlStr = Annotated[str, Field(max_length=2048)]
PemStr = Annotated[str, Field(max_length=MAX_PEM_CHAIN)]
JsonObject = dict[str, Any]


def _check_iso8601(value: str) -> str:
    """Accept the string only if it parses as an ISO-8601 timestamp; keep it as given."""
    datetime.fromisoformat(value)
    return value


IsoTimestamp = Annotated[
    str,
    Field(max_length=64, json_schema_extra={"format": "date-time"}),
    AfterValidator(_check_iso8601),
]


class WireModel(BaseModel):
    """A model that crosses a process boundary; unknown keys from newer peers are ignored."""

    model_config = ConfigDict(extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """Dump to JSON types, leaving out optional fields that are None."""
        return self.model_dump(mode="json", exclude_none=True)
