"""The test harness: real PostgreSQL, Redis and OpenBao from the pip packages (DESIGN §10)."""
