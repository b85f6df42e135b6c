"""Dynamic micro-batching for ``toon-serve``: the faces of requests that arrive together share
one model call, run on one worker thread, off the event loop.

    batcher = MicroBatcher(toonifier.run, max_batch=8, timeout_s=0.005).start()
    outputs, info = await batcher.submit(crops)     # in a coroutine; crops uint8 [k, S, S, 3]
    batcher.stop()

Imports: numpy and the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("toon.serve")


@dataclass
class BatchInfo:
    """What one model call held, and how long a face waited for it and ran in it."""

    faces: int
    requests: int
    model_s: float
    wait_s: float = 0.0


@dataclass
class _Job:
    crops: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    t_submit: float = field(default_factory=time.monotonic)

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """Hand the result (or the error) to the waiting coroutine, on its event loop."""

        def deliver() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self.loop.call_soon_threadsafe(deliver)


_STOP = object()


class MicroBatcher:
    """Dynamic micro-batching: faces submitted by concurrent requests are run together, in one
    ``run(crops)`` call per batch, on one worker thread (off the event loop).

    A batch starts with the oldest waiting job and takes every job already queued, up to
    ``max_batch`` faces. When it is not full and ``expecting()`` says more requests are on their
    way (admitted, not yet at the model), it waits for them until ``timeout_s`` after the oldest
    job was submitted: the wait is bounded, and a lone request never waits. While a batch runs
    the next one gathers, so batches grow with the load.

    Args:
        run: crops uint8 [N, S, S, 3] -> outputs [N, ...] (e.g. ``Toonifier.run``).
        max_batch: faces per call (a single job with more runs alone).
        timeout_s: the longest a face waits for company.
        expecting: whether more jobs are on their way (default: never wait).
        on_batch: called with each batch's :class:`BatchInfo` (in the worker thread).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 8,
        timeout_s: float = 0.005,
        expecting: Callable[[], bool] | None = None,
        on_batch: Callable[[BatchInfo], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch = max(1, int(max_batch))
        self.timeout_s = max(0.0, float(timeout_s))
        self.expecting = expecting or (lambda: False)
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: _Job | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> MicroBatcher:
        """Start the worker thread (once); returns self."""
        if not self.alive:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="toon-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, crops: np.ndarray) -> tuple[np.ndarray, BatchInfo]:
        """Queue crops [k, S, S, 3]; returns (their outputs [k, ...], the batch they ran in)."""
        if not self.alive:
            raise RuntimeError("the model worker is not running")
        loop = asyncio.get_running_loop()
        job = _Job(np.asarray(crops), loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def _next_batch(self) -> list[_Job]:
        """Block for the oldest job, then gather companions (see the class docstring)."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            self._stopping = True
            return []
        jobs, n = [first], len(first.crops)
        deadline = first.t_submit + self.timeout_s
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.expecting():
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:
                self._stopping = True
                break
            if n + len(job.crops) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            n += len(job.crops)
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs:
                self._run_batch(jobs)
            if self._stopping and self._carry is None:
                break
        while True:  # anything submitted after the stop
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.resolve(error=RuntimeError("the service is stopping"))

    def _run_batch(self, jobs: list[_Job]) -> None:
        """One model call for ``jobs``; each gets its slice of the output back."""
        crops = jobs[0].crops if len(jobs) == 1 else np.concatenate([j.crops for j in jobs])
        t0 = time.monotonic()
        try:
            out = self.run(crops)
        except Exception as e:  # the model failed: every waiting request learns it
            log.error({"event": "model_error", "error": repr(e)}, exc_info=True)
            for job in jobs:
                job.resolve(error=e)
            return
        model_s = time.monotonic() - t0
        start = 0
        for job in jobs:
            k = len(job.crops)
            info = BatchInfo(len(crops), len(jobs), model_s, t0 - job.t_submit)
            job.resolve((out[start : start + k], info))
            start += k
        if self.on_batch is not None:
            try:
                self.on_batch(BatchInfo(len(crops), len(jobs), model_s))
            except Exception:  # metrics must never stop the model worker
                log.exception("on_batch failed")
