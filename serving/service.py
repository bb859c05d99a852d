"""synclip as a BentoML service: a web page, a synchronous endpoint for short clips and jobs for long ones.

Start it with `bentoml serve serving.service:LipSync` from the repository root (or `make serve`). The
endpoints are in synclip.serve.http; `GET /` is the web page, `GET /docs` the OpenAPI page.

Settings (environment):
- SYNCLIP_MODEL: the model, a package folder or a model-store tag (`synclip:<version>`); unset, the
  promoted tag in BentoML's model store, or models/synclip when nothing was promoted.
- SYNCLIP_PARAMS (default params.yaml): the face landmarker and the device.
- SYNCLIP_MAX_UPLOAD_MB, SYNCLIP_MAX_SECONDS, SYNCLIP_MAX_SYNC_SECONDS, SYNCLIP_MAX_STEPS: request limits;
  SYNCLIP_QUEUE_SIZE: jobs waiting behind the running one before 503; SYNCLIP_KEEP_SECONDS: how long a
  job's result stays.
- SYNCLIP_WORK_DIR (default $TMPDIR/synclip-serve): uploads and results, one folder per worker process;
  a starting worker removes the folders of processes that are gone.
- SYNCLIP_REQUEST_LOG (default reports/serving/requests.jsonl; empty: off): each lip-synced request's
  input features, for `synclip drift`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import bentoml
from _bentoml_impl.server import app as bentoml_server

from synclip import store
from synclip.config import load_params
from synclip.inference.package import load_pipeline
from synclip.pretrained import require
from synclip.runtime import configure
from synclip.serve import host
from synclip.serve.http import Guard, Live, State, create_app
from synclip.serve.jobs import Job, JobQueue
from synclip.serve.metrics import ServiceMetrics
from synclip.serve.openapi import add_paths
from synclip.serve.requests import RequestLog, ServiceLimits, lipsync_request

LIVE = Live()
PAGE = Path(__file__).with_name("web") / "index.html"
# BentoML's Swagger page, served at /docs (the web page takes /); its assets stay where BentoML serves them
DOCS = Path(bentoml_server.__file__).with_name("main-openapi.html")


@bentoml.asgi_app(create_app(LIVE), path="/")
@bentoml.service(traffic={"timeout": 3600}, workers=1)
class LipSync:
    def __init__(self) -> None:
        host.die_with_parent()
        logging.getLogger("synclip").setLevel(logging.INFO)  # refusals and cleanups, one line each
        workdir = host.claim_workdir(host.work_root())
        # uploads spooled to disk land in this process's folder, so a restart can clear a killed one's
        tempfile.tempdir = str(workdir / "tmp")
        Path(tempfile.tempdir).mkdir()
        params = load_params(Path(os.environ.get("SYNCLIP_PARAMS", "params.yaml")))
        self.device = configure(params.runtime)
        self.landmarker = require(
            "face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker"
        )
        self.model, self.tag = store.resolve(os.environ.get("SYNCLIP_MODEL"))
        self.pipeline = load_pipeline(self.model, self.device)
        self.limits = ServiceLimits.from_env()
        request_log = os.environ.get("SYNCLIP_REQUEST_LOG", "reports/serving/requests.jsonl")
        self.request_log = RequestLog(Path(request_log), params.drift.sampled_frames) if request_log else None
        self.metrics = ServiceMetrics.create()
        self.queue = JobQueue(self.run, self.limits.queue_size, self.limits.keep_seconds, self.count)
        LIVE.state = State(
            queue=self.queue,
            limits=self.limits,
            smoothing_frames=params.preprocess.smoothing_frames,
            workdir=workdir,
            metrics=self.metrics,
            page=PAGE,
            docs=DOCS,
            openapi=add_paths(LipSync.openapi_spec.asdict(), self.limits),
        )

    def run(self, job: Job, progress) -> tuple[Path, dict]:
        """One job on the worker thread: the lip-synced video in the job's folder, and its summary."""
        request = job.request
        out, summary = lipsync_request(
            self.pipeline,
            self.landmarker,
            request["video"],
            request["audio"],
            job.folder,
            request["options"],
            self.limits,
            self.request_log,
            progress,
        )
        return out, {k: v for k, v in summary.as_dict().items() if k != "out"}

    def count(self, job: Job) -> None:
        self.metrics.jobs.labels(job.status).inc()
        self.metrics.queue_depth.set(self.queue.waiting)
        if job.summary is not None and job.started is not None and job.ended is not None:
            self.metrics.frames_generated.inc(job.summary["frames_generated"])
            self.metrics.frames_without_face.inc(job.summary["frames_without_face"])
            self.metrics.seconds_per_frame.observe((job.ended - job.started) / max(1, job.summary["frames"]))

    def __is_ready__(self) -> bool:
        """Not ready while the queue is full: a load balancer sends new work elsewhere."""
        return not self.queue.full

    @bentoml.api
    def model_info(self) -> dict:
        """The model (its store tag, or the folder it was loaded from), its pipeline config, the limits."""
        return {
            "model": str(self.model),
            "tag": self.tag,
            "device": str(self.device),
            "pipeline": dataclasses.asdict(self.pipeline.config),
            "limits": dataclasses.asdict(self.limits),
            "queue": {"waiting": self.queue.waiting, "capacity": self.queue.capacity},
            "request_log": None if self.request_log is None else str(self.request_log.path),
        }


LipSync.add_asgi_middleware(Guard, live=LIVE)
