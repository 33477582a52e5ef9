"""Background jobs: bounded, cancellable, owned by the API key that submitted them, and, in a catalog
database, shared by every server: a job whose server dies is resumed by another from its checkpoint."""

from __future__ import annotations

import threading
import time

import pytest

from skulens.catalog.db import open_engine
from skulens.catalog.jobs import JobQueue, LeaseLost
from skulens.errors import SkulensError
from skulens.serving.jobs import JobManager, JobsFull, MemoryJobs
from tests.helpers import drop_every_table, empty_postgres_url, wait_until


@pytest.fixture(params=["memory", "database", pytest.param("postgresql", marks=pytest.mark.services)])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryJobs()
    if request.param == "database":
        return JobQueue(open_engine(tmp_path / "jobs.db"))
    url = empty_postgres_url()
    request.addfinalizer(lambda: drop_every_table(url))
    return JobQueue(open_engine(url))


def _status(manager: JobManager, job_id: str, owner: str = "") -> str:
    return manager.snapshot(job_id, owner)["status"]


def test_jobs_run_report_failures_and_are_bounded(store):
    gate = threading.Event()
    handlers = {
        "slow": lambda ctx: gate.wait(5) and {"done": ctx.inputs()[0][1].decode()},
        "bad": lambda ctx: (_ for _ in ()).throw(SkulensError("no such catalog")),
        "boom": lambda ctx: 1 / 0,
    }
    manager = JobManager(store, handlers, max_active=2, workers=1, lease_s=2)
    try:
        first = manager.submit("slow", [("a", b"first")])
        second = manager.submit("slow", [("b", b"second")])
        with pytest.raises(JobsFull):
            manager.submit("slow", [])
        assert manager.cancel(second)["status"] == "cancelled"  # queued: never starts
        gate.set()
        wait_until(lambda: _status(manager, first) == "succeeded", 5, 0.01)
        assert manager.snapshot(first)["result"] == {"done": "first"}
        bad, boom = manager.submit("bad", []), manager.submit("boom", [])
        wait_until(lambda: _status(manager, boom) == "failed", 5, 0.01)
        assert manager.snapshot(bad)["error"] == {"code": "job_failed", "message": "no such catalog"}
        assert manager.snapshot(boom)["error"]["code"] == "internal_error"
        assert "ZeroDivision" not in str(manager.snapshot(boom))
        assert store.inputs(first) == []  # a finished job's inputs are gone
    finally:
        gate.set()
        manager.shutdown()


def test_a_running_job_stops_when_cancelled_and_keeps_its_progress(store):
    started = threading.Event()

    def long_job(ctx):
        started.set()
        for step in range(500):
            ctx.check()
            ctx.save(step, None, total=500)
            time.sleep(0.01)
        return "finished"

    manager = JobManager(store, {"long": long_job}, lease_s=0.6)  # heartbeats every 0.2 s
    try:
        job = manager.submit("long", [])
        assert started.wait(5)
        time.sleep(0.3)
        manager.cancel(job)
        wait_until(lambda: _status(manager, job) != "running", 5, 0.01)
        snap = manager.snapshot(job)
        assert snap["status"] == "cancelled" and snap["result"] is None and 0 < snap["progress"]["done"] < 499
    finally:
        manager.shutdown()


def test_a_job_is_visible_to_the_key_that_submitted_it_only(store):
    manager = JobManager(store, {"quick": lambda ctx: "ok"})
    try:
        key_a, key_b = "sha256:" + "a" * 64, "sha256:" + "b" * 64  # as serving.security.hash_key writes them
        mine = manager.submit("quick", [], owner=key_a)
        wait_until(lambda: _status(manager, mine, key_a) == "succeeded", 5, 0.01)
        assert manager.snapshot(mine, key_b) is None
        assert manager.snapshot(mine, "") is None
        assert manager.cancel(mine, key_b) is None
        assert manager.snapshot("no-such-job", key_a) is None
        anyone = manager.submit("quick", [])  # submitted without a key: anyone may poll it
        wait_until(lambda: _status(manager, anyone, key_b) == "succeeded", 5, 0.01)
    finally:
        manager.shutdown()


