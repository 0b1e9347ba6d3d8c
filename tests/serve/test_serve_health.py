"""Health that tells the truth: the batcher turns unhealthy after failed batches in a row, with
a dead collector or with every lane stuck, and healthy again when its own probe run succeeds; a
live server whose backend starts failing answers 503 on its readiness routes (not on
``/healthz``) and 200 again once the backend recovers. CPU counts honour a cgroup quota."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serve.launch import ServerProcess
from serve.runtime.batching import DynamicBatcher, InferenceFailed
from serve.settings import cgroup_cpu_quota, usable_cpus

IMAGE = np.zeros((3, 8, 8), np.float32)


class Flaky:
    """A network that raises while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"out": batch.reshape(len(batch), -1)[:, :2]}


def test_failed_batches_make_it_unhealthy_until_a_probe_succeeds():
    async def scenario() -> None:
        net = Flaky()
        batcher = DynamicBatcher(net, max_batch=4, max_delay_s=0, queue_size=8,
                                 unhealthy_after=3, probe_interval_s=0.05)  # fmt: skip
        await batcher.start()
        loop = asyncio.get_running_loop()
        try:
            await batcher.submit(IMAGE, loop.time() + 5)
            assert batcher.health_problem is None
            net.failing = True
            for failed in range(1, 4):
                with pytest.raises(InferenceFailed, match="RuntimeError"):
                    await batcher.submit(IMAGE, loop.time() + 5)
                assert (batcher.health_problem is None) == (failed < 3)
            assert "the last 3 batches failed" in (batcher.health_problem or "")
            calls = net.calls
            await asyncio.sleep(0.3)  # probes keep failing: still unhealthy
            assert net.calls > calls and batcher.health_problem is not None
            net.failing = False
            for _ in range(100):
                if batcher.health_problem is None:
                    break
                await asyncio.sleep(0.02)
            assert batcher.health_problem is None
        finally:
            await batcher.stop()
        assert batcher.health_problem == "the batcher is not running"

    asyncio.run(scenario())


def test_a_dead_collector_and_stuck_lanes_are_unhealthy():
    async def scenario() -> None:
        release = threading.Event()

        def stuck(batch: np.ndarray) -> dict[str, np.ndarray]:
            release.wait(10)
            return {"out": batch}

        batcher = DynamicBatcher(stuck, max_batch=1, max_delay_s=0, queue_size=8, lanes=1,
                                 stuck_after_s=0.1)  # fmt: skip
        await batcher.start()
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(batcher.submit(IMAGE, loop.time() + 10))
        await asyncio.sleep(0.3)
        assert "every lane (1)" in (batcher.health_problem or "")
        release.set()
        await waiting
        assert batcher.health_problem is None
        assert batcher._task is not None
        batcher._task.cancel()  # the collector dies (as a bug would end it)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert "collector" in (batcher.health_problem or "")
        await batcher.stop()

    asyncio.run(scenario())


def test_cpu_count_from_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None and usable_cpus(v2) == affinity
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cgroup_cpu_quota(v2) == 1.5 and usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")  # above the affinity
    assert usable_cpus(v2) == affinity
    (v2 / "cpu.max").write_text("5000 100000\n")  # a twentieth of a CPU: still one thread
    assert usable_cpus(v2) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 1.0 and usable_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1) is None and usable_cpus(v1) == affinity
    assert cgroup_cpu_quota(tmp_path / "none") is None


PRELUDE = """
import os
from serve.runtime.backends.onnxruntime import OnnxRuntimeBackend

_infer = OnnxRuntimeBackend.infer

def _failing_infer(self, images):
    if os.path.exists(os.environ["FAIL_FLAG"]):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
    return _infer(self, images)

OnnxRuntimeBackend.infer = _failing_infer
"""


def test_readiness_follows_a_backend_that_fails_and_recovers(serve_onnx, tmp_path):
    import httpx
    from serve_live import encode, noise

    flag = tmp_path / "fail"
    image = encode(noise(64, 64, 3))
    server = ServerProcess(
        serve_onnx, tmp_path / "serve.log", ["--threads", "1", "--unhealthy-after", "2",
                                             "--probe-interval-s", "0.2"],
        prelude=PRELUDE, env={"FAIL_FLAG": str(flag)},
    )  # fmt: skip
    with server, httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:

        def detect() -> httpx.Response:
            return http.post("/v1/detect", files={"image": ("a.png", image)})

        def ready() -> tuple[int, int, int]:
            return (http.get("/readyz").status_code, http.get("/v2/health/ready").status_code,
                    http.get("/v2/models/detector/ready").status_code)  # fmt: skip

        assert detect().status_code == 200 and ready() == (200, 200, 200)
        Path(flag).touch()
        assert detect().json()["error"] == "inference_failed"  # one failed batch: still ready
        assert ready() == (200, 200, 200)
        assert detect().status_code == 500  # the second in a row (500 inference_failed)
        assert ready() == (503, 503, 503)
        assert "inference is failing" in http.get("/v2/health/ready").json()["error"]
        assert http.get("/healthz").status_code == 200  # the process is alive all the same
        refused = detect()
        assert refused.status_code == 503 and "inference is failing" in refused.json()["message"]
        time.sleep(0.6)  # probes run and fail
        assert ready() == (503, 503, 503)
        flag.unlink()
        give_up = time.monotonic() + 20
        while ready() != (200, 200, 200):
            assert time.monotonic() < give_up, "never ready again after the backend recovered"
            time.sleep(0.05)
        assert detect().status_code == 200
    assert "probe batch succeeded" in server.log_text()
