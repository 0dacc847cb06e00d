"""Issue 11 item 1: a payload written straight into Redis never runs code in a worker."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from hub.config import Settings
from hub.jobcodec import PayloadRefused, deserialize, serialize
from hub.runtime import PRIMARY_QUEUE, HubRuntime, queue_name


class _CreatesFile:
    """Unpickling this calls open(path, "w"): a file appears if anything unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _malicious_job(path: Path) -> bytes:
    job = {"t": 1, "f": "federation_findings_sweep", "a": [], "k": {"x": _CreatesFile(path)}, "et": 0}
    return pickle.dumps(job)


@pytest.mark.parametrize("primary", [False, True], ids=["platform-queue", "primary-duties-queue"])
async def test_a_pickled_job_written_into_redis_is_refused_and_runs_nothing(
    primary: bool,
    settings: Settings,
    runtime: HubRuntime,
    run_jobs: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / f"pwned-{'primary' if primary else 'platform'}"
    queue = PRIMARY_QUEUE if primary else queue_name()
    redis = runtime.primary_redis if primary else runtime.redis
    assert redis is not None
    job_id = f"attack-{queue}"
    # What an attacker holding the queue's Redis credentials would write: arq's own layout.
    await redis.set(f"arq:job:{job_id}", _malicious_job(marker))
    await redis.zadd(queue, {job_id: int(time.time() * 1000) - 1000})

    with caplog.at_level(logging.WARNING):
        totals = await run_jobs()

    assert not marker.exists(), "the worker unpickled the payload"
    assert totals.failed >= 1 and totals.complete == 0
    refused = [r for r in caplog.records if r.name == "hub.jobcodec"]
    assert refused and "refused a queue payload that is not a JSON job" in refused[0].getMessage()
    assert any("deserializing job attack-" in r.getMessage() for r in caplog.records)
    assert await redis.zscore(queue, job_id) is None  # taken off the queue, not retried forever


def test_jobs_and_results_round_trip_as_json_and_nothing_else_is_read() -> None:
    job = {"t": 1, "f": "cluster_member_pg_replica_setup", "a": [], "k": {"peer_id": "x"}, "et": 5}
    assert deserialize(serialize(job)) == job
    result = {**job, "s": False, "r": RuntimeError("boom"), "st": 1, "ft": 2, "q": "q", "id": "i"}
    assert deserialize(serialize(result))["r"] == {"error": "RuntimeError", "message": "boom"}
    for bad in (b"\x80\x04K\x01.", b"[1, 2]", b"{not json", b'{"f": 1, "a": [], "k": {}, "et": 0}'):
        with pytest.raises(PayloadRefused):
            deserialize(bad)
    with pytest.raises(TypeError):
        serialize({"k": {"x": object()}})
