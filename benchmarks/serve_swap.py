"""Hot swaps in ``detector serve --repository`` under load: answers, latency, memory, overhead.

Measures, against real servers on 127.0.0.1 (:class:`serve.launch.ServerProcess`):

1. **Swaps under load.** A repository with one model, ``nano``, version 1; 16 client threads
   post a JPEG to ``/v1/models/nano/detect`` without pause (each with its own connection) while
   ``--swaps`` new versions replace the serving one, one after the other: version N+1 is copied
   in under a hidden name and renamed (so it appears whole), then, in ``explicit`` mode, loaded
   by ``POST /v2/repository/models/nano/load`` (admin key), or, in ``poll`` mode, picked up by
   the server's own reads of the folder; a swap ends when version N+1 has answered a request,
   and version N's folder is removed before the next one. Every response is counted by status
   (every request sent must get one, and all must be 200). The whole-request p99 of requests
   sent while swaps ran is set against a window of the same length right after the last swap
   (same run, same clients), and against the quiet window before the first.
2. **Memory.** The server's resident memory (``/proc/PID/status`` ``VmRSS``) is sampled every
   ``--rss-every`` seconds throughout: the steady state (median over the window before the
   swaps), the peak during the swaps (two versions are loaded at once for a moment) and the
   median over the window after; after must be within 5 % of the steady state.
3. **Overhead of a repository.** One model served by ``--model FILE`` against the same file as
   one of three models of ``--repository DIR`` (``/v1/detect`` runs it, ``--default-model``):
   throughput under 16 ``wrk`` connections for ``--seconds`` each, the two servers alternated
   over ``--rounds`` rounds (the order flipped every round), each server started fresh; the
   median requests/s of each and the ratio repository / one model.

Usage::

    .venv/bin/python benchmarks/serve_swap.py                      # nano@128, ONNX Runtime CPU
    .venv/bin/python benchmarks/serve_swap.py --model M.pt --server-args "--device 0" \\
        --parts swap --out runs/serve_swap_torch.json              # the torch backend on a GPU

Without ``--model`` a randomly initialised yolox_nano is exported to ONNX at ``--imgsz``
(speed and memory do not depend on the weights). ``--model`` takes any file the server reads
(``.onnx``, ``.pt``, ``.engine`` with its ``.engine.json`` sidecar); each version is a copy of
it. Part 3 needs ``wrk`` (Debian: ``apt-get install wrk``). Writes
``benchmarks/results/serve_swap.json`` (``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_name  # noqa: E402
from serve_throughput import ROOT, export_model, multipart, wrk  # noqa: E402

from serve.launch import ServerProcess  # noqa: E402

ADMIN = "bench-admin-key"
CLIENTS = 16
MODEL = "nano"
RSS_TOLERANCE = 0.05  # after the swaps, within 5 % of the steady state


def test_jpeg() -> bytes:
    """A 320x240 noise JPEG (its content does not change the network's time)."""
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def place_version(model: Path, folder: Path, version: int) -> Path:
    """Copy ``model`` (and its ``.json`` sidecar, if any) to ``folder/<version>/model<suffix>``,
    written under a hidden name first and renamed, so the server never sees it half-copied."""
    hidden = folder / f".{version}"
    hidden.mkdir(parents=True)
    target = hidden / f"model{model.suffix}"
    shutil.copyfile(model, target)
    sidecar = model.with_name(model.name + ".json")
    if sidecar.exists():
        shutil.copyfile(sidecar, target.with_name(target.name + ".json"))
    final = folder / str(version)
    hidden.rename(final)
    return final


@dataclass
class Answer:
    """One request: when it was sent (monotonic s), how long it took, its status (0: no
    answer, an exception) and the version that answered it."""

    sent: float
    seconds: float
    status: int
    version: str | None


@dataclass
class ClientLoad:
    """``CLIENTS`` threads posting ``jpeg`` to ``url + path`` as fast as they are answered."""

    url: str
    path: str
    jpeg: bytes
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = http.post(self.path, files={"image": ("a.jpg", self.jpeg)})
                except httpx.HTTPError as exc:  # a request without an answer: counted as 0
                    answer = Answer(start, time.monotonic() - start, 0, None)
                    with self._lock:
                        self.answers.append(answer)
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                seconds = time.monotonic() - start
                version = response.json().get("model_version") if response.is_success else None
                with self._lock:
                    self.answers.append(Answer(start, seconds, response.status_code, version))

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def first_answer_by(self, version: str, since: float) -> float | None:
        """When the first request sent after ``since`` and answered by ``version`` was sent."""
        with self._lock:
            return next((a.sent for a in reversed(self.answers)
                         if a.version == version and a.sent >= since), None)  # fmt: skip

    def window(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.sent < end]


class RssSampler(threading.Thread):
    """The server's RSS in MiB every ``every`` seconds, as (monotonic s, MiB) pairs."""

    def __init__(self, server: ServerProcess, every: float) -> None:
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), self.server.rss_mb()))
            self.done.wait(self.every)

    def between(self, start: float, end: float) -> list[float]:
        return [mb for t, mb in self.samples if start <= t < end]


