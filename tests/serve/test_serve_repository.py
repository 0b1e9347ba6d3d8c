"""Several models and versions in one real ``detector serve --repository`` (uvicorn on 127.0.0.1),
driven by real clients (httpx, ``tritonclient.http``):

- three models (one of them the repository ``detector export triton`` writes) and two versions of
  one, each answered by name and by version, in both APIs; unknown ones 404 in both error forms;
- Triton's repository extension through ``tritonclient``: the index, load, unload, with the admin
  key (separate from the API key) required, and the calls off (403) without one;
- broken new versions (a truncated file, a network for another input size, one for another class
  count): the load call answers 400 with the reason, and the old versions keep serving;
- hot swaps under load: 16 clients send requests without pause while versions are swapped by
  load and unload calls (explicit mode) and by copying a version into the folder and removing it
  (poll mode): every request is answered 200, by the old or the new version (each answer says
  which), none fails; the swaps show in ``/metrics``.

The models are the tiny hand-built ONNX graphs of :func:`test_serve_repository_layout.tiny_onnx`,
which load in milliseconds; each answers with the name its metadata gives, so an answer tells
which version ran it.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer, encode, noise  # noqa: E402
from test_serve_repository_layout import tiny_onnx  # noqa: E402

API = {"X-API-Key": "client-key"}
ADMIN = {"X-API-Key": "admin-key"}
# tritonclient adds its own headers to the dict it is given: each call gets a copy ({**API})
PNG = encode(noise(64, 80, 1))
CLIENTS = 16


def load_bar(answers: Callable[[], int], more: int, what: str, give_up_s: float = 120) -> None:
    """Wait until ``answers()`` has grown by ``more`` (the loop kept going), or fail saying
    ``what`` never happened."""
    target = answers() + more
    deadline = time.monotonic() + give_up_s
    while answers() < target:
        assert time.monotonic() < deadline, f"no {more} more answers while {what}"
        time.sleep(0.01)


def eventually(check: Callable[[], bool], what: str, give_up_s: float = 30) -> None:
    """Wait until ``check()`` holds (the server's bookkeeping after an answer is sent), or fail
    saying ``what`` never happened."""
    deadline = time.monotonic() + give_up_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


class ClientLoop:
    """``CLIENTS`` threads, each posting ``PNG`` to ``path`` with its own connection as fast as
    it is answered, until the ``with`` block ends; every answer's status and ``model_version``
    is kept, as is every request that got no answer (an exception)."""

    def __init__(self, server: LiveServer, path: str) -> None:
        self.server, self.path = server, path
        self.answers: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with self.server.client() as http:
            while not self._stop.is_set():
                with self._lock:
                    self.sent += 1
                try:
                    response = http.post(self.path, files={"image": ("a.png", PNG)}, headers=API)
                except Exception as exc:  # noqa: BLE001 - a request without an answer: counted
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                version = response.json().get("model_version") if response.is_success else None
                with self._lock:
                    self.answers.append((response.status_code, version))

    def count(self) -> int:
        return len(self.answers)

    def by_version(self) -> Counter:
        return Counter(version for _, version in self.answers)

    def wait_for_version(self, version: str, what: str) -> None:
        """Until ``version`` has answered (and then a few rounds more)."""
        deadline = time.monotonic() + 120
        while self.by_version()[version] == 0:
            assert time.monotonic() < deadline, f"version {version} never answered: {what}"
            time.sleep(0.01)
        load_bar(self.count, 2 * CLIENTS, f"{what}, after version {version} took over")

    def __enter__(self) -> ClientLoop:
        for thread in self._threads:
            thread.start()
        load_bar(self.count, 2 * CLIENTS, "starting")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def assert_all_answered_200(self) -> None:
        statuses = Counter(status for status, _ in self.answers)
        assert not self.failures, self.failures[:5]
        assert statuses == {200: len(self.answers)}, statuses
        assert len(self.answers) == self.sent  # none lost: every request sent was answered


def metric(server: LiveServer, name: str, **labels: str) -> float | None:
    """A sample's value from ``/metrics`` (labels in any order), ``None`` when absent."""
    with server.client() as http:
        text = http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            found = dict(part.split("=", 1) for part in head[len(name) + 1 : -1].split(","))
            if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
                return float(value)
    return None


# ---------------------------------------------------------------------------- explicit mode


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``people`` (versions 1 and 2, policy all), ``parts`` (version 1, policy latest 1), and
    ``cams``, the repository ``detector export triton --name cams`` writes."""
    from export.triton import TritonOptions, write_repository

    root = tmp_path_factory.mktemp("repository")
    tiny_onnx(root / "people" / "1" / "model.onnx", "people-v1", ("person",))
    tiny_onnx(root / "people" / "2" / "model.onnx", "people-v2", ("person",))
    (root / "people" / "config.pbtxt").write_text('name: "people"\nversion_policy: { all { } }\n')
    tiny_onnx(root / "parts" / "1" / "model.onnx", "parts-v1", ("bolt", "nut"))
    camera = tiny_onnx(root.parent / "cam.onnx", "cam-v1", ("car", "bike", "bus"), size=96)
    write_repository(camera, root, TritonOptions(name="cams"))
    return root


@pytest.fixture(scope="module")
def explicit(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(
        None, tmp_path_factory.mktemp("explicit"), "--model-control-mode", "explicit",
        "--load-model", "*", "--default-model", "people", "--api-key", "client-key",
        "--admin-key", "admin-key", repository=repo,
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def triton(explicit: LiveServer):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(explicit.url.removeprefix("http://"))
    yield client
    client.close()


def triton_infer(client, model: str, version: str = "") -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    image = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[PNG]], dtype=object))
    result = client.infer(model, [image], model_version=version, headers={**API})
    answer = result.get_response()
    return {
        "version": answer["model_version"],
        "name": answer["model_name"],
        "classes": result.as_numpy("classes")[0, : int(result.as_numpy("num_dets")[0, 0])],
    }


def test_models_and_versions_by_name_in_both_apis(explicit: LiveServer, triton):
    with explicit.client() as http:
        listed = http.get("/v1/models", headers=API).json()
        rows = [(m["model_name"], m["model_version"], m["default_version"], m["name"])
                for m in listed["models"]]  # fmt: skip
        assert rows == [
            ("people", "2", True, "people-v2"),
            ("people", "1", False, "people-v1"),
            ("cams", "1", True, "cam-v1"),
            ("parts", "1", True, "parts-v1"),
        ]
        assert listed["default_model"] == "people"
        one = http.get("/v1/models/people", headers=API).json()["models"]
        assert [m["model_version"] for m in one] == ["2", "1"]

        def detect(path: str) -> dict:
            response = http.post(path, files={"image": ("a.png", PNG)}, headers=API)
            assert response.status_code == 200, (path, response.text)
            return response.json()

        for path, name, version, architecture, class_name in (
            ("/v1/detect", "people", "2", "people-v2", "person"),
            ("/v1/models/people/detect", "people", "2", "people-v2", "person"),
            ("/v1/models/people/versions/1/detect", "people", "1", "people-v1", "person"),
            ("/v1/models/parts/detect", "parts", "1", "parts-v1", "bolt"),
            ("/v1/models/cams/versions/1/detect", "cams", "1", "cam-v1", "car"),
        ):
            answer = detect(path)
            assert (answer["model_name"], answer["model_version"], answer["model"]) == (
                name, version, architecture), path  # fmt: skip
            assert [d["class_name"] for d in answer["detections"]] == [class_name], path
        two = [("images", ("a.png", PNG)), ("images", ("b.png", PNG))]
        batch = http.post("/v1/models/people/versions/1/detect/batch", headers=API, files=two)
        assert batch.json()["model_version"] == "1" and len(batch.json()["results"]) == 2

    assert triton_infer(triton, "people")["version"] == "2"
    assert triton_infer(triton, "people", "1")["version"] == "1"
    cams = triton_infer(triton, "cams")
    assert cams["name"] == "cams" and cams["version"] == "1" and list(cams["classes"]) == [0]
    assert triton.get_model_metadata("people", headers={**API})["versions"] == ["1", "2"]
    assert triton.is_model_ready("people", "1") and not triton.is_model_ready("people", "3")
    config = triton.get_model_config("people", headers={**API})
    assert config["version_policy"] == {"all": {}} and config["max_batch_size"] == 8
    assert triton.get_model_config("cams", headers={**API})["max_batch_size"] == 8  # N_model's


def test_unknown_models_and_versions_are_404_in_both_forms(explicit: LiveServer, triton):
    from tritonclient.utils import InferenceServerException

    with explicit.client() as http:
        for path in (
            "/v1/models/nobody/detect",
            "/v1/models/people/versions/9/detect",
            "/v1/models/people/versions/x/detect",
            "/v1/models/cams_model/detect",
        ):
            response = http.post(path, files={"image": ("a.png", PNG)}, headers=API)
            body = response.json()
            assert response.status_code == 404 and body["error"] == "not_found", path
            assert "unknown" in body["message"] and body["request_id"], path
        assert http.get("/v1/models/nobody", headers=API).status_code == 404
        for method, path in (("POST", "/v2/models/nobody/infer"), ("GET", "/v2/models/nobody"),
                             ("GET", "/v2/models/people/versions/9"),
                             ("GET", "/v2/models/people/versions/9/ready"),
                             ("POST", "/v2/models/people/versions/9/infer")):  # fmt: skip
            response = http.request(method, path, headers=API, content=b"{}")
            body = response.json()
            assert response.status_code == 404 and body["code"] == "not_found", path
            assert "unknown" in body["error"], path  # the v2 form: the message under "error"
    with pytest.raises(InferenceServerException, match="unknown model 'nobody'"):
        triton_infer(triton, "nobody")
    with pytest.raises(InferenceServerException, match="unknown version '7'"):
        triton_infer(triton, "people", "7")


def test_repository_calls_need_the_admin_key(explicit: LiveServer, triton):
    from tritonclient.utils import InferenceServerException

    index = triton.get_model_repository_index(headers={**API})
    assert {(e["name"], e.get("version"), e["state"]) for e in index} == {
        ("cams", "1", "READY"), ("parts", "1", "READY"), ("people", "1", "READY"),
        ("people", "2", "READY")}  # fmt: skip
    assert triton.get_model_repository_index(headers={**ADMIN}) == index  # an admin key reads too
    with explicit.client() as http:
        assert http.post("/v2/repository/index").status_code == 401
        ready = http.post("/v2/repository/index", json={"ready": True}, headers=API).json()
        assert len(ready) == 4
        for headers in ({}, API, {"Authorization": "Bearer wrong"}):
            refused = http.post("/v2/repository/models/parts/load", headers=headers)
            assert refused.status_code == 401, headers
            assert "admin key" in refused.json()["error"]
    with pytest.raises(InferenceServerException, match="admin key"):
        triton.unload_model("parts", headers={**API})
    triton.load_model("parts", headers={**ADMIN})  # a reload of unchanged files: nothing to do
    assert triton.is_model_ready("parts")
    with pytest.raises(InferenceServerException, match="no folder of that name"):
        triton.load_model("nobody", headers={**ADMIN})


BROKEN: dict[str, Callable[[Path], object]] = {
    "a truncated file": lambda path: path.write_bytes(
        tiny_onnx(path.with_name("full.onnx"), "people-v3").read_bytes()[:300]),
    "a network for another input size": lambda path: tiny_onnx(
        path, "people-v3", ("person",), graph_size=96),
    "a network for another class count": lambda path: tiny_onnx(
        path, "people-v3", ("person",), graph_classes=2),
}  # fmt: skip
REASONS = {
    "a truncated file": "truncated or corrupt",
    "a network for another input size": "the warm-up batch [1, 3, 64, 64]",
    "a network for another class count": "another class count",
}


def test_a_broken_new_version_leaves_the_old_ones_serving(explicit: LiveServer, repo, triton):
    from tritonclient.utils import InferenceServerException

    version_3 = repo / "people" / "3" / "model.onnx"
    version_3.parent.mkdir()
    try:
        for kind, write in BROKEN.items():
            write(version_3)
            with pytest.raises(InferenceServerException) as refused:
                triton.load_model("people", headers={**ADMIN})
            message = str(refused.value)
            assert "version 3" in message and REASONS[kind] in message, (kind, message)
            assert triton_infer(triton, "people")["version"] == "2", kind  # still serving
            assert triton_infer(triton, "people", "1")["version"] == "1", kind
            index = {(e["name"], e.get("version")): e for e in
                     triton.get_model_repository_index(headers={**API})}  # fmt: skip
            assert index["people", "3"]["state"] == "UNAVAILABLE"
            assert REASONS[kind] in index["people", "3"]["reason"]
        failed = metric(explicit, "detector_model_loads_total", model="people", version="3",
                        outcome="failed")  # fmt: skip
        assert failed == len(BROKEN)
    finally:
        shutil.rmtree(version_3.parent)
    triton.load_model("people", headers={**ADMIN})  # version 3 gone: the failure is forgotten
    assert ("people", "3") not in {
        (e["name"], e.get("version")) for e in triton.get_model_repository_index(headers={**API})
    }


def test_swaps_by_load_and_unload_calls_drop_no_request(explicit: LiveServer, repo, triton):
    """16 clients on ``parts`` (no version named) while: version 2 is copied in and loaded
    (takes over from 1), another model is unloaded and loaded again, and version 2 is removed
    and the model loaded again (back to 1). Every request is answered 200 by 1 or 2."""
    version_2 = repo / "parts" / "2"
    with ClientLoop(explicit, "/v1/models/parts/detect") as loop:
        tiny_onnx(version_2 / "model.onnx", "parts-v2", ("bolt", "nut"))
        triton.load_model("parts", headers={**ADMIN})
        loop.wait_for_version("2", "loading version 2")
        triton.unload_model("people", headers={**ADMIN})
        assert not triton.is_model_ready("people")
        load_bar(loop.count, CLIENTS, "another model was unloaded")
        triton.load_model("people", headers={**ADMIN})
        assert triton.is_model_ready("people")
        shutil.rmtree(version_2)
        triton.load_model("parts", headers={**ADMIN})
        before = loop.by_version()["1"]
        load_bar(lambda: loop.by_version()["1"] - before, 2 * CLIENTS, "back on version 1")
    loop.assert_all_answered_200()
    assert set(loop.by_version()) == {"1", "2"}, loop.by_version()
    assert metric(explicit, "detector_model_loads_total", model="parts", version="2",
                  outcome="loaded") == 1  # fmt: skip
    eventually(lambda: metric(explicit, "detector_model_requests_total", model="parts",
                              version="2", status="200") == loop.by_version()["2"],
               "the server's count of version 2's answers is the clients'")  # fmt: skip
    eventually(lambda: metric(explicit, "detector_model_version_ready", model="parts",
                              version="2") is None, "version 2 closed")  # fmt: skip
    assert metric(explicit, "detector_model_version_ready", model="parts", version="1") == 1


# ---------------------------------------------------------------------------- poll mode


def test_versions_copied_in_and_removed_are_swapped_without_dropping_a_request(tmp_path):
    """Poll mode: 16 clients on ``cam`` while version 2's file is copied into the folder in
    pieces (it is loaded once whole), then its folder removed (back to version 1). Every
    request is answered 200 by 1 or 2; the load calls are off without an admin key (403)."""
    root = tmp_path / "repository"
    tiny_onnx(root / "cam" / "1" / "model.onnx", "cam-v1")
    new = tiny_onnx(tmp_path / "cam-v2.onnx", "cam-v2").read_bytes()
    server = LiveServer(None, tmp_path / "server", "--model-control-mode", "poll",
                        "--repository-poll-secs", "0.2", "--api-key", "client-key",
                        repository=root)  # fmt: skip
    try:
        with server.client() as http:
            off = http.post("/v2/repository/models/cam/load", headers=API)
            assert off.status_code == 403 and "--admin-key" in off.json()["error"]
        with ClientLoop(server, "/v1/detect") as loop:
            target = root / "cam" / "2" / "model.onnx"
            target.parent.mkdir()
            with target.open("wb") as copy:  # as cp writes it: in pieces
                for start in range(0, len(new), 4096):
                    copy.write(new[start : start + 4096])
                    copy.flush()
            loop.wait_for_version("2", "copying version 2 in")
            shutil.rmtree(target.parent)
            before = loop.by_version()["1"]
            load_bar(lambda: loop.by_version()["1"] - before, 2 * CLIENTS, "version 2 removed")
        loop.assert_all_answered_200()
        assert set(loop.by_version()) == {"1", "2"}, loop.by_version()
        assert metric(server, "detector_model_loads_total", model="cam", version="2",
                      outcome="loaded") == 1  # fmt: skip
        assert (
            metric(server, "detector_model_loads_total", model="cam", version="1", outcome="loaded")
            == 2
        )  # at start, and back after version 2 went
        assert "model cam version 2 closed" in server.log_text()
    finally:
        server.stop()
    assert server.stopped_cleanly


def test_control_mode_none_refuses_a_broken_repository_at_start(tmp_path, capsys):
    """Mode none never reads the folder again, so a model that does not load is an error line
    at start (no traceback), naming the file and the reason."""
    from detector.cli import main

    root = tmp_path / "repository"
    tiny_onnx(root / "good" / "1" / "model.onnx", "good")
    tiny_onnx(root / "bad" / "1" / "model.onnx", "bad", graph_classes=4)
    assert main(["serve", "--repository", str(root), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert "bad" in err and str(root / "bad" / "1" / "model.onnx") in err and "class count" in err
    assert main(["serve", "--repository", str(tmp_path / "none")]) == 2
    assert "no such model repository folder" in capsys.readouterr().err
