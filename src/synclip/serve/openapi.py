"""The OpenAPI description of the lip-sync endpoints (synclip.serve.http), added to BentoML's own for /docs."""

from __future__ import annotations

from synclip.serve.requests import MAX_FACE_INDEX, MAX_SEED, ServiceLimits

ERROR = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}
JOB = {
    "type": "object",
    "properties": {
        "job": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
        "frames_done": {"type": "integer"},
        "frames_total": {"type": "integer", "nullable": True},
        "position": {"type": "integer", "nullable": True, "description": "1: the next to run"},
        "error": {"type": "string", "nullable": True},
        "error_status": {"type": "integer", "nullable": True},
        "summary": {"type": "object", "nullable": True},
        "result": {"type": "string", "nullable": True, "description": "where to GET the video when done"},
    },
}


def _errors(*codes: int) -> dict:
    reasons = {
        400: "a bad option or file (the reason names it)",
        404: "no such job",
        409: "the job has no result",
        413: "a file, the body or the output length over a limit",
        422: "no face in any frame: nothing to lip-sync",
        503: "the queue is full; Retry-After says when to come back",
    }
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/SynclipError"}}}
    return {str(code): {"description": reasons[code], "content": body} for code in codes}


def upload_form(limits: ServiceLimits) -> dict:
    fields = {
        "video": {"type": "string", "format": "binary", "description": "the face video"},
        "audio": {"type": "string", "format": "binary", "description": "the speech (any file with audio)"},
        "steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
        "guidance": {"type": "number", "minimum": 1.0},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "face_index": {"type": "integer", "minimum": 0, "maximum": MAX_FACE_INDEX, "default": 0},
        "cut": {"type": "boolean", "default": False, "description": "cut the speech to the video"},
        "pad": {"type": "boolean", "default": False, "description": "pad the speech to the video"},
    }
    schema = {"type": "object", "required": ["video", "audio"], "properties": fields}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def job_id() -> list[dict]:
    return [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}]


def add_paths(spec: dict, limits: ServiceLimits) -> dict:
    """BentoML's spec with the lip-sync endpoints and the error shape added."""
    tag = ["Lip sync"]
    job = {"application/json": {"schema": {"$ref": "#/components/schemas/SynclipJob"}}}
    video = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
    paths = {
        "/lipsync": {
            "post": {
                "tags": tag,
                "summary": f"Lip-sync a short clip (output up to {limits.max_sync_seconds:g} s) and answer the mp4",
                "requestBody": upload_form(limits),
                "responses": {"200": {"description": "the lip-synced video", "content": video}}
                | _errors(400, 413, 422, 503),
            }
        },
        "/jobs": {
            "post": {
                "tags": tag,
                "summary": f"Submit a lip-sync job (output up to {limits.max_seconds:g} s)",
                "requestBody": upload_form(limits),
                "responses": {"202": {"description": "queued", "content": job}} | _errors(400, 413, 503),
            }
        },
        "/jobs/{job}": {
            "get": {
                "tags": tag,
                "summary": "A job's status and progress",
                "parameters": job_id(),
                "responses": {"200": {"description": "the job", "content": job}} | _errors(404),
            },
            "delete": {
                "tags": tag,
                "summary": "Cancel a job (or delete its result); its files go",
                "parameters": job_id(),
                "responses": {"200": {"description": "the job, cancelled", "content": job}} | _errors(404),
            },
        },
        "/jobs/{job}/result": {
            "get": {
                "tags": tag,
                "summary": f"A done job's video (kept {limits.keep_seconds:g} s)",
                "parameters": job_id(),
                "responses": {"200": {"description": "the lip-synced video", "content": video}}
                | _errors(404, 409),
            }
        },
    }
    schemas = {**spec.get("components", {}).get("schemas", {}), "SynclipError": ERROR, "SynclipJob": JOB}
    return {
        **spec,
        "paths": {**paths, **spec["paths"]},
        "components": {**spec.get("components", {}), "schemas": schemas},
    }
