"""The service's work line: one model runs one job at a time on a worker thread; a bounded queue waits
behind it; each job reports its progress, can be cancelled at any frame, and owns one folder that goes
when the job does (cancelled, failed, expired or handed over)."""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from synclip.serve.requests import RequestError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)


class QueueFullError(Exception):
    """The queue is full; `retry_after` is the wait, in whole seconds, worth suggesting."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the service is busy: {waiting} jobs are waiting; retry in {retry_after} s")
        self.retry_after = retry_after


class JobCancelledError(Exception):
    """Raised inside a running job (from its progress callback) to stop it at the next frame."""


@dataclass
class Job:
    id: str
    folder: Path  # the job's uploads and result; removed when the job goes
    request: dict  # what the work function needs (paths, options); opaque to the queue
    status: str = QUEUED
    frames_done: int = 0
    frames_total: int | None = None
    error: str | None = None
    error_status: int | None = None  # the HTTP status the error deserves
    result: Path | None = None
    summary: dict | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def view(self, position: int | None) -> dict:
        """The job as its status endpoint shows it."""
        return {
            "job": self.id,
            "status": self.status,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "position": position,
            "error": self.error,
            "error_status": self.error_status,
            "summary": self.summary,
            "result": f"/jobs/{self.id}/result" if self.status == DONE else None,
        }


Work = Callable[[Job, Callable[[int, int], None]], tuple[Path, dict]]
"""Runs a job: (job, progress(done, total)) → (result file inside job.folder, summary)."""


class JobQueue:
    """One worker thread runs `work` on one job at a time; at most `capacity` jobs wait behind it."""

    def __init__(
        self,
        work: Work,
        capacity: int,
        keep_seconds: float,
        on_end: Callable[[Job], None] | None = None,
    ) -> None:
        self.work = work
        self.capacity = capacity
        self.keep_seconds = keep_seconds
        self.on_end = on_end  # metrics: called once per job, after its status is final
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._seconds: deque[float] = deque(maxlen=20)  # recent jobs' run times, for Retry-After
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="synclip-jobs", daemon=True)
        self._thread.start()

    # --- what the HTTP side calls (from the event loop; never blocks on a job) --------------------

    def submit(self, folder: Path, request: dict) -> Job:
        """A new queued job, or QueueFullError when `capacity` jobs already wait."""
        with self._lock:
            if len(self._waiting) >= self.capacity:
                raise QueueFullError(len(self._waiting), self.retry_after())
            job = Job(uuid.uuid4().hex, folder, request)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        self.sweep()
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, None when the job is not waiting."""
        with self._lock:
            return self._waiting.index(job) + 1 if job in self._waiting else None

    def cancel(self, job_id: str) -> Job | None:
        """Stop a job wherever it is and remove its files; a finished job's result is deleted."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._end(job, CANCELLED)
            elif job.status in (DONE, FAILED):
                job.status = CANCELLED
                job.result = None
                shutil.rmtree(job.folder, ignore_errors=True)
        if job is self._running:  # it stops at its next frame; wait for its files to go
            job.finished.wait()
        return job

    def release(self, job: Job) -> None:
        """Forget a job and remove its folder (a synchronous request's, once its answer is sent)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def full(self) -> bool:
        return self.waiting >= self.capacity

    def retry_after(self) -> int:
        """Seconds until a place is likely free: one job's typical run time (10 s before any has run)."""
        seconds = sum(self._seconds) / len(self._seconds) if self._seconds else 10.0
        return max(1, min(600, math.ceil(seconds)))

    def sweep(self) -> None:
        """Forget the jobs that ended more than `keep_seconds` ago, and remove their files."""
        now = time.monotonic()
        with self._lock:
            old = [
                job
                for job in self._jobs.values()
                if job.ended is not None and now - job.ended > self.keep_seconds
            ]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the worker after the running job (the waiting ones are cancelled)."""
        with self._lock:
            self._closed = True
            for job in list(self._waiting):
                job.cancel.set()
                self._end(job, CANCELLED)
            self._waiting.clear()
            self._lock.notify()
        self._thread.join()

    # --- the worker thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            if job is not self._IDLE:
                self._run(job)
                with self._lock:
                    self._running = None
            self.sweep()

    _IDLE = object()  # _next's answer when nothing came within the sweep interval

    def _next(self):
        """The next job to run (now RUNNING), _IDLE after a quiet minute, None once closed."""
        with self._lock:
            if not self._waiting and not self._closed:
                self._lock.wait(timeout=min(60.0, self.keep_seconds))
            if self._closed:
                return None
            if not self._waiting:
                return self._IDLE
            job = self._waiting.popleft()
            self._running = job
            job.status, job.started = RUNNING, time.monotonic()
            return job

    def _run(self, job: Job) -> None:
        def progress(done: int, total: int) -> None:
            job.frames_done, job.frames_total = done, total
            if job.cancel.is_set():
                raise JobCancelledError

        try:
            job.result, job.summary = self.work(job, progress)
        except JobCancelledError:
            outcome = CANCELLED
        except RequestError as error:
            job.error, job.error_status = str(error), error.status
            outcome = FAILED
        except Exception:  # a bug, not the caller's mistake: the log gets the traceback
            log.exception("job %s failed", job.id)
            job.error, job.error_status = "an unexpected error stopped the job; the server log has it", 500
            outcome = FAILED
        else:
            outcome = CANCELLED if job.cancel.is_set() else DONE
            self._seconds.append(time.monotonic() - job.started)
        with self._lock:
            self._end(job, outcome)

    def _end(self, job: Job, outcome: str) -> None:
        """Final status, files of a job without a result removed (call with the lock held)."""
        job.status, job.ended = outcome, time.monotonic()
        if outcome != DONE:
            job.result = None
            shutil.rmtree(job.folder, ignore_errors=True)
        job.finished.set()
        if self.on_end is not None:
            self.on_end(job)
