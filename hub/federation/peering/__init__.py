"""The federation API a live peer calls with its client certificate."""

HEARTBEAT_PATH = "/api/v1/system/federation_api/heartbeat"
