"""Background jobs for bulk work: submit -> job id -> poll status and result.

In memory and bounded: at most ``max_active`` jobs wait or run at once (they may hold their input
in memory), and at most ``max_jobs`` are kept; when full, the oldest finished job is forgotten.
Finished jobs are forgotten after ``ttl_s``. Job ids are random, so one client cannot guess another's.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from skulens.errors import SkulensError

log = logging.getLogger(__name__)
FINISHED = ("succeeded", "failed", "cancelled")


class JobsFull(SkulensError):
    """Too many unfinished jobs; retry later."""


class JobCancelled(Exception):
    """Raised inside a job by :meth:`JobContext.check` once the job has been cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"
    done: int = 0
    total: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: tuple[str, str] | None = None  # (code, message)
    cancel_requested: bool = False


class JobContext:
    """What a running job sees: report progress, and stop early when cancelled."""

    def __init__(self, job: Job, lock: threading.Lock):
        self._job = job
        self._lock = lock

    def progress(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self._job.done = done
            if total is not None:
                self._job.total = total

    def check(self) -> None:
        if self._job.cancel_requested:
            raise JobCancelled()


class JobManager:
    def __init__(
        self,
        *,
        max_jobs: int = 64,
        max_active: int | None = None,
        workers: int = 1,
        ttl_s: float = 3600.0,
        on_finish: Callable[[Job], None] | None = None,
    ):
        self.max_jobs = max_jobs
        self.max_active = max_active or max_jobs
        self.ttl_s = ttl_s
        self.on_finish = on_finish
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skulens-job")

    def submit(self, kind: str, fn: Callable[[JobContext], Any], total: int | None = None) -> Job:
        """Run ``fn(context)`` in the background; its return value (JSON-able) becomes the job's result.
        ``fn`` raising SkulensError fails the job with that message; anything else with a generic one."""
        with self._lock:
            self._forget_old()
            active = sum(1 for j in self._jobs.values() if j.status not in FINISHED)
            if active >= self.max_active or len(self._jobs) >= self.max_jobs:
                raise JobsFull(f"too many unfinished jobs ({active}); retry when some have finished")
            job = Job(id=secrets.token_urlsafe(12), kind=kind, total=total)
            self._jobs[job.id] = job
        self._executor.submit(self._run, job, fn)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._forget_old()
            return self._jobs.get(job_id)

    def snapshot(self, job_id: str) -> dict | None:
        """A consistent copy of a job's public fields."""
        with self._lock:
            self._forget_old()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {
                "job_id": job.id,
                "kind": job.kind,
                "status": job.status,
                "progress": {"done": job.done, "total": job.total},
                "created_at": job.created_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "result": job.result if job.status == "succeeded" else None,
                "error": {"code": job.error[0], "message": job.error[1]} if job.error else None,
            }

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop: a queued job never starts, a running one stops at its next ``check()``."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status not in FINISHED:
                job.cancel_requested = True
                if job.status == "queued":
                    self._finish(job, "cancelled")
            return job

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: Job, fn: Callable[[JobContext], Any]) -> None:
        with self._lock:
            if job.cancel_requested:
                return
            job.status = "running"
            job.started_at = time.time()
        try:
            result = fn(JobContext(job, self._lock))
        except JobCancelled:
            with self._lock:
                self._finish(job, "cancelled")
        except SkulensError as exc:
            with self._lock:
                job.error = ("job_failed", str(exc))
                self._finish(job, "failed")
        except Exception:  # noqa: BLE001 - logged here; the client sees a generic message
            log.exception("job %s (%s) failed", job.id, job.kind)
            with self._lock:
                job.error = ("internal_error", "the job failed unexpectedly; see the server log")
                self._finish(job, "failed")
        else:
            with self._lock:
                job.result = result
                self._finish(job, "cancelled" if job.cancel_requested else "succeeded")

    def _finish(self, job: Job, status: str) -> None:
        job.status = status
        job.finished_at = time.time()
        if self.on_finish:
            self.on_finish(job)

    def _forget_old(self) -> None:
        now = time.time()
        for job_id in [
            j.id for j in self._jobs.values() if j.status in FINISHED and now - (j.finished_at or now) > self.ttl_s
        ]:
            del self._jobs[job_id]
        if len(self._jobs) >= self.max_jobs:
            for job in list(self._jobs.values()):  # oldest first
                if job.status in FINISHED:
                    del self._jobs[job.id]
                    break
