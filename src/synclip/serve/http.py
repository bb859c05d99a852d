"""The service's HTTP side, as an ASGI app and a middleware that BentoML hosts (serving/service.py):
the synchronous endpoint, jobs (submit → status → result, cancel), the web page, and one JSON error
shape, body-size limit and request metrics for every endpoint of the service.

Endpoints: POST /lipsync (short inputs; answers the mp4), POST /jobs → 202 {"job", ...},
GET /jobs/{id} (status and progress), GET /jobs/{id}/result (the mp4), DELETE /jobs/{id} (cancel, or
delete the result). Every 4xx and 5xx: {"error": "<one line>", "status": <code>}; 503 carries
Retry-After.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synclip.serve.jobs import DONE, Job, JobQueue, QueueFullError
from synclip.serve.metrics import ServiceMetrics, outcome
from synclip.serve.requests import (
    REQUEST_OPTIONS,
    RequestError,
    ServiceLimits,
    check_filename,
    check_request,
    parse_options,
)

log = logging.getLogger(__name__)

FILES = ("video", "audio")
POLL_SECONDS = 0.2  # how often a waiting synchronous request looks for its job's end and its client
UNTRACKED = ("/metrics", "/readyz", "/livez", "/healthz")  # probes: not counted as requests


@dataclass(frozen=True)
class State:
    """What the HTTP side needs of the running service."""

    queue: JobQueue
    limits: ServiceLimits
    smoothing_frames: float
    workdir: Path  # this process's folder (synclip.serve.host.claim_workdir)
    metrics: ServiceMetrics | None
    page: Path  # the web page at /
    docs: Path  # the OpenAPI page at /docs
    openapi: dict  # what /docs.json answers


class Live:
    """The worker's State, set when the service object is made (BentoML builds the app around it)."""

    state: State | None = None

    def get(self) -> State:
        if self.state is None:
            raise RequestError("the service is still starting", 503)
        return self.state


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def refusal(error: Exception) -> JSONResponse:
    if isinstance(error, QueueFullError):
        return error_response(str(error), 503, {"Retry-After": str(error.retry_after)})
    assert isinstance(error, RequestError), error
    return error_response(str(error), error.status)


def suffix(name: str | None) -> str:
    """A safe extension to keep from an upload's name (ffmpeg probes the content, not the name)."""
    found = re.fullmatch(r".*(\.[A-Za-z0-9]{1,8})", name or "")
    return found.group(1).lower() if found else ""


def _store(upload: UploadFile, path: Path) -> None:
    upload.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 2**20)


async def accept(request: Request, state: State, sync: bool) -> Job:
    """Parse, check and queue one lip-sync request; RequestError or QueueFullError before any model work."""
    if state.queue.full:  # answered before the body is read
        raise QueueFullError(state.queue.waiting, state.queue.retry_after())
    folder = state.workdir / "jobs" / uuid.uuid4().hex
    try:
        async with request.form(
            max_files=len(FILES), max_fields=len(REQUEST_OPTIONS), max_part_size=2**16
        ) as form:
            uploads = {}
            for field in FILES:
                upload = form.get(field)
                if upload is None:
                    raise RequestError(f"{field}: missing; send it as the multipart form field {field!r}")
                if not isinstance(upload, UploadFile):
                    raise RequestError(f"{field}: must be a file upload, got a text field")
                check_filename(field, upload.filename)
                uploads[field] = upload
            fields = {name: value for name, value in form.multi_items() if name not in FILES}
            options = parse_options(fields, state.limits, state.smoothing_frames)
            folder.mkdir(parents=True)
            paths = {field: folder / f"{field}{suffix(upload.filename)}" for field, upload in uploads.items()}
            for field, upload in uploads.items():
                await anyio.to_thread.run_sync(_store, upload, paths[field])
        max_seconds = state.limits.max_sync_seconds if sync else None
        await anyio.to_thread.run_sync(
            check_request, paths["video"], paths["audio"], options, state.limits, max_seconds
        )
        if await request.is_disconnected():  # the client gave up during the upload or the checks
            raise ClientDisconnect
        return state.queue.submit(
            folder, {"video": paths["video"], "audio": paths["audio"], "options": options}
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


async def lipsync(request: Request) -> Response:
    """The lip-synced mp4 in the answer; X-Synclip-Summary says what was done."""
    state = request.app.state.live.get()
    job = await accept(request, state, sync=True)
    while not job.finished.is_set():
        await anyio.sleep(POLL_SECONDS)
        if not job.finished.is_set() and await request.is_disconnected():
            await anyio.to_thread.run_sync(state.queue.cancel, job.id)
            state.queue.release(job)
            log.info(
                "client gone: job %s dropped (%d of %s frames done)",
                job.id,
                job.frames_done,
                job.frames_total,
            )
            if state.metrics is not None:
                state.metrics.jobs.labels("client_gone").inc()
            return error_response("the client went away; its request was dropped", 499)  # for the log
    if job.status != DONE:
        state.queue.release(job)
        return error_response(job.error or f"job {job.status}", job.error_status or 500)
    summary = json.dumps({**job.summary, "out": job.result.name})
    return FileResponse(
        job.result,
        media_type="video/mp4",
        headers={"X-Synclip-Summary": summary},
        background=BackgroundTask(state.queue.release, job),
    )


async def submit(request: Request) -> Response:
    state = request.app.state.live.get()
    job = await accept(request, state, sync=False)
    return JSONResponse(job.view(state.queue.position(job)), status_code=202)


def _job(request: Request) -> tuple[State, Job]:
    state = request.app.state.live.get()
    job_id = request.path_params["job"]
    job = state.queue.get(job_id)
    if job is None:
        kept = f"{state.limits.keep_seconds:g} s"
        raise RequestError(f"job {job_id}: no such job (a finished job's result is kept for {kept})", 404)
    return state, job


async def status(request: Request) -> Response:
    state, job = _job(request)
    return JSONResponse(job.view(state.queue.position(job)))


async def result(request: Request) -> Response:
    _, job = _job(request)
    if job.status != DONE:
        raise RequestError(f"job {job.id} is {job.status}; it has no result", 409)
    return FileResponse(job.result, media_type="video/mp4", filename=f"lipsync-{job.id[:8]}.mp4")


async def cancel(request: Request) -> Response:
    state, job = _job(request)
    await anyio.to_thread.run_sync(state.queue.cancel, job.id)
    return JSONResponse(job.view(None))


async def page(request: Request) -> Response:
    return FileResponse(request.app.state.live.get().page, media_type="text/html")


async def docs(request: Request) -> Response:
    return FileResponse(request.app.state.live.get().docs, media_type="text/html")


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.live.get().openapi)


