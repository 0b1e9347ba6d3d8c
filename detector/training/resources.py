"""How many torch threads and data-loading workers a process uses, from the cores it may run on.

A process that starts more busy threads than it has cores loses most of its time to OpenMP
barrier waits as soon as anything else runs on the machine (``benchmarks/cpu_defaults.md``: on
2 shared cores, 2 torch threads made a nano epoch 5-40x slower than 1 thread, with or without
loader workers). So both numbers come from one budget: the cores this process may use
(``os.sched_getaffinity``, which honours ``taskset`` and cgroup cpusets), divided among the
processes of a ``torchrun`` job on this node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)


@dataclass(frozen=True)
class CpuPlan:
    """Torch intra-op threads and loader workers for one (training or evaluation) process."""

    threads: int
    workers: int
    eval_workers: int
    cpus: int  # the budget they were chosen from (cores per process)


def cpu_plan(cpus: int | None = None, processes: int = 1, accelerator: bool = False) -> CpuPlan:
    """Choose threads and workers from ``cpus`` cores (default: :func:`usable_cpus`) shared by
    ``processes`` local processes.

    On the CPU the network needs the cores most, and one loader worker keeps up with it on small
    machines (the pipeline makes about 90 images/s per core at 416 px,
    ``benchmarks/data_pipeline.md``; a nano training step on 2 cores about 10,
    ``benchmarks/train_step.md``): one worker per 8 cores, at least one where there are 2 cores
    or more, and the remaining cores as torch threads. With a GPU (``accelerator``) the cores
    feed it: all but one become workers (at most 8) and torch keeps one thread. Evaluation's
    loader uses the same number of workers (training's persistent workers sit idle while it
    runs)."""
    total = usable_cpus() if cpus is None else max(int(cpus), 1)
    per_process = max(total // max(processes, 1), 1)
    if accelerator:
        workers = min(max(per_process - 1, 0), 8)
        threads = 1
    else:
        workers = 0 if per_process < 2 else max(1, per_process // 8)
        threads = max(per_process - workers, 1)
    return CpuPlan(threads=threads, workers=workers, eval_workers=workers, cpus=per_process)


def apply_threads(threads: int) -> int:
    """``torch.set_num_threads(threads)`` unless the user set ``OMP_NUM_THREADS`` (theirs wins);
    returns the number of threads torch now uses."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(int(threads), 1))
    return torch.get_num_threads()
