"""Process-tree helpers for the kill tests (Linux ``/proc``): a job is started in a subprocess,
its pool workers are found, the job is killed with SIGKILL and the workers must be gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/stat").exists(),
    reason="reads the process tree from Linux /proc",
)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] != "Z":
            parents.setdefault(st[1], []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies waiting to be reaped count as gone)."""
    return {p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}


def start(argv: list[str]) -> subprocess.Popen:
    """``python -m pairs.cli ARGV`` in the repository."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pairs.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_and_check_workers_exit(
    proc: subprocess.Popen, min_workers: int, timeout: float = 120, grace: float = 60
) -> set[int]:
    """Wait until ``proc`` has ``min_workers`` descendants, SIGKILL it, wait for them to exit,
    and return those still running after ``grace`` seconds (a hang guard, not a deadline: a
    passing run returns as soon as they are gone; the survivors are killed so that a failing
    test leaks nothing)."""
    deadline = time.monotonic() + timeout
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers = descendants(proc.pid)
        if len(workers) >= min_workers:
            break
        time.sleep(0.1)
    if proc.poll() is not None or len(workers) < min_workers:
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace")[-2000:]
        pytest.fail(f"the job never had {min_workers} workers (exit {proc.returncode}): {err}")
    time.sleep(0.5)  # usually lets the workers reach their wait for tasks (any state must exit)
    workers |= descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]
    end = time.monotonic() + grace
    while alive(workers) and time.monotonic() < end:
        time.sleep(0.1)
    left = alive(workers)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left