def _resumable(log: list, gate: threading.Event | None = None):
    """A job of 10 items that keeps each in its checkpoint; ``gate``: wait after item 4 until set."""

    def run(ctx):
        items = list((ctx.state or {}).get("items", []))
        for i in range(ctx.done, 10):
            ctx.check()
            if gate is not None and i == 4:
                gate.wait(30)
                ctx.check()
            log.append(i)
            items.append(i * i)
            ctx.save(i + 1, {"items": items})
        return {"items": items}

    return run


def test_a_job_whose_server_died_is_resumed_by_another_from_its_checkpoint(tmp_path):
    """Server A stops renewing (it died); once the lease lapses, server B claims the job, goes on after the
    last checkpoint, and the result holds every item exactly once. A, should it wake, can no longer write."""
    db = tmp_path / "shop.db"
    ran_a, ran_b, frozen = [], [], threading.Event()
    a = JobManager(JobQueue(open_engine(db)), {"squares": _resumable(ran_a, frozen)}, lease_s=0.6)
    b = None
    try:
        job = a.submit("squares", [("x", b"")], total=10)
        wait_until(lambda: len(ran_a) == 4, 5, 0.01)
        a._stop.set()  # A's heartbeat stops, as in a kill -9; its worker is stuck at item 4
        b = JobManager(JobQueue(open_engine(db)), {"squares": _resumable(ran_b)}, lease_s=0.6)
        snap = wait_until(lambda: (s := b.snapshot(job)) and s["status"] == "succeeded" and s, 10, 0.05)
        assert ran_a == [0, 1, 2, 3] and ran_b == [4, 5, 6, 7, 8, 9]
        assert snap["result"] == {"items": [i * i for i in range(10)]} and snap["attempts"] == 2
        with pytest.raises(LeaseLost):  # fenced: the old holder cannot touch the job any more
            JobQueue(open_engine(db)).checkpoint(job, a.worker, 5, {"items": []})
        assert not JobQueue(open_engine(db)).finish(job, a.worker, "failed")
        assert b.snapshot(job)["status"] == "succeeded"
    finally:
        frozen.set()
        a.shutdown(wait_s=2)
        if b is not None:
            b.shutdown()


def test_a_server_that_shuts_down_hands_its_running_job_back(tmp_path):
    db = tmp_path / "shop.db"
    ran, gate = [], threading.Event()
    a = JobManager(JobQueue(open_engine(db)), {"squares": _resumable(ran, gate)}, lease_s=30)
    job = a.submit("squares", [])
    wait_until(lambda: len(ran) == 4, 5, 0.01)
    threading.Timer(0.2, gate.set).start()
    a.shutdown()  # the job stops at its next check and goes back to the queue at once (no lease wait)
    assert JobQueue(open_engine(db)).snapshot(job)["status"] == "queued"
    b = JobManager(JobQueue(open_engine(db)), {"squares": _resumable(ran)}, lease_s=30)
    try:
        # B's first look normally takes it at once; under load its next poll (5 s later) does
        wait_until(lambda: _status(b, job) == "succeeded", 15, 0.02)
        assert b.snapshot(job)["result"] == {"items": [i * i for i in range(10)]}
    finally:
        b.shutdown()


def test_two_servers_never_both_claim_a_job(tmp_path):
    engine = open_engine(tmp_path / "shop.db")
    queue = JobQueue(engine)
    ids = {queue.create("k", "", [], {}, None) for _ in range(30)}
    won: list[tuple[str, str]] = []

    def claim_all(worker: str) -> None:
        other = JobQueue(open_engine(tmp_path / "shop.db"))  # a server of its own
        while (claimed := other.claim(worker, 30)) is not None:
            won.append((worker, claimed["id"]))

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job for _, job in won) == sorted(ids)  # each job claimed exactly once


def test_finished_jobs_are_forgotten_after_their_time(store):
    manager = JobManager(store, {"quick": lambda ctx: "ok"}, ttl_s=0.3, lease_s=0.6)
    try:
        job = manager.submit("quick", [("photo", b"bytes")])
        wait_until(lambda: _status(manager, job) == "succeeded", 5, 0.01)
        wait_until(lambda: manager.snapshot(job) is None, 5, 0.05, "a finished job outlived its time to live")
    finally:
        manager.shutdown()
