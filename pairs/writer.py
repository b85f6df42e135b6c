"""Writing shards: PNG encoding in a process pool and one tar writer thread per shard.

The main thread renders (:mod:`pairs.render`) and submits each pair's PNG encoding
(:func:`pairs.photos.encode_pair`) to a process pool; a :class:`_ShardSink` thread takes the
encoded pairs in key order and appends them to the shard's tar (:class:`pairs.shards.ShardWriter`),
so the device, the encoders and the disk work at the same time. A finished tar is renamed into
place, then its sidecar records it (:func:`write_shard`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import PIL
import torch
from PIL import features

from common.workers import exit_with_parent
from pairs import photos, shards
from pairs.render import RenderedBatch, pair_meta
from pairs.shards import PairsError

if TYPE_CHECKING:
    from pairs.job import Job


class _InlineExecutor(Executor):
    """Runs each task at submit time (``--workers 0``)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            fut.set_exception(e)
        return fut


def _noop(x: int) -> int:
    return x


def _worker_init(parent: int, pdeathsig: bool) -> None:
    exit_with_parent(parent, pdeathsig=pdeathsig)  # never outlive a killed job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def default_workers() -> int:
    """PNG encoding processes by default: the cores less one, from 1 to 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def encoder_pool(workers: int) -> Executor:
    """A started process pool for PNG encoding, or an inline executor for ``workers == 0``.

    Workers are forked where the platform can (as torch's DataLoader does: fast, and no
    ``if __name__ == "__main__"`` guard needed in callers' scripts); they only run numpy and
    Pillow, never torch. Elsewhere they are spawned. Workers end when this process ends, even
    when it is killed (:func:`common.workers.exit_with_parent`); shut the pool down from the
    thread that created it.
    """
    if workers == 0:
        return _InlineExecutor()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    # The kernel's parent-death signal follows the creating thread: only the main thread is
    # sure to outlive the pool. Other threads rely on the workers' watchdog thread.
    main = threading.current_thread() is threading.main_thread()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context(method),
        initializer=_worker_init,
        initargs=(os.getpid(), main),
    )
    list(pool.map(_noop, range(workers)))  # start the workers now, not mid-job
    return pool


def _writer_info(job: Job, seconds: float) -> dict[str, Any]:
    """The sidecar's informational ``written`` record: where and how the shard was made."""
    dev = job.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    return {
        "device": f"{dev.type} ({name or platform.machine()})",
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "host": platform.node(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "zlib": features.version("zlib"),
        "zlib_ng": features.version("zlib_ng") if "zlib_ng" in features.features else None,
        "seconds": round(seconds, 3),
    }


def batches_of(job: Job, index: int) -> range:
    """The render batches that hold the pairs of shard ``index``."""
    r = shards.shard_range(index, job.count, job.shard_size)
    B = job.settings["batch"]
    return range(r.start // B, (r.stop - 1) // B + 1)


class _ShardSink:
    """Writes one shard in a thread of its own: takes ``(k, encode future, meta)`` in key
    order, waits for each encoding, appends it to the tar (file writes and hashing release the
    GIL, so the main thread keeps the device busy meanwhile)."""

    def __init__(self, out: Path, index: int, bar: Any, max_pending: int) -> None:
        self.writer = shards.ShardWriter(out, index)
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.bar = bar
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"shard-{index}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not None and not self.stop.is_set():
                k, fut, meta = item
                src_png, dst_png = fut.result()
                self.writer.add(
                    shards.pair_key(k), {"src.png": src_png, "dst.png": dst_png, "json": meta}
                )
                self.bar.update(1)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
            self.stop.set()

    def _offer(self, item: tuple[int, Future, bytes] | None) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def put(self, item: tuple[int, Future, bytes]) -> None:
        """Queue a sample (blocks while the queue is full); raises what stopped the thread."""
        if not self._offer(item):
            self.finish()

    def finish(self) -> tuple[str, int]:
        """Wait for the queued samples and commit; raises what went wrong in the thread."""
        self._offer(None)
        self.thread.join()
        if isinstance(self.error, BrokenProcessPool):
            raise PairsError("a PNG encoding worker died (out of memory?); rerun to resume")
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise PairsError(f"writing {self.writer.final.name} was stopped")
        return self.writer.commit()

    def abort(self) -> None:
        """Stop the thread, cancel what is queued and drop the temporary tar."""
        self.stop.set()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        try:
            self.queue.put_nowait(None)  # wake the thread if it waits for an item
        except queue.Full:
            pass
        self.thread.join(timeout=60)
        self.writer.abort()


def write_shard(
    job: Job, index: int, batches: Callable[[int], RenderedBatch], pool: Executor, bar: Any
) -> None:
    """Render, encode and write shard ``index``, then record it with its sidecar."""
    out = Path(job.config.out)
    r = shards.shard_range(index, job.count, job.shard_size)
    R, level = job.resolution, job.settings["png_compress_level"]
    t0 = time.perf_counter()
    workers = getattr(pool, "_max_workers", 1)
    sink = _ShardSink(out, index, bar, max_pending=max(2 * job.settings["batch"], 4 * workers))
    try:
        for j in batches_of(job, index):
            b = batches(j)
            for k in b.ks:
                if k not in r:
                    continue
                i = k - b.ks.start
                src = b.src[i] if b.src is not None else job.photo_paths[k]  # type: ignore[index]
                fut = pool.submit(photos.encode_pair, src, b.dst[i], R, level)
                sink.put((k, fut, shards.canonical_json(pair_meta(job, k, b.style_mix[i]))))
        sha, size = sink.finish()
    except BaseException:
        sink.abort()
        raise
    record = {
        "format": shards.SIDECAR_FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "config_sha256": job.manifest["config_sha256"],
        "index": index,
        "name": shards.shard_name(index),
        "first": r.start,
        "count": len(r),
        "sha256": sha,
        "bytes": size,
        "written": _writer_info(job, time.perf_counter() - t0),
    }
    shards.write_sidecar(out, record)
