"""Pair generation jobs: the teacher's paired dataset, sharded, deterministic and resumable.

A job renders ``count`` pairs into a folder of tar shards (format: :mod:`pairs.shards`);
:func:`generate` runs or resumes one. The parts, in the order a job uses them:

- :mod:`pairs.job`: the request (:class:`pairs.job.GenerateConfig`), its checks, the loaded
  teachers and the static manifest (:func:`pairs.job.prepare_job`), ``--dry-run``'s view;
- :mod:`pairs.selection`: which shards this process writes (``--shard-index``, ``--task``, a
  Slurm job array);
- :mod:`pairs.render`: the rules that make pair k a function of (config, k) alone, and the
  device rendering, one batch ahead;
- :mod:`pairs.writer`: PNG encoding in a process pool and the tar writer thread per shard.

Finished shards are verified by sha256 and skipped, so rerunning a killed command completes the
set; every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pairs import shards
from pairs.job import GenerateConfig, Job, prepare_job
from pairs.render import RenderedBatch, batch_stream
from pairs.selection import select_shards
from pairs.writer import batches_of, default_workers, encoder_pool, write_shard


@dataclass
class GenerateResult:
    """What one :func:`generate` call did."""

    out: str
    selected: list[int]
    skipped: list[int]
    written: list[int]
    pairs_written: int
    seconds: float  # rendering, encoding and writing (after setup)
    setup_seconds: float
    finished_shards: int
    num_shards: int
    complete: bool

    @property
    def pairs_per_s(self) -> float:
        """Pairs written per second of rendering, encoding and writing."""
        return self.pairs_written / self.seconds if self.seconds > 0 else 0.0


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="pair",
        desc="pairs",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
    )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def generate(
    cfg: GenerateConfig | Job,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
) -> GenerateResult:
    """Run (or resume) a pair generation job; see the module docstring.

    Creates or checks ``manifest.json`` (a changed config or layout is refused), skips shards
    whose sidecar and sha256 check out, writes the others (temporary name, then rename, then
    sidecar), and rebuilds the manifest from the sidecars. Interrupting it keeps every finished
    shard; the same call again completes the set.
    """
    t_setup = time.perf_counter()
    log = log or (lambda msg: None)
    job = cfg if isinstance(cfg, Job) else prepare_job(cfg)
    cfg = job.config
    out = Path(cfg.out)
    man = shards.init_manifest(out, job.manifest)
    selected, how = select_shards(
        job.num_shards, cfg.shard_index, cfg.task, use_slurm=cfg.use_slurm
    )
    for i in selected:
        shards.remove_stale_temps(out, i)
    with ThreadPoolExecutor(max(1, min(8, len(selected)))) as ex:
        states = list(ex.map(lambda i: shards.shard_problem(out, man, i), selected))
    todo, skipped = [], []
    for i, (status, detail) in zip(selected, states, strict=True):
        if status == "ok":
            skipped.append(i)
            continue
        todo.append(i)
        if status not in ("missing",):
            log(f"{shards.shard_name(i)}: {status} ({detail}); writing it again")
    total = sum(len(shards.shard_range(i, job.count, job.shard_size)) for i in todo)
    log(
        f"{out}: {job.count} pairs in {job.num_shards} shards; this process: {how}; "
        f"{len(skipped)} finished, {len(todo)} to write ({total} pairs) on {job.device}"
    )
    workers = default_workers() if cfg.workers is None else cfg.workers
    written: list[int] = []
    seconds = 0.0
    setup_seconds = time.perf_counter() - t_setup
    if todo:
        order = [j for i in todo for j in batches_of(job, i)]
        order = [j for n, j in enumerate(order) if n == 0 or order[n - 1] != j]
        stream = batch_stream(job, order)
        held: list[RenderedBatch] = []

        def batches(j: int) -> RenderedBatch:  # batches in stream order; one may serve 2 shards
            if not held or held[0].index != j:
                held[:] = [next(stream)]
            return held[0]

        pool = encoder_pool(workers)
        bar = _progress(total, progress)
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        try:
            for i in todo:
                write_shard(job, i, batches, pool, bar)
                written.append(i)
            seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
            shards.rebuild_manifest(out)
    man = shards.rebuild_manifest(out) if not todo else shards.read_manifest(out)
    res = GenerateResult(
        out=str(out),
        selected=selected,
        skipped=skipped,
        written=written,
        pairs_written=total if todo else 0,
        seconds=seconds,
        setup_seconds=setup_seconds,
        finished_shards=len(man["shards"]),
        num_shards=job.num_shards,
        complete=bool(man["complete"]),
    )
    rate = f", {res.pairs_per_s:.1f} pairs/s" if res.pairs_written else ""
    log(
        f"wrote {len(written)} shards ({res.pairs_written} pairs) in {seconds:.1f} s{rate}; "
        f"dataset: {res.finished_shards}/{res.num_shards} shards finished"
        + (" (complete)" if res.complete else "")
    )
    return res
