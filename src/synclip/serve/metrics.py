"""The service's own Prometheus metrics, shown on BentoML's /metrics beside its request metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Any  # Counter: requests by endpoint and outcome
    jobs: Any  # Counter: jobs by outcome (done, failed, cancelled)
    queue_depth: Any  # Gauge: jobs waiting behind the running one
    frames_generated: Any  # Counter
    frames_without_face: Any  # Counter: frames passed through unchanged
    seconds_per_frame: Any  # Histogram: a job's run time over its output frames

    @staticmethod
    def create() -> ServiceMetrics:
        """Call in the worker process, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR when the worker
        starts, and prometheus_client picks its multi-process mode from it when first imported."""
        import prometheus_client as prom

        return ServiceMetrics(
            requests=prom.Counter(
                "synclip_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"]
            ),
            jobs=prom.Counter("synclip_jobs", "lip-sync jobs by outcome", ["outcome"]),
            queue_depth=prom.Gauge(
                "synclip_queue_depth", "jobs waiting behind the running one", multiprocess_mode="livesum"
            ),
            frames_generated=prom.Counter(
                "synclip_frames_generated", "frames whose lower face was generated"
            ),
            frames_without_face=prom.Counter(
                "synclip_frames_without_face", "frames passed through unchanged: no face found"
            ),
            seconds_per_frame=prom.Histogram(
                "synclip_seconds_per_frame",
                "a finished job's run time per output frame",
                buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
            ),
        )


def outcome(status: int) -> str:
    """A response's status as a metric label."""
    if status < 400:
        return "ok"
    if status == 503:
        return "busy"
    return "refused" if status < 500 else "error"