def latency_summary(answers: list[Answer]) -> dict:
    """Count, statuses, p50/p99 (ms) and requests/s of the answers of one window."""
    ms = np.array([a.seconds * 1000 for a in answers]) if answers else np.zeros(1)
    span = (max(a.sent for a in answers) - min(a.sent for a in answers)) if answers else 0.0
    return {
        "requests": len(answers),
        "statuses": dict(Counter(str(a.status) for a in answers)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "requests_per_s": round(len(answers) / span, 1) if span > 0 else None,
    }


def wait_until(check, what: str, give_up_s: float = 180.0) -> None:
    deadline = time.monotonic() + give_up_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {give_up_s:.0f} s waiting for {what}")
        time.sleep(0.01)


def swap_run(model: Path, work: Path, mode: str, args: argparse.Namespace) -> dict:
    """Part 1 and 2 in one server run: quiet window, ``args.swaps`` swaps, a window of the same
    length after them; answers and RSS throughout."""
    root = work / f"repository_{mode}"
    place_version(model, root / MODEL, 1)
    flags = ["--model-control-mode", mode, *shlex.split(args.server_args)]
    if mode == "explicit":
        flags += ["--load-model", MODEL, "--admin-key", ADMIN]
    else:
        flags += ["--repository-poll-secs", str(args.poll_secs)]
    log = work / f"serve_{mode}.log"
    env = dict(item.split("=", 1) for item in args.server_env)
    server = ServerProcess(None, log, flags, access_log=work / f"access_{mode}.jsonl", env=env,
                           cwd=ROOT, stop_timeout=60, repository=root)  # fmt: skip
    server.start(ready_timeout=600)
    load = ClientLoad(server.url, f"/v1/models/{MODEL}/detect", test_jpeg())
    rss = RssSampler(server, args.rss_every)
    swaps: list[dict] = []
    try:
        rss.start()
        load.start()
        time.sleep(args.warmup)
        quiet_start = time.monotonic()
        time.sleep(args.quiet)
        swap_start = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=300, trust_env=False,
                          headers={"X-API-Key": ADMIN}) as admin:  # fmt: skip
            for version in range(2, args.swaps + 2):
                began = time.monotonic()
                place_version(model, root / MODEL, version)
                if mode == "explicit":
                    answer = admin.post(f"/v2/repository/models/{MODEL}/load")
                    if answer.status_code != 200:
                        raise SystemExit(f"load of version {version}: {answer.status_code} "
                                         f"{answer.text}")  # fmt: skip
                loaded = time.monotonic()
                wait_until(lambda v=str(version), b=began: load.first_answer_by(v, b) is not None,
                           f"version {version} to answer")  # fmt: skip
                took_over = time.monotonic()
                shutil.rmtree(root / MODEL / str(version - 1))
                swaps.append({"version": version, "load_call_s": round(loaded - began, 3),
                              "until_answering_s": round(took_over - began, 3)})  # fmt: skip
        swap_end = time.monotonic()
        length = swap_end - swap_start
        time.sleep(length)
        after_end = time.monotonic()
    finally:
        load.stop()
        rss.done.set()
        rss.join()
        metrics = httpx.get(f"{server.url}/metrics", trust_env=False, timeout=30).text
        server.stop()
    every = load.answers
    steady = statistics.median(rss.between(quiet_start, swap_start))
    peak = max(rss.between(swap_start, swap_end))
    after = statistics.median(rss.between(swap_end, after_end))
    quiet_window = (swap_start - length, swap_start) if args.quiet >= length else (
        quiet_start, swap_start)  # fmt: skip
    during = latency_summary(load.window(swap_start, swap_end))
    after_window = latency_summary(load.window(swap_end, after_end))
    loads = [line for line in metrics.splitlines()
             if line.startswith("detector_model_loads_total{")]  # fmt: skip
    return {
        "mode": mode,
        "server_flags": flags if mode != "explicit" else [f for f in flags if f != ADMIN],
        "swaps": len(swaps),
        "swap_window_s": round(length, 2),
        "seconds_per_swap": round(length / max(1, len(swaps)), 2),
        "every_request": {
            "sent": len(every),
            "statuses": dict(Counter(str(a.status) for a in every)),
            "all_200": all(a.status == 200 for a in every),
            "no_answer_errors": load.errors[:5],
            "answered_by_versions": len({a.version for a in every}),
        },
        "latency_quiet_before": latency_summary(load.window(*quiet_window)),
        "latency_during_swaps": during,
        "latency_after_same_length": after_window,
        "p99_during_over_after": round(during["p99_ms"] / after_window["p99_ms"], 2),
        "rss_mb": {
            "steady_before": round(steady, 1),
            "peak_during": round(peak, 1),
            "after": round(after, 1),
            "after_over_steady": round(after / steady, 4),
            "after_within_5_percent": abs(after / steady - 1) <= RSS_TOLERANCE,
        },
        "server_loads_metric": loads,
        "versions_closed_in_log": len(
            re.findall(rf"model {MODEL} version \d+ closed", server.log_text())
        ),
        "swap_times": swaps,
        "rss_samples": [(round(t - quiet_start, 2), round(mb, 1)) for t, mb in rss.samples],
    }


