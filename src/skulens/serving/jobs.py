"""Background jobs for bulk work: submit -> job id -> poll status and result.

A job is a kind (a registered handler), its inputs (bytes) and options, so that any server can run it.
With a catalog database the jobs are its rows (``skulens.catalog.jobs.JobQueue``): every server of a
fleet answers for every job, and a job whose server died is resumed by another from its last checkpoint
once its lease lapses. Without a catalog they live in this process (``MemoryJobs``, same interface).
Bounded: at most ``max_active`` jobs wait or run at once; finished jobs are forgotten after ``ttl_s``.
Job ids are random, and a job submitted with an API key is visible to that key only.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from skulens.errors import SkulensError

log = logging.getLogger(__name__)
FINISHED = ("succeeded", "failed", "cancelled")


class JobsFull(SkulensError):
    """Too many unfinished jobs; retry later."""


class JobCancelled(Exception):
    """Raised inside a job by :meth:`JobContext.check` once the job has been cancelled."""


class JobStopped(Exception):
    """Raised inside a job when this server stops running it (shutting down, or its lease was lost)."""


class MemoryLeaseLost(SkulensError):
    """The memory store's LeaseLost: the job is no longer this worker's (it was cancelled and forgotten)."""


class MemoryJobs:
    """Jobs of this process only (a server without a catalog database), with JobQueue's interface."""

    def __init__(self):
        self._jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def create(self, kind: str, owner: str, inputs: list[tuple[str, bytes]], options: dict, total: int | None) -> str:
        job_id = secrets.token_urlsafe(12)
        row = {"id": job_id, "kind": kind, "owner": owner, "status": "queued", "done": 0, "total": total}
        row |= {"options": options, "inputs": inputs, "checkpoint": None, "result": None, "error": None}
        row |= {"created_at": time.time(), "started_at": None, "finished_at": None, "attempts": 0, "cancel": False}
        with self._lock:
            self._jobs[job_id] = row
        return job_id

    def claim(self, worker: str, lease_s: float, job_id: str | None = None, min_age_s: float = 0.0) -> dict | None:
        with self._lock:
            queued = [r for r in self._jobs.values() if r["status"] == "queued"]
            row = next((r for r in queued if job_id is None or r["id"] == job_id), None)
            if row is None:
                return None
            row.update(status="running", attempts=row["attempts"] + 1, started_at=row["started_at"] or time.time())
            return {k: row[k] for k in ("id", "kind", "options", "done", "total", "checkpoint", "attempts")}

    def _running(self, job_id: str) -> dict:
        row = self._jobs.get(job_id)
        if row is None or row["status"] != "running":
            raise MemoryLeaseLost(f"job {job_id} is not running")
        return row

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        with self._lock:
            return self._running(job_id)["cancel"]

    def checkpoint(self, job_id: str, worker: str, done: int, state: dict | None, total: int | None = None) -> None:
        with self._lock:
            row = self._running(job_id)
            row.update(done=done, checkpoint=state, total=row["total"] if total is None else total)

    def finish(self, job_id: str, worker: str, status: str, result=None, error: tuple[str, str] | None = None) -> bool:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is None or row["status"] != "running":
                return False
            row.update(status=status, result=result, error=error, finished_at=time.time(), inputs=[], checkpoint=None)
            return True

    def release(self, job_id: str, worker: str) -> None:
        self.finish(job_id, worker, "cancelled")  # nobody else can resume a job of this process

    def inputs(self, job_id: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._jobs[job_id]["inputs"])

    def snapshot(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is None:
                return None
            error = {"code": row["error"][0], "message": row["error"][1]} if row["error"] else None
            return {
                "job_id": row["id"],
                "kind": row["kind"],
                "status": row["status"],
                "progress": {"done": row["done"], "total": row["total"]},
                "created_at": row["created_at"],
                "started_at": row["started_at"],
                "finished_at": row["finished_at"],
                "result": row["result"] if row["status"] == "succeeded" else None,
                "error": error,
                "attempts": row["attempts"],
                "owner": row["owner"],
            }

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is not None and row["status"] == "queued":
                row.update(status="cancelled", finished_at=time.time(), inputs=[])
            elif row is not None:
                row["cancel"] = True

    def unfinished(self) -> int:
        with self._lock:
            return sum(r["status"] not in FINISHED for r in self._jobs.values())

    def forget_finished(self, older_than_s: float) -> None:
        cutoff = time.time() - older_than_s
        with self._lock:
            for job_id in [j for j, r in self._jobs.items() if r["status"] in FINISHED and r["finished_at"] < cutoff]:
                del self._jobs[job_id]


class JobContext:
    """What a running job sees: its inputs and options, where a previous holder stopped (``done``,
    ``state``), and ``save`` to keep its own progress; ``check`` stops it when cancelled or lost."""

    def __init__(self, manager: JobManager, claimed: dict):
        self._manager = manager
        self.job_id = claimed["id"]
        self.options = claimed["options"]
        self.done = claimed["done"]
        self.state = claimed["checkpoint"]
        self.total = claimed["total"]
        self.cancel_requested = False
        self.stopped = False

    def inputs(self) -> list[tuple[str, bytes]]:
        return self._manager.store.inputs(self.job_id)

    def save(self, done: int, state: dict | None, total: int | None = None) -> None:
        """A checkpoint: the next holder of this job resumes from here (JobStopped: no longer ours)."""
        try:
            self._manager.store.checkpoint(self.job_id, self._manager.worker, done, state, total)
        except SkulensError as exc:
            raise JobStopped(str(exc)) from None
        self.done = done

    def check(self) -> None:
        if self.stopped:
            raise JobStopped("this server stopped running the job")
        if self.cancel_requested:
            raise JobCancelled()


Handler = Callable[[JobContext], Any]


class JobManager:
    """Runs the jobs of ``store`` with ``workers`` threads, heartbeating their leases, and answers for
    any job of the store."""

    def __init__(
        self,
        store,
        handlers: dict[str, Handler],
        *,
        max_active: int = 64,
        workers: int = 1,
        ttl_s: float = 3600.0,
        lease_s: float = 30.0,
        on_finish: Callable[[str, str], None] | None = None,
    ):
        self.store = store
        self.handlers = handlers
        self.max_active = max_active
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.on_finish = on_finish
        self.worker = f"{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: dict[str, JobContext] = {}
        self._forgot_at = float("-inf")
        self._mine: queue.Queue[dict] = queue.Queue()  # claimed at submission, for this server's workers
        self._idle = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"skulens-job-{i}", daemon=True) for i in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._heartbeat, name="skulens-job-lease", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- what the routes call ----------------------------------------------------------------------
    def submit(self, kind: str, inputs: list[tuple[str, bytes]], *, owner: str = "", options=None, total=None) -> str:
        """Queue a job; any server's worker may run it. JobsFull when too many are unfinished."""
        if self.store.unfinished() >= self.max_active:
            raise JobsFull(f"too many unfinished jobs (at most {self.max_active}); retry when some have finished")
        job_id = self.store.create(kind, owner, inputs, options or {}, total)
        if self._idle > self._mine.qsize():  # this server starts it: the others leave a fresh job to it for a moment
            claimed = self.store.claim(self.worker, self.lease_s, job_id=job_id)
            if claimed is not None:
                self._mine.put(claimed)
        self._wake.set()
        return job_id

    def snapshot(self, job_id: str, owner: str = "") -> dict | None:
        """The job's public fields; None when there is no such job for this caller."""
        found = self.store.snapshot(job_id)
        if found is None or (found.pop("owner") or "") not in ("", owner):
            return None
        return found

    def cancel(self, job_id: str, owner: str = "") -> dict | None:
        if self.snapshot(job_id, owner) is None:
            return None
        self.store.request_cancel(job_id)
        self._wake.set()
        return self.snapshot(job_id, owner)

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Stop: running jobs stop at their next check and go back to the queue (another server, or
        this one when it restarts, resumes them)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for ctx in self._running.values():
                ctx.stopped = True
        for thread in self._threads:
            thread.join(timeout=wait_s)

    # -- workers -----------------------------------------------------------------------------------
    def _poll_s(self) -> float:
        return max(0.2, min(5.0, self.lease_s / 3))

    def _next(self) -> dict | None:
        """A job this server claimed at submission, else one from the store: queued for a poll interval
        at least (its own server had its chance), or left by a server whose lease lapsed."""
        try:
            return self._mine.get_nowait()
        except queue.Empty:
            pass
        try:
            return self.store.claim(self.worker, self.lease_s, min_age_s=self._poll_s())
        except Exception as exc:  # noqa: BLE001 - the database may be away for a moment: try again
            log.warning("cannot claim jobs: %s", exc)
            return None

    def _work(self) -> None:
        while not self._stop.is_set():
            claimed = self._next()
            if claimed is None:
                with self._lock:
                    self._idle += 1
                self._wake.wait(self._poll_s())
                with self._lock:
                    self._idle -= 1
                self._wake.clear()
                self._forget_old()
                continue
            log.info("job %s (%s) runs here, attempt %d", claimed["id"], claimed["kind"], claimed["attempts"])
            self._run(claimed)

    def _forget_old(self) -> None:
        now = time.monotonic()
        if now - self._forgot_at < min(60.0, self.ttl_s):  # a write to the shared database: not every poll
            return
        self._forgot_at = now
        try:
            self.store.forget_finished(self.ttl_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot forget old jobs: %s", exc)

    def _run(self, claimed: dict) -> None:
        ctx = JobContext(self, claimed)
        handler = self.handlers.get(claimed["kind"])
        with self._lock:
            self._running[ctx.job_id] = ctx
        try:
            if handler is None:
                raise SkulensError(f"this server cannot run jobs of kind {claimed['kind']!r}")
            if claimed["attempts"] > 1:
                log.info("job %s (%s): resuming after item %d", ctx.job_id, claimed["kind"], ctx.done)
            self._end(ctx, "succeeded", result=handler(ctx))
        except JobCancelled:
            self._end(ctx, "cancelled")
        except JobStopped:
            self.store.release(ctx.job_id, self.worker)
        except SkulensError as exc:
            self._end(ctx, "failed", error=("job_failed", str(exc)))
        except Exception:  # noqa: BLE001 - logged here; the client sees a generic message
            log.exception("job %s (%s) failed", ctx.job_id, claimed["kind"])
            self._end(ctx, "failed", error=("internal_error", "the job failed unexpectedly; see the server log"))
        finally:
            with self._lock:
                self._running.pop(ctx.job_id, None)

    def _end(self, ctx: JobContext, status: str, result=None, error=None) -> None:
        if ctx.cancel_requested and status == "succeeded":
            status = "cancelled"
        if self.store.finish(ctx.job_id, self.worker, status, result, error) and self.on_finish:
            self.on_finish(self.store.snapshot(ctx.job_id)["kind"], status)

    def _heartbeat(self) -> None:
        """Renew the leases of this server's running jobs; learn of cancels and of lost leases."""
        while not self._stop.wait(self._poll_s()):
            with self._lock:
                running = list(self._running.values())
            for ctx in running:
                try:
                    ctx.cancel_requested = self.store.renew(ctx.job_id, self.worker, self.lease_s)
                except SkulensError:
                    ctx.stopped = True  # another server has it now
                except Exception as exc:  # noqa: BLE001 - the database may be away: the lease may lapse
                    log.warning("cannot renew the lease of job %s: %s", ctx.job_id, exc)
