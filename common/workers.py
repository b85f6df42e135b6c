"""Worker processes that end with their parent (torch-free).

A pool worker waits for tasks on a pipe. A forked worker holds copies of both ends of that pipe,
so when its parent is killed (``kill -9``, the out-of-memory killer) the read never ends: the
worker would sit there forever, orphaned, with everything it inherited in memory. Each pool's
initializer therefore calls :func:`exit_with_parent`, which ends the worker when its parent is
gone, in two ways:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker the moment its
  parent exits. The "parent" the kernel watches is the *thread* that started the worker, so
  this is used only when the caller says the pool was started by a thread that outlives it
  (``pdeathsig=True``: the main thread);
- everywhere: a daemon thread that checks every ``interval`` seconds whether the parent
  process id changed (an orphan is re-parented to init or a subreaper) and exits if so.

A parent that died before the worker got here is caught too: the worker compares its parent
with ``expected_parent`` (the pid of the process that created the pool, when it is the direct
parent; not so under ``forkserver``, whose server is the parent) and checks that ``root`` (the
process that created the pool) is still there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 70  # exit status of a worker whose parent is gone


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process whatever the signal
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphaned(ppid: int, root: int | None) -> bool:
    return os.getppid() != ppid or (root is not None and not _alive(root))


def _watch(ppid: int, root: int | None, interval: float) -> None:
    while True:
        time.sleep(interval)
        if _orphaned(ppid, root):
            os._exit(EXIT_ORPHANED)


def exit_with_parent(
    expected_parent: int | None = None,
    root: int | None = None,
    *,
    pdeathsig: bool = True,
    interval: float = 0.5,
) -> None:
    """Make this (worker) process end when its parent process ends; call it first thing in
    a pool initializer. ``expected_parent``: the pid the parent must have (the pool's creator,
    when it forks or spawns the workers itself); ``root``: a pid that must still exist (the
    pool's creator); ``pdeathsig``: also use Linux's parent-death signal (only when the thread
    that started the pool outlives it, see the module docstring)."""
    ppid = os.getppid()
    if (expected_parent is not None and ppid != expected_parent) or _orphaned(ppid, root):
        os._exit(EXIT_ORPHANED)  # the parent died before this worker started
    if pdeathsig:
        _set_pdeathsig(signal.SIGKILL)
    if _orphaned(ppid, root):  # it died between the check and the prctl
        os._exit(EXIT_ORPHANED)
    threading.Thread(
        target=_watch, args=(ppid, root, interval), name="parent-watch", daemon=True
    ).start()
