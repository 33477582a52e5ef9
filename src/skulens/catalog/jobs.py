"""Background jobs as rows of the catalog's database: any server of a fleet can answer for a job, and a
job whose server died is taken over by another.

The server running a job holds a lease (``lease_owner``, ``lease_until``) that it renews while it works;
claiming is one conditional UPDATE (a queued job, or a running one whose lease has expired), so two
servers never both win. The work done so far is a checkpoint (``done`` + a JSON state) that the next
holder resumes from, and every checkpoint and finish is fenced: a server that lost its lease can no
longer write to the job. Inputs (photos, an import's JSON) are rows too, deleted when the job ends.
Leases compare wall clocks: the servers' clocks must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from skulens.catalog.db import JobInputRow, JobRow
from skulens.errors import SkulensError

FINISHED = ("succeeded", "failed", "cancelled")


class LeaseLost(SkulensError):
    """This server no longer holds the job's lease: another server has taken the job over."""


def snapshot_of(row) -> dict:
    """A job's public fields (plus ``owner``, which the server checks and does not show)."""
    finished = row.status == "succeeded"
    return {
        "job_id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": {"done": row.done, "total": row.total},
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "result": row.result if finished else None,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "attempts": row.attempts,
        "owner": row.owner,
    }


class JobQueue:
    """The jobs table of one catalog database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, kind: str, owner: str, inputs: list[tuple[str, bytes]], options: dict, total: int | None) -> str:
        job_id = secrets.token_urlsafe(12)
        with Session(self.engine) as session, session.begin():
            session.add(
                JobRow(
                    id=job_id,
                    kind=kind,
                    owner=owner,
                    status="queued",
                    done=0,
                    total=total,
                    options=options,
                    cancel_requested=False,
                    attempts=0,
                    created_at=time.time(),
                )
            )
            session.flush()  # the job row before its inputs (their foreign key)
            session.add_all(
                JobInputRow(job_id=job_id, position=i, name=name, data=data) for i, (name, data) in enumerate(inputs)
            )
        return job_id

    def claim(self, worker: str, lease_s: float, job_id: str | None = None, min_age_s: float = 0.0) -> dict | None:
        """Take ``job_id``, or the oldest queued job (queued for ``min_age_s`` at least: the server it was
        submitted to gets the first chance), or a running one whose server stopped renewing its lease:
        its id, kind, options, done, total, checkpoint and attempts (this one included)."""
        now = time.time()
        fresh = JobRow.attempts == 0  # never started: handed back or orphaned jobs are claimable at once
        claimable = ((JobRow.status == "queued") & (~fresh | (JobRow.created_at <= now - min_age_s))) | (
            (JobRow.status == "running") & (JobRow.lease_until < now)
        )
        if job_id is not None:
            claimable = (JobRow.id == job_id) & (JobRow.status == "queued")
        with Session(self.engine) as session:
            candidates = session.scalars(select(JobRow.id).where(claimable).order_by(JobRow.created_at).limit(8)).all()
        for candidate in candidates:
            claimed = self._try_claim(candidate, claimable, worker, now + lease_s)
            if claimed is not None:
                return claimed
        return None

    def _try_claim(self, job_id: str, claimable, worker: str, lease_until: float) -> dict | None:
        with Session(self.engine) as session, session.begin():
            won = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, claimable)
                .values(
                    status="running",
                    lease_owner=worker,
                    lease_until=lease_until,
                    attempts=JobRow.attempts + 1,
                    started_at=func.coalesce(JobRow.started_at, time.time()),
                )
            ).rowcount
            if not won:
                return None
            row = session.get(JobRow, job_id)
            return {
                "id": row.id,
                "kind": row.kind,
                "options": row.options or {},
                "done": row.done,
                "total": row.total,
                "checkpoint": row.checkpoint,
                "attempts": row.attempts,
            }

    def _held(self, job_id: str, worker: str):
        return (JobRow.id == job_id) & (JobRow.lease_owner == worker) & (JobRow.status == "running")

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; returns whether a cancel was asked. LeaseLost when another server has it."""
        with Session(self.engine) as session, session.begin():
            held = session.execute(
                update(JobRow).where(self._held(job_id, worker)).values(lease_until=time.time() + lease_s)
            ).rowcount
            if not held:
                raise LeaseLost(f"job {job_id} is no longer this server's")
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def checkpoint(self, job_id: str, worker: str, done: int, state: dict | None, total: int | None = None) -> None:
        values = {"done": done, "checkpoint": state}
        if total is not None:
            values["total"] = total
        with Session(self.engine) as session, session.begin():
            if not session.execute(update(JobRow).where(self._held(job_id, worker)).values(**values)).rowcount:
                raise LeaseLost(f"job {job_id} is no longer this server's")

    def finish(self, job_id: str, worker: str, status: str, result=None, error: tuple[str, str] | None = None) -> bool:
        """End the job (fenced: False when another server holds it now); its inputs are deleted."""
        code, message = error or (None, None)
        with Session(self.engine) as session, session.begin():
            ended = session.execute(
                update(JobRow)
                .where(self._held(job_id, worker))
                .values(
                    status=status,
                    result=result,
                    error_code=code,
                    error_message=message,
                    finished_at=time.time(),
                    lease_owner=None,
                    lease_until=None,
                    checkpoint=None,
                )
            ).rowcount
            if ended:
                session.execute(delete(JobInputRow).where(JobInputRow.job_id == job_id))
        return bool(ended)

    def release(self, job_id: str, worker: str) -> None:
        """Hand a running job back to the queue (a server shutting down): another server resumes it."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(JobRow)
                .where(self._held(job_id, worker))
                .values(status="queued", lease_owner=None, lease_until=None)
            )

    def inputs(self, job_id: str) -> list[tuple[str, bytes]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(JobInputRow.name, JobInputRow.data)
                .where(JobInputRow.job_id == job_id)
                .order_by(JobInputRow.position)
            ).all()
        return [(name, data) for name, data in rows]

    def snapshot(self, job_id: str) -> dict | None:
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
            return snapshot_of(row) if row is not None else None

    def request_cancel(self, job_id: str) -> None:
        """A queued job ends at once; a running one at its server's next check."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "queued")
                .values(status="cancelled", finished_at=now, cancel_requested=True)
            )
            session.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == "running").values(cancel_requested=True)
            )
            session.execute(delete(JobInputRow).where(JobInputRow.job_id == job_id, _is_finished(job_id)))

    def unfinished(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(JobRow.id)).where(JobRow.status.not_in(FINISHED))))

    def forget_finished(self, older_than_s: float) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                delete(JobRow).where(JobRow.status.in_(FINISHED), JobRow.finished_at < time.time() - older_than_s)
            )


def _is_finished(job_id: str):
    return select(JobRow.id).where(JobRow.id == job_id, JobRow.status.in_(FINISHED)).exists()
