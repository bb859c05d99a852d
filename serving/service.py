"""synclip as a BentoML service: POST a face video and a speech file to /lipsync, get the lip-synced mp4.

Start it with `bentoml serve serving.service:LipSync` from the repository root (or `make serve`).
SYNCLIP_MODEL (default models/synclip) is the packaged model, SYNCLIP_PARAMS (default params.yaml)
gives the face landmarker and the device; SYNCLIP_MAX_UPLOAD_MB, SYNCLIP_MAX_SECONDS and
SYNCLIP_MAX_STEPS set the request limits. A request the service refuses gets a 4xx with the reason.
SYNCLIP_REQUEST_LOG (default reports/serving/requests.jsonl; empty: off) collects each lip-synced
request's input features for `synclip drift`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType

from synclip.config import load_params
from synclip.inference.lipsync import LipSyncOptions
from synclip.inference.package import load_pipeline
from synclip.pretrained import require
from synclip.runtime import configure
from synclip.serve import RequestError, RequestLog, ServiceLimits, lipsync_request


class Refused(BentoMLException):
    """A request error with the status RequestError chose (400 bad input, 413 too large)."""


@bentoml.service(traffic={"timeout": 1800}, workers=1)
class LipSync:
    def __init__(self) -> None:
        params = load_params(Path(os.environ.get("SYNCLIP_PARAMS", "params.yaml")))
        self.device = configure(params.runtime)
        self.landmarker = require(
            "face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker"
        )
        self.model = Path(os.environ.get("SYNCLIP_MODEL", "models/synclip"))
        self.pipeline = load_pipeline(self.model, self.device)
        self.smoothing_frames = params.preprocess.smoothing_frames
        self.limits = ServiceLimits.from_env()
        request_log = os.environ.get("SYNCLIP_REQUEST_LOG", "reports/serving/requests.jsonl")
        self.request_log = RequestLog(Path(request_log), params.drift.sampled_frames) if request_log else None
        # one job at a time, the others wait (traffic max_concurrency answered 429 to back-to-back requests)
        self.busy = threading.Lock()

    @bentoml.api
    def lipsync(
        self,
        video: Path,
        audio: Path,
        ctx: bentoml.Context,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        face_index: int = 0,
        cut: bool = False,
        pad: bool = False,
    ) -> Annotated[Path, ContentType("video/mp4")]:
        """The video lip-synced to the speech; the X-Synclip-Summary header says what was done."""
        options = LipSyncOptions(
            steps=steps,
            guidance=guidance,
            seed=seed,
            face_index=face_index,
            cut=cut,
            pad=pad,
            smoothing_frames=self.smoothing_frames,
        )
        try:
            with self.busy:
                out, summary = lipsync_request(
                    self.pipeline,
                    self.landmarker,
                    video,
                    audio,
                    Path(ctx.temp_dir),
                    options,
                    self.limits,
                    self.request_log,
                )
        except RequestError as error:
            raise Refused(str(error), error_code=HTTPStatus(error.status)) from None
        ctx.response.headers["X-Synclip-Summary"] = json.dumps({**summary.__dict__, "out": out.name})
        return out

    @bentoml.api
    def model_info(self) -> dict:
        """The packaged model's pipeline config and the request limits."""
        return {
            "model": str(self.model),
            "device": str(self.device),
            "pipeline": dataclasses.asdict(self.pipeline.config),
            "limits": dataclasses.asdict(self.limits),
            "request_log": None if self.request_log is None else str(self.request_log.path),
        }
