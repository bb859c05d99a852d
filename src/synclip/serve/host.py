"""The service process's housekeeping: a working folder per process, cleared of what killed processes
left behind, and a worker that dies with the server process that started it."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def work_root(env: dict[str, str] | None = None) -> Path:
    """SYNCLIP_WORK_DIR, or synclip-serve in the system's temporary folder."""
    env = dict(os.environ if env is None else env)
    return Path(env.get("SYNCLIP_WORK_DIR") or Path(tempfile.gettempdir()) / "synclip-serve")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def claim_workdir(root: Path) -> Path:
    """This process's folder root/<pid>, after removing the folders of processes that no longer run
    (a worker killed mid-request leaves its uploads and partial outputs there)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        if (
            folder.is_dir()
            and folder.name.isdigit()
            and int(folder.name) != os.getpid()
            and not alive(int(folder.name))
        ):
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a process that is gone (%d bytes)", folder, size)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (`kill -9` of `bentoml serve` would otherwise
    orphan the worker, which keeps the port and answers /readyz). No-op elsewhere."""
    if not hasattr(os, "getppid") or not Path("/proc/self").exists():
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning(
            "prctl(PR_SET_PDEATHSIG) failed (errno %d); a killed server may leave this worker",
            ctypes.get_errno(),
        )
    elif os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)
