"""Threads and loader workers chosen from the cores a process may use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from detector.training.resources import cpu_plan, usable_cpus


@pytest.mark.parametrize(
    ("cpus", "processes", "threads", "workers"),
    [
        (1, 1, 1, 0),  # one core: everything in-process
        (2, 1, 1, 1),  # the 2-core case measured in benchmarks/cpu_defaults.md
        (4, 1, 3, 1),
        (16, 1, 14, 2),
        (64, 1, 56, 8),
        (16, 4, 3, 1),  # torchrun with 4 processes on 16 cores: 4 cores each
        (2, 4, 1, 0),  # more processes than cores: never 0 threads
    ],
)
def test_cpu_plan_on_the_cpu(cpus: int, processes: int, threads: int, workers: int) -> None:
    plan = cpu_plan(cpus, processes)
    assert (plan.threads, plan.workers, plan.eval_workers) == (threads, workers, workers)
    assert plan.threads + plan.workers <= max(cpus // processes, 1)  # never more than the cores


def test_cpu_plan_with_a_gpu() -> None:
    assert (cpu_plan(16, accelerator=True).workers, cpu_plan(16, accelerator=True).threads) == (
        8,
        1,
    )
    assert cpu_plan(4, accelerator=True).workers == 3
    assert cpu_plan(1, accelerator=True).workers == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_budget_follows_cpu_affinity() -> None:
    """taskset, cpusets and container limits show up as the affinity, not as os.cpu_count()."""
    one = sorted(os.sched_getaffinity(0))[:1]
    code = (
        "import json, os\n"
        f"os.sched_setaffinity(0, {one})\n"
        "from detector.training.resources import cpu_plan, usable_cpus\n"
        "p = cpu_plan()\n"
        "print(json.dumps([usable_cpus(), p.threads, p.workers]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [1, 1, 0]
    assert usable_cpus() == len(os.sched_getaffinity(0))