async def _refused(request: Request, error: Exception) -> Response:
    return refusal(error)


async def _disconnected(request: Request, error: Exception) -> Response:
    return Response(status_code=400)  # the client left mid-upload (or the size guard cut it off)


def create_app(live: Live) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/docs.json", openapi, methods=["GET"]),
            Route("/lipsync", lipsync, methods=["POST"]),
            Route("/jobs", submit, methods=["POST"]),
            Route("/jobs/{job:str}", status, methods=["GET"]),
            Route("/jobs/{job:str}", cancel, methods=["DELETE"]),
            Route("/jobs/{job:str}/result", result, methods=["GET"]),
        ],
        exception_handlers={
            RequestError: _refused,
            QueueFullError: _refused,
            ClientDisconnect: _disconnected,
        },
    )
    app.state.live = live
    return app


def endpoint(path: str) -> str:
    """A request path as a metric label (job ids folded)."""
    return re.sub(r"^/jobs/[^/]+", "/jobs/{id}", path)


class Guard:
    """ASGI middleware around the whole service: refuses a body over the limit while it streams in
    (413, before the app reads on), gives every 4xx and 5xx the one JSON error shape, logs each refusal
    in one line, and counts requests by endpoint and outcome."""

    def __init__(self, app: ASGIApp, live: Live) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.live.state
        limit = state.limits.max_body_bytes if state is not None else None
        method, path = scope["method"], scope["path"]
        too_large = False  # set once the streamed body passes the limit

        def finished(status: int, message: str | None) -> None:
            if status >= 400 and message is not None:
                level = logging.WARNING if status in (413, 503) else logging.INFO
                if status >= 500 and status != 503:
                    level = logging.ERROR
                log.log(level, "%s %s %d: %s", method, path, status, message)
            if state is not None and state.metrics is not None and path not in UNTRACKED:
                state.metrics.requests.labels(endpoint(path), outcome(status)).inc()
                state.metrics.queue_depth.set(state.queue.waiting)

        declared = dict(scope["headers"]).get(b"content-length")
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            message = f"the request is {int(declared) / 2**20:.1f} MB; the service takes at most {limit / 2**20:.0f} MB"
            await error_response(message, 413)(scope, receive, send)
            finished(413, message)
            return

        received = 0

        async def counted() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request" and limit is not None:
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}  # the app stops reading; `shaped` answers 413
            return message

        pending: dict = {}

        async def shaped(message: Message) -> None:
            if too_large:
                if message["type"] == "http.response.start":
                    text = f"the request body is over the service's limit of {limit / 2**20:.0f} MB"
                    await error_response(text, 413)(scope, receive, send)
                    finished(413, text)
                return
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    finished(message["status"], None)
                    await send(message)
                else:
                    pending["start"], pending["body"] = message, b""
                return
            if message["type"] == "http.response.body" and "start" in pending:
                pending["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                start = pending.pop("start")
                text = error_text(pending.pop("body"), start["status"])
                body = json.dumps({"error": text, "status": start["status"]}).encode()
                headers = [
                    (name, value)
                    for name, value in start["headers"]
                    if name.lower() not in (b"content-length", b"content-type")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                finished(start["status"], text)
                return
            await send(message)

        await self.app(scope, counted, shaped)


def error_text(body: bytes, status: int) -> str:
    """The one-line reason inside any error body: ours, BentoML's ({"error"} or [{"error"}]), Starlette's
    ({"detail"} or plain text), or the status's own phrase."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return text.splitlines()[0] if text else phrase(status)
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        for key in ("error", "detail"):
            if isinstance(data.get(key), str):
                return data[key]
    return phrase(status)


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 499 and other unofficial codes
        return f"status {status}"
