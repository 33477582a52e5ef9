"""GET /v1/jobs/{job_id} (status, progress, result) and DELETE /v1/jobs/{job_id} (cancel, needs a write key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from skulens.serving.api_errors import ApiError
from skulens.serving.deps import job_owner, require_read, require_write, services
from skulens.serving.schemas import ErrorResponse, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}


NOT_FOUND = "no such job for this API key (finished jobs are kept for a limited time)"


def _status(request: Request, job_id: str) -> JobStatus:
    # Another key's job answers as a missing one: a job id is not proof of who may read the result.
    snapshot = services(request).jobs.snapshot(job_id, job_owner(request))
    if snapshot is None:
        raise ApiError(404, "job_not_found", NOT_FOUND)
    return JobStatus.model_validate(snapshot)


@router.get(
    "/{job_id}",
    response_model=JobStatus,
    responses=ERRORS,
    dependencies=[Depends(require_read)],
    summary="Status, progress and (when done) result of a background job",
)
async def get_job(job_id: str, request: Request) -> JobStatus:
    return _status(request, job_id)


@router.delete(
    "/{job_id}",
    response_model=JobStatus,
    responses=ERRORS,
    dependencies=[Depends(require_write)],
    summary="Cancel a background job",
)
async def cancel_job(job_id: str, request: Request) -> JobStatus:
    if services(request).jobs.cancel(job_id, job_owner(request)) is None:
        raise ApiError(404, "job_not_found", NOT_FOUND)
    return _status(request, job_id)
