"""Which shards this process writes: ``--shard-index``, ``--task I/T`` or a Slurm job array.

``--shard-index LIST`` writes the given shards; ``--task I/T`` (or a Slurm array:
``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``, or
``SLURM_ARRAY_TASK_MAX`` and ``SLURM_ARRAY_TASK_STEP``) writes the shards ``i`` with
``i % T == I``; the default is all. Explicit flags win over the environment. Finished shards are
verified by sha256 and skipped, so rerunning a killed command completes the set. Two processes
must not be given the same shard at the same time. No cluster code: any scheduler that can
launch N copies of the command runs the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pairs.shards import PairsError


def select_shards(
    num_shards: int,
    shard_index: Sequence[int] | None = None,
    task: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
    use_slurm: bool = True,
) -> tuple[list[int], str]:
    """The shards this process writes and why: ``shard_index``, else ``task`` (I, T), else a
    Slurm array task from ``env``, else all."""
    if shard_index is not None:
        bad = [i for i in shard_index if not 0 <= i < num_shards]
        if bad:
            raise PairsError(f"--shard-index {bad[0]} is outside [0, {num_shards})")
        return sorted(set(shard_index)), f"shards {_ranges(sorted(set(shard_index)))}"
    env = os.environ if env is None else env
    how = "--task"
    if task is None and use_slurm and env.get("SLURM_ARRAY_TASK_ID"):
        try:
            tid = int(env["SLURM_ARRAY_TASK_ID"])
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
            count = int(env.get("SLURM_ARRAY_TASK_COUNT") or 0) or (
                (int(env["SLURM_ARRAY_TASK_MAX"]) - lo) // step + 1
            )
        except (KeyError, ValueError):
            raise PairsError("cannot read the Slurm array task from the environment") from None
        task, how = ((tid - lo) // step, count), "Slurm array task"
    if task is None:
        return list(range(num_shards)), f"all {num_shards} shards"
    i, t = task
    if not (t >= 1 and 0 <= i < t):
        raise PairsError(f"task {i}/{t}: need 0 <= I < T")
    mine = list(range(i, num_shards, t))
    return mine, f"{how} {i}/{t}: shards {_ranges(mine) or 'none'}"


def _ranges(xs: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[list[int]] = []
    for x in xs:
        if parts and parts[-1][1] == x - 1:
            parts[-1][1] = x
        else:
            parts.append([x, x])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)