def overhead(model: Path, work: Path, jpeg: bytes, args: argparse.Namespace) -> dict:
    """Part 3: ``--model FILE`` against the same file as one of three repository models."""
    root = work / "repository_three"
    for name in ("a", "b", "c"):
        place_version(model, root / name, 1)
    sides = {
        "one_model": (model, None, []),
        "repository_3_models": (None, root, ["--default-model", "a"]),
    }
    body = work / "body.bin"
    body.write_bytes(multipart(jpeg))
    rates: dict[str, list[float]] = {name: [] for name in sides}
    runs = []
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            file, repository, flags = sides[name]
            flags = [*flags, *shlex.split(args.server_args)]
            log = work / f"overhead_{name}_{round_}.log"
            with ServerProcess(file, log, flags, access_log=log.with_suffix(".jsonl"), cwd=ROOT,
                               stop_timeout=60, repository=repository) as server:  # fmt: skip
                wrk(server.url, body, CLIENTS, 0, max_s=2)  # warm the connections and arenas
                result = wrk(server.url, body, CLIENTS, 0, max_s=args.seconds)
                result["rss_mb"] = round(server.rss_mb(), 1)
            result.update(side=name, round=round_, load_average=os.getloadavg()[0])
            rates[name].append(result["requests_per_s"])
            runs.append(result)
            print(f"overhead round {round_} {name}: {result['requests_per_s']:.1f} req/s "
                  f"(non-2xx {result['non_2xx']})", flush=True)  # fmt: skip
    medians = {name: statistics.median(values) for name, values in rates.items()}
    pair_ratios = [r / o for r, o in zip(rates["repository_3_models"], rates["one_model"])]
    return {
        "clients": CLIENTS,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "median_requests_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratio_repository_over_one_model": round(
            medians["repository_3_models"] / medians["one_model"], 3),
        "per_round_ratios": [round(r, 3) for r in pair_ratios],
        "runs": runs,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a model file (default: export nano to ONNX)")
    parser.add_argument("--imgsz", type=int, default=128, help="the exported nano's input size")
    parser.add_argument("--parts", default="swap,overhead", help="swap and/or overhead")
    parser.add_argument("--modes", default="explicit,poll", help="explicit and/or poll")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before")
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds of the window before")
    parser.add_argument("--poll-secs", type=float, default=0.5, help="poll mode's interval")
    parser.add_argument("--rss-every", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--rounds", type=int, default=3, help="overhead: rounds of both servers")
    parser.add_argument("--seconds", type=int, default=10, help="overhead: seconds of each run")
    parser.add_argument("--server-args", default="", help="more detector serve flags, quoted")
    parser.add_argument(
        "--server-env", action="append", default=[], help="KEY=VALUE in the server's environment"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_swap.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model.resolve() if args.model else export_model(work, args.imgsz)
        result: dict = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": cpu_name(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),  # fmt: skip
            "command": " ".join(["python", "benchmarks/serve_swap.py", *sys.argv[1:]]),
            "model": str(args.model or f"yolox_nano@{args.imgsz} ONNX (random weights)"),
            "clients": CLIENTS,
            "load_average_start": [round(x, 2) for x in load_start],
        }
        if "swap" in parts:
            for mode in args.modes.split(","):
                run = swap_run(model, work, mode, args)
                result[f"swap_{mode}"] = run
                print(json.dumps({k: v for k, v in run.items()
                                  if k not in ("rss_samples", "swap_times")}, indent=1),
                      flush=True)  # fmt: skip
        if "overhead" in parts:
            result["overhead"] = overhead(model, work, test_jpeg(), args)
            print(json.dumps({k: v for k, v in result["overhead"].items() if k != "runs"},
                             indent=1))  # fmt: skip
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    failed = [mode for mode in args.modes.split(",") if f"swap_{mode}" in result
              and not result[f"swap_{mode}"]["every_request"]["all_200"]]  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
